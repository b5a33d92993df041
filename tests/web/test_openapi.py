"""The OpenAPI document: each limit it states is the one look enforces, asked of the live app
at the limit and past it, and what look refuses is in it as look answers it.

schemathesis' runs against the document are in test_openapi_conformance.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from falcon.testing import Result, TestClient

from look.web.openapi import openapi_document

from support import imagegen
from support.imagegen import image_bytes

MakeClient = Callable[..., TestClient]
MIN_THUMB_SIZE = 16
API_KEY = 'openapi-0123456789abcdef'
FORM_WITHOUT_A_FILE = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n'


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client(processes=1, min_thumb_size=MIN_THUMB_SIZE)


def served(client: TestClient) -> dict[str, Any]:
    result = client.simulate_get('/openapi.json')
    assert result.status_code == 200
    return result.json


def component(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Return what a ``{"$ref": "#/components/..."}`` names."""
    node: Any = document
    for key in ref['$ref'].removeprefix('#/').split('/'):
        node = node[key]
    return node


def parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    """Return the schema of an operation's parameter, as the document states it."""
    for ref in document['paths'][path][method]['parameters']:
        declared = component(document, ref) if '$ref' in ref else ref
        if declared['name'] == name:
            schema = declared['schema']
            return component(document, schema) if '$ref' in schema else schema
    raise KeyError(name)


def upload(client: TestClient, body: bytes, **kwargs: Any) -> Result:
    return client.simulate_post('/images', body=body, **kwargs)


def uploaded(client: TestClient, size: tuple[int, int] = (1, 1), fmt: str = 'PNG') -> str:
    result = upload(client, image_bytes(fmt, size=size))
    assert result.status_code == 201, result.text
    return str(result.json['id'])


# -- each stated limit is the enforced one ------------------------------------------------


def test_page_sizes_are_the_stated_ones(client: TestClient) -> None:
    limit = parameter(served(client), '/images', 'get', 'limit')
    for _ in range(limit['default'] + 1):
        uploaded(client)

    def listed(**params: Any) -> Result:
        return client.simulate_get('/images', params=params)

    assert len(listed().json) == limit['default']
    assert len(listed(limit=limit['maximum']).json) == limit['default'] + 1
    assert listed(limit=limit['maximum'] + 1).status_code == 400
    assert len(listed(limit=limit['minimum']).json) == limit['minimum']
    assert listed(limit=limit['minimum'] - 1).status_code == 400


def test_orders_are_the_stated_ones(client: TestClient) -> None:
    order = parameter(served(client), '/images', 'get', 'order')
    ids = [uploaded(client), uploaded(client)]
    listed = {
        value: [image['id'] for image in client.simulate_get(f'/images?order={value}').json]
        for value in order['enum']
    }
    assert listed == {'oldest': ids, 'newest': ids[::-1]}
    assert listed[order['default']] == [i['id'] for i in client.simulate_get('/images').json]
    assert client.simulate_get('/images?order=random').status_code == 400


def test_image_ids_are_the_stated_pattern(client: TestClient) -> None:
    document = served(client)
    pattern = parameter(document, '/images/{image_id}.jpeg', 'get', 'image_id')['pattern']
    image_id = uploaded(client)
    assert re.search(pattern, image_id)
    assert client.simulate_get(f'/images/{image_id}.jpeg').status_code == 200
    unknown = str(uuid.uuid4())
    assert re.search(pattern, unknown)
    assert client.simulate_get(f'/images/{unknown}.jpeg').json['title'] == 'Image not found'
    # Other spellings of the same UUID match no route: they are no address of the image.
    for spelling in (image_id.upper(), image_id.replace('-', ''), f'{{{image_id}}}'):
        assert not re.search(pattern, spelling)
        refused = client.simulate_get(f'/images/{spelling}.jpeg')
        assert (refused.status_code, refused.json['title']) == (404, 'Not found')


def test_thumbnail_sides_are_the_stated_ones(client: TestClient) -> None:
    document = served(client)
    path = '/thumbnails/{image_id}/{width}x{height}.{format}'
    side = parameter(document, path, 'get', 'width')
    assert parameter(document, path, 'get', 'height') == side
    smallest, largest = side['minimum'], side['maximum']

    def title(image_id: str, width: int, height: int) -> str:
        result = client.simulate_get(f'/thumbnails/{image_id}/{width}x{height}.jpeg')
        return 'ok' if result.status_code == 200 else result.json['title']

    # Halving 2 x smallest gives a thumbnail of the smallest side; halving one pixel
    # less gives sides below it, which no image has.
    assert title(uploaded(client, (2 * smallest, 2 * smallest)), smallest, smallest) == 'ok'
    short = uploaded(client, (2 * smallest - 2, 2 * smallest))
    assert title(short, smallest - 1, smallest) == 'No such thumbnail size'
    # The largest side is still routed (to a size the image does not have); one more is not.
    assert title(short, largest, largest) == 'No such thumbnail size'
    assert title(short, largest + 1, smallest) == 'Not found'
    assert title(short, smallest, largest + 1) == 'Not found'


def test_thumbnail_formats_are_the_ones_served(make_client: MakeClient) -> None:
    client = make_client(processes=1, min_thumb_size=MIN_THUMB_SIZE, thumbnail_formats='jpeg,webp')
    document = served(client)
    path = '/thumbnails/{image_id}/{width}x{height}.{format}'
    formats = parameter(document, path, 'get', 'format')['enum']
    assert formats == ['webp', 'jpeg']
    media_types = document['paths'][path]['get']['responses']['200']['content']
    image_id = uploaded(client, (2 * MIN_THUMB_SIZE, 2 * MIN_THUMB_SIZE))
    size = f'{MIN_THUMB_SIZE}x{MIN_THUMB_SIZE}'
    for name in formats:
        result = client.simulate_get(f'/thumbnails/{image_id}/{size}.{name}')
        assert result.status_code == 200
        assert result.headers['Content-Type'] in media_types
    assert set(media_types) == {'image/webp', 'image/jpeg'}
    assert client.simulate_get(f'/thumbnails/{image_id}/{size}.avif').status_code == 404


def test_upload_byte_limit_is_the_stated_one(make_client: MakeClient) -> None:
    client = make_client(processes=1, max_upload_bytes=4096)
    post = served(client)['paths']['/images']['post']
    stated = re.search(r'At most (\d+) bytes', post['description'])
    assert stated is not None
    limit = int(stated[1])
    assert limit == 4096
    assert f'{limit} bytes' in post['responses']['413']['description']
    assert upload(client, b'x' * (limit + 1)).status_code == 413
    assert upload(client, b'x' * limit).status_code == 415  # within the limit: read, not an image


def test_each_upload_media_type_is_a_format_look_reads(client: TestClient) -> None:
    body = served(client)['paths']['/images']['post']['requestBody']['content']
    image_types = [name for name in body if name.startswith('image/')]
    assert len(image_types) == 10  # HEIF's pictures are HEVC as image/heic too
    assert body['multipart/form-data']['encoding']['image']['contentType'].split(', ') == (
        image_types
    )
    imagegen.register_plugins()
    for media_type in image_types:
        fmt = media_type.removeprefix('image/').upper().replace('HEIC', 'HEIF')
        sent = upload(client, image_bytes(fmt, size=(8, 8)), content_type=media_type)
        assert sent.status_code == 201, (media_type, sent.text)


# -- what look refuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ('method', 'request_kwargs', 'status'),
    [
        pytest.param('post', {'body': b''}, 400, id='empty body'),
        pytest.param('post', {'body': b'Dear look, this is no image.'}, 415, id='not an image'),
        pytest.param(
            'post',
            {
                'body': FORM_WITHOUT_A_FILE,
                'content_type': 'multipart/form-data; boundary=b',
            },
            400,
            id='form without a file',
        ),
        pytest.param('get', {'params': {'after': str(uuid.uuid4())}}, 400, id='after names none'),
        pytest.param('get', {'params': {'after': 'not-an-id'}}, 400, id='after is no id'),
        pytest.param('get', {'params': {'limit': 'ten'}}, 400, id='limit is no number'),
    ],
)
def test_what_look_refuses_is_documented_as_it_answers(
    client: TestClient, method: str, request_kwargs: dict[str, Any], status: int
) -> None:
    uploaded(client)
    document = served(client)
    result = client.simulate_request(method.upper(), '/images', **request_kwargs)
    assert result.status_code == status
    documented = document['paths']['/images'][method]['responses'][str(status)]
    assert documented['content']['application/json']['schema'] == {
        '$ref': '#/components/schemas/Error'
    }
    error = document['components']['schemas']['Error']
    assert set(result.json) == set(error['required']) == set(error['properties'])
    assert result.headers['Cache-Control'] == 'no-store'


def test_after_naming_a_deleted_image_still_pages(client: TestClient) -> None:
    """As the document says: an image deleted since still marks its place."""
    first, second = uploaded(client), uploaded(client)
    assert client.simulate_delete(f'/images/{first}.jpeg').status_code == 204
    page = client.simulate_get('/images', params={'after': first})
    assert [image['id'] for image in page.json] == [second]


# -- the document as a whole --------------------------------------------------------------


def test_each_operation_declares_its_security() -> None:
    """With keys: listing and uploading take a key, deleting or describing a key or the token."""
    limits = {'max_upload_bytes': 1024, 'min_thumb_size': MIN_THUMB_SIZE}
    keyed = openapi_document(**limits, keys_required=True)
    open_ = openapi_document(**limits)
    public: list[dict[str, list[str]]] = []
    for document, key, anyone in (
        (keyed, [{'apiKey': []}], []),
        (open_, [{}, {'apiKey': []}], [{}]),
    ):
        security = {
            f'{method.upper()} {path}': operation['security']
            for path, operations in document['paths'].items()
            for method, operation in operations.items()
        }
        assert security.pop('GET /images') == key
        assert security.pop('HEAD /images') == key
        assert security.pop('POST /images') == key
        for method in ('DELETE', 'PATCH'):
            assert security.pop(f'{method} /images/{{image_id}}.jpeg') == [
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
        assert len(refusals) == (5 if document is keyed else 0)


def test_served_document_says_whether_keys_are_needed(make_client: MakeClient) -> None:
    keyed = served(make_client(api_keys=f'tests:{API_KEY}'))
    assert keyed['paths']['/images']['post']['security'] == [{'apiKey': []}]
    assert served(make_client())['paths']['/images']['post']['security'][0] == {}


def test_document_is_openapi_3_1_and_lists_every_route(client: TestClient) -> None:
    document = served(client)
    assert document['openapi'] == '3.1.0'
    assert set(document['paths']) == {
        '/images',
        '/images/{image_id}.jpeg',
        '/images/{image_id}.webp',
        '/thumbnails/{image_id}/{width}x{height}.{format}',
        '/thumbnails/{image_id}/{width}x{height}',
        '/health',
        '/openapi.json',
    }
    assert set(document['paths']['/images']) == {'get', 'head', 'post'}
    assert set(document['paths']['/images/{image_id}.jpeg']) == {'get', 'head', 'patch', 'delete'}


def test_an_upload_links_to_every_operation_on_its_image(client: TestClient) -> None:
    """A client that follows the links of a 201 reaches each operation on the new image."""
    document = served(client)
    links = document['paths']['/images']['post']['responses']['201']['links']
    operation_ids = {
        operation['operationId']: f'{method.upper()} {path}'
        for path, operations in document['paths'].items()
        for method, operation in operations.items()
    }
    targets = {operation_ids[link['operationId']] for link in links.values()}
    assert targets == {
        f'{method} {path}'
        for method in ('GET', 'HEAD')
        for path in (
            '/images',
            '/images/{image_id}.jpeg',
            '/thumbnails/{image_id}/{width}x{height}.{format}',
            '/thumbnails/{image_id}/{width}x{height}',
        )
    } | {'DELETE /images/{image_id}.jpeg'}
    assert links['delete']['parameters']['header.Authorization'] == (
        'Bearer {$response.body#/delete_token}'
    )
