"""The OpenAPI document describes the live app: schemathesis finds no server error
and no response that breaks the document."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import fakeredis
import falcon
import hypothesis
import pytest
import schemathesis
from falcon.testing import TestClient

from look.app import create_app
from look.config import Config
from look.imaging import pool as thumbnailer
from look.web.openapi import openapi_document

from support.imagegen import image_bytes

MAX_UPLOAD_BYTES = 1024 * 1024
MIN_THUMB_SIZE = 16
API_KEY = 'openapi-0123456789abcdef'
# What the default LOOK_THUMBNAIL_FORMATS offers, best first.
FORMATS = ('avif', 'webp', 'jpeg')


def make_app(storage_path: Any, **settings: Any) -> falcon.App:
    """Return an app on fresh storage that holds one image of KNOWN_SIZE."""
    server = fakeredis.FakeServer()
    config = Config(
        environ={},
        storage_path=storage_path,
        redis_from_url=lambda url: fakeredis.FakeRedis(server=server),
        processes=1,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        **settings,
    )
    app = create_app(config)
    upload = TestClient(app).simulate_post(
        '/images',
        body=image_bytes('PNG', size=KNOWN_SIZE),
        headers={'Authorization': f'Bearer {API_KEY}'},
    )
    assert upload.status_code == 201
    known_images[app] = upload.json['id']
    return app


@pytest.fixture(scope='module')
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[falcon.App]:
    app = make_app(tmp_path_factory.mktemp('openapi'))
    yield app
    known_images.pop(app)
    thumbnailer.close_all()


@pytest.fixture(scope='module')
def keyed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[falcon.App]:
    app = make_app(tmp_path_factory.mktemp('openapi-keyed'), api_keys=f'tests:{API_KEY}')
    yield app
    known_images.pop(app)
    thumbnailer.close_all()


# The id of an image each app holds, so that cases reach the 200 and 304 answers.
known_images: dict[falcon.App, str] = {}
KNOWN_SIZE = (64, 48)


# NOTE: built from the same function the app serves (pinned below), because
#   schemathesis' lazy fixture loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(
    openapi_document(
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        formats=FORMATS,
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
    aim_at_known_image(case, known_images[app])
    # NOTE: positive_data_acceptance expects every schema-valid request to
    #   succeed; a schema cannot say "bytes that decode as an image" (random
    #   bytes are rightly 415) or "an id that exists" (an unknown `after`
    #   cursor is rightly 400). Every other check runs.
    case.call_and_validate(app=app, excluded_checks=[schemathesis.checks.positive_data_acceptance])


def aim_at_known_image(case: schemathesis.Case, image_id: str) -> None:
    """Point half the cases that name an image at one that exists (never to delete it)."""
    parameters = case.path_parameters or {}
    if 'image_id' not in parameters or case.method == 'DELETE':
        return
    if zlib.crc32(repr(sorted(parameters.items())).encode()) % 2:
        parameters['image_id'] = image_id
        if 'width' in parameters:
            parameters['width'], parameters['height'] = (KNOWN_SIZE[0] // 2, KNOWN_SIZE[1] // 2)


def test_served_document_is_the_tested_one(app: falcon.App, keyed_app: falcon.App) -> None:
    assert TestClient(app).simulate_get('/openapi.json').json == schema.raw_schema
    assert TestClient(keyed_app).simulate_get('/openapi.json').json == keyed_schema.raw_schema


# -- with API keys set ------------------------------------------------------------------

keyed_schema = schemathesis.openapi.from_dict(
    openapi_document(
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        formats=FORMATS,
        keys_required=True,
    )
)


@keyed_schema.auth(refresh_interval=None)
class KeyForHalfTheCases:
    """Send the API key with half the cases; the other half come anonymous and get 401s."""

    def get(self, case: schemathesis.Case, context: Any) -> str | None:
        described = f'{case.method} {case.path} {case.path_parameters} {case.query}'
        return API_KEY if zlib.crc32(described.encode()) % 2 else None

    def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), 'Authorization': f'Bearer {data}'}


@keyed_schema.parametrize()
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@hypothesis.settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_every_response_with_keys_matches_the_document(
    keyed_app: falcon.App, case: schemathesis.Case
) -> None:
    """401s included; and an operation that declares a key refuses cases without a good one."""
    aim_at_known_image(case, known_images[keyed_app])
    # NOTE: the ignored_auth check sends requests of its own (without the key,
    #   and with a wrong one) to the app of the case's schema.
    case.operation.schema.app = keyed_app
    case.call_and_validate(
        app=keyed_app, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )


def test_each_operation_declares_its_security() -> None:
    """With keys: listing and uploading take a key, deleting a key or the token, the rest none."""
    public: list[dict[str, list[str]]] = []
    for document, key, anyone in (
        (keyed_schema.raw_schema, [{'apiKey': []}], []),
        (schema.raw_schema, [{}, {'apiKey': []}], [{}]),
    ):
        security = {
            f'{method.upper()} {path}': operation['security']
            for path, operations in document['paths'].items()
            for method, operation in operations.items()
        }
        assert security.pop('GET /images') == key
        assert security.pop('HEAD /images') == key
        assert security.pop('POST /images') == key
        assert security.pop('DELETE /images/{image_id}.jpeg') == [
            *anyone,
            {'apiKey': []},
            {'deleteToken': []},
        ]
        assert all(value == public for value in security.values()), security
        for scheme in document['components']['securitySchemes'].values():
            assert (scheme['type'], scheme['scheme']) == ('http', 'bearer')
        refusals = [
            status
            for operations in document['paths'].values()
            for operation in operations.values()
            for status in operation['responses']
            if status == '401'
        ]
        assert len(refusals) == (4 if document is keyed_schema.raw_schema else 0)


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
