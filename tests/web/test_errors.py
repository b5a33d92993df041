"""Pin the one error shape: JSON ``{"title", "description"}``, whatever went wrong.

Scripts read ``description`` without checking what kind of error they got, so
every error path, Falcon's own and look's, must produce exactly this.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from falcon.testing import Result, TestClient

from look.config import Config

from support import imagegen
from support.imagegen import image_bytes

pytestmark = pytest.mark.backends('local', 'shared')

MakeClient = Callable[..., TestClient]
MakeConfig = Callable[..., Config]
SOME_ID = '00000000-0000-0000-0000-000000000001'
PNG = image_bytes('PNG', size=(128, 128))


def _same_id_twice() -> Callable[[], uuid.UUID]:
    return lambda: uuid.UUID(SOME_ID)


def _failing_generator() -> uuid.UUID:
    raise RuntimeError('an unexpected bug')


def _upload_twice_with_one_id(make_client: MakeClient, headers: dict[str, str]) -> Result:
    client = make_client(uuid_generator=_same_id_twice())
    assert client.simulate_post('/images', body=PNG).status_code == 201
    return client.simulate_post('/images', body=PNG, headers=headers)


def _unlisted_thumbnail(make_client: MakeClient, headers: dict[str, str]) -> Result:
    client = make_client()
    image_id = client.simulate_post('/images', body=PNG).json['id']
    return client.simulate_get(f'/thumbnails/{image_id}/7x7.jpeg', headers=headers)


# name -> (status, request); each request gets the headers under test.
CASES: dict[str, tuple[int, Callable[[MakeClient, dict[str, str]], Result]]] = {
    'routing-404': (404, lambda make, h: make().simulate_get('/no/such/page', headers=h)),
    'malformed-id-404': (404, lambda make, h: make().simulate_get('/images/x.jpeg', headers=h)),
    'unknown-image-404': (
        404,
        lambda make, h: make().simulate_get(f'/images/{SOME_ID}.jpeg', headers=h),
    ),
    'unlisted-thumbnail-404': (404, _unlisted_thumbnail),
    'method-405': (405, lambda make, h: make().simulate_put('/images', body=PNG, headers=h)),
    'empty-400': (400, lambda make, h: make().simulate_post('/images', headers=h)),
    'corrupt-400': (
        400,
        lambda make, h: make().simulate_post('/images', body=PNG[: len(PNG) // 2], headers=h),
    ),
    'falcon-param-400': (
        400,
        lambda make, h: make().simulate_get('/images', query_string='limit=x', headers=h),
    ),
    'falcon-form-400': (
        400,
        lambda make, h: make().simulate_post(
            '/images', body=b'x', content_type='multipart/form-data; boundary=b', headers=h
        ),
    ),
    'short-body-408': (
        408,
        lambda make, h: make().simulate_post(
            '/images', body=PNG, headers={**h, 'Content-Length': str(len(PNG) + 100)}
        ),
    ),
    'content-length-413': (
        413,
        lambda make, h: make(max_upload_bytes=100).simulate_post('/images', body=PNG, headers=h),
    ),
    'pixels-413': (
        413,
        lambda make, h: make(max_pixels=100).simulate_post('/images', body=PNG, headers=h),
    ),
    'scans-422': (
        422,
        lambda make, h: make().simulate_post(
            '/images', body=imagegen.progressive_scan_bomb((64, 48), 40), headers=h
        ),
    ),
    'text-415': (
        415,
        lambda make, h: make().simulate_post('/images', body=b'hello, world', headers=h),
    ),
    'unexpected-500': (
        500,
        lambda make, h: make(uuid_generator=_failing_generator).simulate_post(
            '/images', body=PNG, headers=h
        ),
    ),
    # NOTE: the pool cannot even start within a millisecond, so the upload times out.
    'timeout-503': (
        503,
        lambda make, h: make(render_timeout=0.001).simulate_post('/images', body=PNG, headers=h),
    ),
    'existing-id-409': (409, _upload_twice_with_one_id),
}


# NOTE: cases that never reach the index or the image store run once.
ONCE = pytest.mark.backends('local')
REACHING_THE_BACKENDS = {
    'unknown-image-404',
    'unlisted-thumbnail-404',
    'corrupt-400',
    'unexpected-500',
    'existing-id-409',
}


@pytest.mark.parametrize(
    'case',
    [case if case in REACHING_THE_BACKENDS else pytest.param(case, marks=ONCE) for case in CASES],
)
def test_every_error_has_the_one_shape(make_client: MakeClient, case: str) -> None:
    """Even a client that asks for XML gets the JSON error."""
    status, request = CASES[case]

    response = request(make_client, {'Accept': 'application/xml'})

    assert_error_shape(response, status)


@ONCE
# NOTE: a request preferring text/html (a browser's navigation) meets a 404 or 415 as a
#   page (tests/web/test_gallery.py); with JSON as good, it is JSON.
@pytest.mark.parametrize(
    'accept', [None, 'text/html, application/json', 'application/json', '*/*', 'image/*']
)
def test_error_shape_whatever_the_client_accepts(
    make_client: MakeClient, accept: str | None
) -> None:
    headers = {'Accept': accept} if accept else {}
    client = make_client()

    assert_error_shape(client.simulate_get('/nothing', headers=headers), 404)
    assert_error_shape(client.simulate_post('/images', body=b'text', headers=headers), 415)


def assert_error_shape(response: Result, status: int) -> None:
    assert response.status_code == status
    assert response.headers['Content-Type'] == 'application/json'
    # Never stored as the image or thumbnail the request was for.
    assert response.headers['Cache-Control'] == 'no-store'
    assert 'ETag' not in response.headers
    assert 'Last-Modified' not in response.headers
    body = json.loads(response.content)
    assert set(body) == {'title', 'description'}
    for key in ('title', 'description'):
        assert isinstance(body[key], str)
        assert body[key].strip(), f'{key} is empty'


@ONCE
def test_method_not_allowed_names_the_allowed_methods(make_client: MakeClient) -> None:
    response = make_client().simulate_delete('/images')

    assert response.status_code == 405
    assert {method.strip() for method in response.headers['Allow'].split(',')} >= {'GET', 'POST'}


def test_a_render_failing_after_the_thumbnails_validators_were_set_drops_them(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    """A 503 must not reach a CDN as the thumbnail itself, immutable for a year."""
    config = make_config()
    thumbnail = make_client(config).simulate_post('/images', body=PNG).json['thumbnails'][0]
    # The same storage; a pool that cannot start within a millisecond.
    slow = make_client(make_config(storage_path=config.storage_path, render_timeout=0.001))

    assert_error_shape(slow.simulate_get(thumbnail), 503)


def test_busy_or_failed_render_says_when_to_retry(make_client: MakeClient) -> None:
    response = make_client(render_timeout=0.001).simulate_post('/images', body=PNG)

    assert response.status_code == 503
    assert int(response.headers['Retry-After']) > 0


def test_error_head_has_no_body(make_client: MakeClient) -> None:
    response = make_client().simulate_head(f'/images/{SOME_ID}.jpeg')

    assert response.status_code == 404
    assert response.content == b''
