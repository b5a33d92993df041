"""Alt text: what an image shows, given with its upload or later by PATCH, kept by both indexes.

Whoever may delete an image may describe it: anyone with no keys set (a
token that is not the image's is refused), else its delete token or a key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon.testing import Result, TestClient

from look.web.uploads import MAX_ALT_CHARS

from support.http import form_body
from support.imagegen import image_bytes

pytestmark = pytest.mark.backends('local', 'shared')
ONCE = pytest.mark.backends('local')

MakeClient = Callable[..., TestClient]
KEY = 'alt-test-key-0123456789abcdef'
PNG = image_bytes('PNG', size=(320, 240), seed=11)
HERON = 'A grey heron standing on one leg in shallow water, at dusk'


def upload(client: TestClient, *fields: tuple[str, str | None, bytes], **headers: str) -> Result:
    body, content_type = form_body(('image', 'heron.png', PNG), *fields)
    return client.simulate_post(
        '/images', body=body, headers={'Content-Type': content_type, **headers}
    )


def patch(client: TestClient, image_id: str, body: Any, **headers: str) -> Result:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.simulate_patch(
        f'/images/{image_id}.jpeg',
        body=data,
        headers={'Content-Type': 'application/json', **headers},
    )


def test_an_upload_carries_its_alt_text_to_every_description(client: TestClient) -> None:
    created = upload(client, ('alt', None, f'  {HERON}\n'.encode()))
    assert created.status_code == 201, created.text
    image_id = created.json['id']
    assert created.json['alt'] == HERON  # spaces at its ends dropped

    listed = client.simulate_get('/images').json
    assert [d['alt'] for d in listed if d['id'] == image_id] == [HERON]
    page = client.simulate_get(f'/view/{image_id}').text
    assert f'alt="{HERON}"' in page
    assert f'<title>{HERON} · look</title>' in page
    assert f'<meta property="og:description" content="{HERON}">' in page
    assert f'alt="{HERON}"' in client.simulate_get('/').text


def test_without_alt_text_the_pages_say_when_and_how_large(client: TestClient) -> None:
    created = upload(client)
    assert created.json['alt'] == ''
    page = client.simulate_get(f'/view/{created.json["id"]}').text
    assert 'alt="Image uploaded ' in page and ', 320 by 240 pixels"' in page
    assert 'og:description' not in page
    # The file's name is never stored as its words.
    assert 'heron.png' not in page


@ONCE
@pytest.mark.parametrize(('length', 'status'), [(MAX_ALT_CHARS, 201), (MAX_ALT_CHARS + 1, 400)])
def test_an_upload_takes_alt_text_up_to_the_limit(
    client: TestClient, length: int, status: int
) -> None:
    # NOTE: characters, not bytes: 1 000 herons are 4 000 bytes of UTF-8.
    result = upload(client, ('alt', None, ('🐦' * length).encode()))
    assert result.status_code == status, result.text
    if status == 400:
        assert result.json['title'] == 'Alt text too long'
        assert f'the limit is {MAX_ALT_CHARS}' in result.json['description']
        assert client.simulate_get('/images').json == []  # nothing stored


def test_patch_changes_the_alt_text_for_the_api_and_the_pages(client: TestClient) -> None:
    image_id = upload(client).json['id']
    changed = patch(client, image_id, {'alt': HERON})
    assert changed.status_code == 200, changed.text
    assert changed.json['alt'] == HERON and changed.json['id'] == image_id
    assert 'delete_token' not in changed.json
    assert client.simulate_get('/images').json[0]['alt'] == HERON
    assert f'alt="{HERON}"' in client.simulate_get(f'/view/{image_id}').text
    # The JPEG is the same: the ETag, its id, stays.
    assert client.simulate_get(f'/images/{image_id}.jpeg').headers['ETag'] == f'"{image_id}"'

    assert patch(client, image_id, {'alt': ''}).json['alt'] == ''


@ONCE
@pytest.mark.parametrize(
    ('body', 'content_type', 'status'),
    [
        ({'alt': 'x' * MAX_ALT_CHARS}, 'application/json', 200),
        ({'alt': 'x' * (MAX_ALT_CHARS + 1)}, 'application/json', 400),
        ({'alt': 'x'}, 'application/merge-patch+json', 200),
        ({'alt': 'x'}, 'text/plain', 415),
        (b'{"alt": ', 'application/json', 400),
        ([], 'application/json', 400),
        ({}, 'application/json', 400),
        ({'alt': 'x', 'size': [1, 1]}, 'application/json', 400),
        ({'alt': None}, 'application/json', 400),
        (b' ' * (14 * MAX_ALT_CHARS), 'application/json', 413),
    ],
)
def test_patch_refuses_what_is_not_an_alt_text_in_words(
    client: TestClient, body: Any, content_type: str, status: int
) -> None:
    image_id = upload(client).json['id']
    result = patch(client, image_id, body, **{'Content-Type': content_type})
    assert result.status_code == status, result.text
    if status != 200:
        assert set(result.json) == {'title', 'description'}
        assert client.simulate_get('/images').json[0]['alt'] == ''


@ONCE
def test_patch_of_an_image_nobody_has_is_404(client: TestClient) -> None:
    result = patch(client, '00000000-0000-4000-8000-000000000000', {'alt': HERON})
    assert result.status_code == 404
    assert result.json['title'] == 'Image not found'


@ONCE
def test_with_no_keys_anyone_may_describe_but_a_wrong_token_is_refused(
    client: TestClient,
) -> None:
    created = upload(client).json
    assert patch(client, created['id'], {'alt': 'one'}).status_code == 200
    token = {'Authorization': f'Bearer {created["delete_token"]}'}
    assert patch(client, created['id'], {'alt': 'two'}, **token).status_code == 200
    wrong = patch(client, created['id'], {'alt': 'three'}, Authorization='Bearer not-it')
    assert wrong.status_code == 403
    assert 'may not change image' in wrong.json['description']
    assert client.simulate_get('/images').json[0]['alt'] == 'two'


def test_with_keys_the_delete_token_or_a_key_describes(make_client: MakeClient) -> None:
    client = make_client(api_keys=KEY)
    key = {'Authorization': f'Bearer {KEY}'}
    created = upload(client, **key).json
    image_id = created['id']
    nobody = patch(client, image_id, {'alt': 'nobody'})
    assert nobody.status_code == 401
    assert nobody.headers['WWW-Authenticate'].startswith('Bearer')
    assert patch(client, image_id, {'alt': 'x'}, Authorization='Bearer guess').status_code == 403
    token = {'Authorization': f'Bearer {created["delete_token"]}'}
    assert patch(client, image_id, {'alt': 'by token'}, **token).json['alt'] == 'by token'
    assert patch(client, image_id, {'alt': 'by key'}, **key).json['alt'] == 'by key'
    listed = client.simulate_get('/images', headers=key).json
    assert [d['alt'] for d in listed] == ['by key']


def test_another_worker_sees_the_change(
    make_config: Callable[..., Any], make_client: MakeClient
) -> None:
    config = make_config()
    first, second = make_client(config), make_client(make_config(storage_path=config.storage_path))
    image_id = upload(first).json['id']
    assert second.simulate_get('/images').json[0]['alt'] == ''
    assert patch(first, image_id, {'alt': HERON}).status_code == 200
    assert second.simulate_get('/images').json[0]['alt'] == HERON
    assert f'alt="{HERON}"' in second.simulate_get(f'/view/{image_id}').text
