"""CORS: off unless LOOK_CORS_ORIGINS names origins; then browsers there may use the API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from falcon.testing import TestClient

from look.config import Config, ConfigError

from support.imagegen import image_bytes

MakeClient = Callable[..., TestClient]
SITE = 'https://photos.example.org'
KEY = 'site:0123456789abcdef0123'


def test_without_origins_no_cors_headers_are_sent(client: TestClient) -> None:
    answer = client.simulate_get('/images', headers={'Origin': SITE})
    assert 'Access-Control-Allow-Origin' not in answer.headers


def test_a_named_origin_may_read_answers_and_their_headers(make_client: MakeClient) -> None:
    client = make_client(cors_origins=(SITE,))
    created = client.simulate_post(
        '/images', body=image_bytes('JPEG', (320, 200)), headers={'Origin': SITE}
    )

    assert created.status_code == 201
    assert created.headers['Access-Control-Allow-Origin'] == SITE
    exposed = {
        h.strip().lower() for h in created.headers['Access-Control-Expose-Headers'].split(',')
    }
    assert {'location', 'link', 'etag', 'x-look-cache', 'retry-after'} <= exposed
    other = client.simulate_get('/images', headers={'Origin': 'https://elsewhere.example'})
    assert 'Access-Control-Allow-Origin' not in other.headers


def test_a_preflight_for_an_authorized_delete_is_answered(make_client: MakeClient) -> None:
    """A DELETE with a token is not a simple request: the browser asks first, without it."""
    client = make_client(cors_origins=(SITE,), api_keys=KEY)
    created = client.simulate_post(
        '/images',
        body=image_bytes('JPEG', (320, 200)),
        headers={'Authorization': f'Bearer {KEY.partition(":")[2]}'},
    ).json

    preflight = client.simulate_options(
        created['image'],
        headers={
            'Origin': SITE,
            'Access-Control-Request-Method': 'DELETE',
            'Access-Control-Request-Headers': 'authorization',
        },
    )

    assert preflight.status_code == 200
    assert preflight.headers['Access-Control-Allow-Origin'] == SITE
    assert 'DELETE' in preflight.headers['Access-Control-Allow-Methods']
    assert preflight.headers['Access-Control-Allow-Headers'].lower() == 'authorization'
    deleted = client.simulate_delete(
        created['image'],
        headers={'Origin': SITE, 'Authorization': f'Bearer {created["delete_token"]}'},
    )
    assert deleted.status_code == 204
    assert deleted.headers['Access-Control-Allow-Origin'] == SITE


def test_any_origin_with_a_star(make_client: MakeClient) -> None:
    answer = make_client(cors_origins=('*',)).simulate_get(
        '/health', headers={'Origin': 'https://anywhere.example'}
    )
    assert answer.headers['Access-Control-Allow-Origin'] == '*'


@pytest.mark.parametrize(
    'value', ['photos.example.org', 'https://example.org/path', 'https://*.a']
)
def test_an_origin_that_is_not_one_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match='LOOK_CORS_ORIGINS'):
        Config(environ={'LOOK_CORS_ORIGINS': value})


def test_origins_are_read_from_the_environment() -> None:
    config = Config(environ={'LOOK_CORS_ORIGINS': f'{SITE}, http://localhost:3000'})
    assert config.cors_origins == (SITE, 'http://localhost:3000')
