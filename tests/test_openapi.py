"""The OpenAPI document describes the live app: schemathesis finds no server error
and no response that breaks the document."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import fakeredis
import falcon
import hypothesis
import pytest
import schemathesis
from falcon.testing import TestClient

from look import thumbnailer
from look.app import create_app
from look.config import Config
from look.openapi import openapi_document

from imagegen import image_bytes

MAX_UPLOAD_BYTES = 1024 * 1024
MIN_THUMB_SIZE = 16


@pytest.fixture(scope='module')
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[falcon.App]:
    server = fakeredis.FakeServer()
    config = Config(
        storage_path=tmp_path_factory.mktemp('openapi'),
        redis_from_url=lambda url: fakeredis.FakeRedis(server=server),
        processes=1,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
    )
    app = create_app(config)
    upload = TestClient(app).simulate_post('/images', body=image_bytes('PNG', size=KNOWN_SIZE))
    assert upload.status_code == 201
    app_image_ids.append(upload.json['id'])
    yield app
    thumbnailer.close_all()


# The id of an image that exists, so that cases reach the 200 and 304 answers.
app_image_ids: list[str] = []
KNOWN_SIZE = (64, 48)


# NOTE: built from the same function the app serves (pinned below), because
#   schemathesis' lazy fixture loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(
    openapi_document(
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        formats=('avif', 'webp', 'jpeg'),
    )
)


@schema.parametrize()
# NOTE: schemathesis' WSGI client never calls close() on the response
#   iterable, which a WSGI server must do; downloads then leave their file
#   to the garbage collector. Real servers are covered in test_gunicorn.py.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_every_response_matches_the_document(app: falcon.App, case: schemathesis.Case) -> None:
    aim_at_known_image(case)
    # NOTE: positive_data_acceptance expects every schema-valid request to
    #   succeed; a schema cannot say "bytes that decode as an image" (random
    #   bytes are rightly 415) or "an id that exists" (an unknown `after`
    #   cursor is rightly 400). Every other check runs.
    case.call_and_validate(app=app, excluded_checks=[schemathesis.checks.positive_data_acceptance])


def aim_at_known_image(case: schemathesis.Case) -> None:
    """Point half the cases that name an image at one that exists (never to delete it)."""
    parameters = case.path_parameters or {}
    if 'image_id' not in parameters or case.method == 'DELETE':
        return
    if zlib.crc32(repr(sorted(parameters.items())).encode()) % 2:
        parameters['image_id'] = app_image_ids[0]
        if 'width' in parameters:
            parameters['width'], parameters['height'] = (KNOWN_SIZE[0] // 2, KNOWN_SIZE[1] // 2)


def test_served_document_is_the_tested_one(app: falcon.App) -> None:
    assert TestClient(app).simulate_get('/openapi.json').json == schema.raw_schema


def test_document_is_openapi_3_1_and_lists_every_route(app: falcon.App) -> None:
    document = TestClient(app).simulate_get('/openapi.json').json
    assert document['openapi'] == '3.1.0'
    assert set(document['paths']) == {
        '/images',
        '/images/{image_id}.jpeg',
        '/thumbnails/{image_id}/{width}x{height}.{format}',
        '/thumbnails/{image_id}/{width}x{height}',
        '/health',
        '/openapi.json',
    }
    assert set(document['paths']['/images']) == {'get', 'head', 'post'}
    assert set(document['paths']['/images/{image_id}.jpeg']) == {'get', 'head', 'delete'}
