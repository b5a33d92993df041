"""The live app does what its OpenAPI document says, as schemathesis finds: one operation at a
time, and along the links of an upload. No server error, no answer the document does not
describe, no schema-valid request refused. Seeded, so every run sends the same requests.
"""

from __future__ import annotations

import collections
import random
import re
import uuid
import zlib
from collections.abc import Container, Iterator
from typing import Any

import fakeredis
import falcon
import hypothesis
import pytest
import schemathesis
from falcon.testing import TestClient
from hypothesis import strategies as st

from look.app import create_app
from look.config import Config
from look.imaging import pool as thumbnailer
from look.web.openapi import openapi_document

from support import imagegen
from support.imagegen import image_bytes

MAX_UPLOAD_BYTES = 1024 * 1024
MIN_THUMB_SIZE = 16
API_KEY = 'openapi-0123456789abcdef'
# What the default LOOK_THUMBNAIL_FORMATS offers, best first.
FORMATS = ('avif', 'jxl', 'webp', 'jpeg')
# Every image uploaded has one thumbnail, of the smallest side.
UPLOAD_SIZE = (2 * MIN_THUMB_SIZE, 2 * MIN_THUMB_SIZE)
THUMBNAIL_SIZE = (MIN_THUMB_SIZE, MIN_THUMB_SIZE)
SIZE = re.compile(r'/(\d+)x(\d+)\.')


def make_app(storage_path: Any, **settings: Any) -> falcon.App:
    """Return an app on fresh storage that holds one image (``known_images`` names it)."""
    server = fakeredis.FakeServer()
    ids = random.Random(0)
    config = Config(
        environ={},
        storage_path=storage_path,
        # Ids drawn as every run draws them, so that a failure's ids are its rerun's too.
        uuid_generator=lambda: uuid.UUID(int=ids.getrandbits(128), version=4),
        redis_from_url=lambda url: fakeredis.FakeRedis(server=server),
        processes=1,
        allowed_hosts=(falcon.testing.helpers.DEFAULT_HOST,),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        **settings,
    )
    app = create_app(config)
    upload = TestClient(app).simulate_post(
        '/images',
        body=image_bytes('PNG', size=UPLOAD_SIZE),
        headers={'Authorization': f'Bearer {API_KEY}'},
    )
    assert upload.status_code == 201
    known_images[app] = upload.json['id']
    return app


# The id of an image each app holds, so that cases reach the 200 and 304 answers.
known_images: dict[falcon.App, str] = {}


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


# NOTE: built from the same function the app serves (pinned below), because
#   schemathesis' lazy fixture loader does not work with pytest 9.
def document(**settings: Any) -> dict[str, Any]:
    return openapi_document(
        max_upload_bytes=MAX_UPLOAD_BYTES,
        min_thumb_size=MIN_THUMB_SIZE,
        formats=FORMATS,
        **settings,
    )


schema = schemathesis.openapi.from_dict(document())
keyed_schema = schemathesis.openapi.from_dict(document(keys_required=True))


def test_served_documents_are_the_tested_ones(app: falcon.App, keyed_app: falcon.App) -> None:
    assert TestClient(app).simulate_get('/openapi.json').json == schema.raw_schema
    assert TestClient(keyed_app).simulate_get('/openapi.json').json == keyed_schema.raw_schema


# -- what a schema cannot say -------------------------------------------------------------


def send_images_as_uploads(document: dict[str, Any]) -> None:
    """Have schemathesis send a real image of its format as each upload media type.

    NOTE: "bytes that decode as an image" is no JSON Schema, so schemathesis
      is told what an image/png body is (and an application/octet-stream one:
      a JPEG); a schema-valid upload is then an image, and must be stored.
    """
    imagegen.register_plugins()  # image/heif, image/heic and image/jxl
    for media_type in document['paths']['/images']['post']['requestBody']['content']:
        if media_type.startswith('image/'):
            fmt = media_type.removeprefix('image/').upper().replace('HEIC', 'HEIF')
        elif media_type == 'application/octet-stream':
            fmt = 'JPEG'
        else:
            continue  # a form's "image" part is sent as one of the types its encoding names
        body = image_bytes(fmt, size=UPLOAD_SIZE, seed=1)
        schemathesis.openapi.media_type(media_type, st.just(body))


send_images_as_uploads(schema.raw_schema)


def aim_at_known_image(case: schemathesis.Case, image_id: str) -> None:
    """Point half the cases that name an image at one that exists (never to delete it)."""
    parameters = case.path_parameters or {}
    if 'image_id' not in parameters or case.method == 'DELETE':
        return
    if zlib.crc32(repr(sorted(parameters.items())).encode()) % 2:
        # NOTE: replaced, not changed in place: hypothesis keeps what it drew.
        case.path_parameters = {**parameters, 'image_id': image_id}
        if 'width' in parameters:
            case.path_parameters['width'], case.path_parameters['height'] = THUMBNAIL_SIZE


def start_after_an_image(case: schemathesis.Case, known: Container[str], image_id: str) -> None:
    """Make a schema-valid `after` the id of an image that exists (``image_id``, if not known).

    NOTE: "an id that exists" is no schema either: an unknown id in a path is
      rightly a 404, which schemathesis allows, an unknown `after` cursor
      rightly a 400, which it does not allow of a schema-valid request.
    """
    after = (case.query or {}).get('after')
    if after is not None and after not in known and is_positive(case):
        case.query = {**case.query, 'after': image_id}


def is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


# -- one operation at a time --------------------------------------------------------------

SETTINGS = hypothesis.settings(
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    database=None,
)


@schema.parametrize()
# NOTE: schemathesis' WSGI client never calls close() on the response
#   iterable, which a WSGI server must do; downloads then leave their file
#   to the garbage collector. Real servers are covered in test_gunicorn.py.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@hypothesis.settings(SETTINGS, max_examples=30)
def test_every_response_matches_the_document(app: falcon.App, case: schemathesis.Case) -> None:
    aim_at_known_image(case, known_images[app])
    start_after_an_image(case, (), known_images[app])
    case.call_and_validate(app=app)


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
@hypothesis.settings(SETTINGS, max_examples=12)
def test_every_response_with_keys_matches_the_document(
    keyed_app: falcon.App, case: schemathesis.Case
) -> None:
    """401s included; and an operation that declares a key refuses cases without a good one."""
    aim_at_known_image(case, known_images[keyed_app])
    start_after_an_image(case, (), known_images[keyed_app])
    # NOTE: the ignored_auth check sends requests of its own (without the key,
    #   and with a wrong one) to the app of the case's schema.
    case.operation.schema.app = keyed_app
    case.call_and_validate(app=keyed_app)


# -- along the links of an upload ---------------------------------------------------------


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_following_the_links_of_uploads_reaches_every_operation(tmp_path: Any) -> None:
    """Upload, then follow the 201's links: download, thumbnails, the list, the delete."""
    app = make_app(tmp_path)
    # NOTE: the document's links only: schemathesis would infer more of its own.
    #   And schema-valid requests only: the tests above send the invalid ones,
    #   and the form's schema names only its image, while look reads and
    #   drops any other field (a browser's form carries "alt" too), which a
    #   negative case of this run counted as a request wrongly accepted.
    only_the_documents_links = schemathesis.config.SchemathesisConfig.from_dict(
        {
            'generation': {'mode': 'positive'},
            'phases': {'stateful': {'inference': {'algorithms': []}}},
        }
    )
    linked = schemathesis.openapi.from_wsgi('/openapi.json', app, config=only_the_documents_links)
    upload = linked.raw_schema['paths']['/images']['post']
    operations = {
        operation['operationId']: f'{method.upper()} {path}'
        for path, methods in linked.raw_schema['paths'].items()
        for method, operation in methods.items()
    }
    answered: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    # The thumbnail sizes of each image uploaded, from its "thumbnails" list.
    sizes = {known_images[app]: [THUMBNAIL_SIZE]}

    class Links(linked.as_state_machine()):
        def before_call(self, case: schemathesis.Case) -> None:
            # As the thumbnail links say: a width and height from its "thumbnails" list.
            parameters = case.path_parameters or {}
            if 'width' in parameters and sizes.get(parameters['image_id']) and is_positive(case):
                width, height = sizes[parameters['image_id']][0]
                case.path_parameters = {**parameters, 'width': width, 'height': height}
            start_after_an_image(case, sizes, known_images[app])

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            answered[f'{case.method} {case.path}'][response.status_code] += 1
            if case.method == 'POST' and response.status_code == 201:
                image = response.json()
                sizes[image['id']] = [
                    (int(width), int(height))
                    for width, height in (SIZE.findall(url)[0] for url in image['thumbnails'])
                ]

    # NOTE: no shrinking: the app keeps what every run before did, so a run
    #   replayed is not the same run; a failure is reported as it was found.
    unshrunk = [hypothesis.Phase.explicit, hypothesis.Phase.generate]
    try:
        Links.run(
            settings=hypothesis.settings(
                SETTINGS, max_examples=25, stateful_step_count=10, phases=unshrunk
            )
        )
    finally:
        known_images.pop(app)
        thumbnailer.close_all()
    followed = {
        operations[link['operationId']] for link in upload['responses']['201']['links'].values()
    }
    succeeded = {
        operation
        for operation, statuses in answered.items()
        if any(200 <= status < 400 for status in statuses)
    }
    assert succeeded >= {'POST /images', *followed}, dict(answered)
