"""HTTP the way clients and caches expect, checked over real gunicorn and a real Redis:
validators and 304, HEAD, pagination links, health and the OpenAPI document."""

from __future__ import annotations

import json
import pathlib
import socket
from collections.abc import Iterator

import pytest

from support.gunicorn import Gunicorn
from support.http import get, multipart, post, request
from support.imagegen import image_bytes
from support.redis import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(scope='module')
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    with RedisServer() as redis_server:
        storage = tmp_path_factory.mktemp('storage')
        with Gunicorn(storage, workers=2, redis_url=redis_server.url) as gunicorn:
            yield gunicorn


@pytest.fixture(scope='module')
def images(server: Gunicorn) -> list[dict]:
    """Three uploads, the first as a browser form, the others raw."""
    photo = image_bytes('JPEG', seed=1)
    body, content_type = multipart('image', 'IMG_0001.JPG', photo, 'image/jpeg')
    uploaded = [post(server.url + '/images', body, content_type)]
    uploaded += [post(server.url + '/images', image_bytes('PNG', seed=seed)) for seed in (2, 3)]
    for response in uploaded:
        assert response.status == 201, response.body
        assert response.header('Location') == response.json()['image']
        assert response.header('Content-Type') == 'application/json'
    return [response.json() for response in uploaded]


@pytest.mark.parametrize('kind', ['image', 'thumbnail'])
def test_validators_and_304_over_http(server: Gunicorn, images: list[dict], kind: str) -> None:
    path = images[0]['image'] if kind == 'image' else images[0]['thumbnails'][0]
    first = get(server.url + path)
    assert first.status == 200
    assert first.header('Cache-Control') == 'public, max-age=31536000, immutable'
    assert int(first.header('Content-Length')) == len(first.body)
    etag, last_modified = first.header('ETag'), first.header('Last-Modified')

    # New connections: whichever worker answers, and from the cache once it holds it.
    for _ in range(4):
        by_tag = get(server.url + path, {'If-None-Match': etag})
        assert by_tag.status == 304
        assert by_tag.body == b''
        assert by_tag.header('ETag') == etag
        by_date = get(server.url + path, {'If-Modified-Since': last_modified})
        assert by_date.status == 304
    if kind == 'thumbnail':
        assert by_tag.header('X-Look-Cache') == 'Hit'


def test_head_matches_get_over_http(server: Gunicorn, images: list[dict]) -> None:
    image = images[1]
    for path in ('/images', image['image'], image['thumbnails'][-1], '/health', '/openapi.json'):
        got = get(server.url + path)
        head = request('HEAD', server.url + path)
        assert head.status == got.status == 200, path
        assert head.body == b'', path
        assert head.header('Content-Length') == str(len(got.body)), path
        for name in ('Content-Type', 'ETag', 'Last-Modified', 'Cache-Control'):
            assert head.header(name) == got.header(name), (path, name)


def test_pages_follow_link_headers_over_http(server: Gunicorn, images: list[dict]) -> None:
    seen, path = [], '/images?limit=2'
    while path:
        page = get(server.url + path)
        assert page.status == 200
        seen += [image['id'] for image in page.json()]
        link = page.header('Link')
        path = link.split(';')[0].strip('<> ') if link else ''
    assert seen == [image['id'] for image in images]


def test_delete_then_every_address_is_gone(server: Gunicorn, images: list[dict]) -> None:
    image = images[2]
    for path in image['thumbnails']:
        assert get(server.url + path).status == 200  # cached now
    assert request('DELETE', server.url + image['image']).status == 204
    for path in [image['image'], *image['thumbnails']]:
        for _ in range(3):
            assert get(server.url + path).status == 404, path
    files = [p.name for p in pathlib.Path(server.storage_path, 'images').iterdir()]
    assert f'{image["id"]}.jpeg' not in files


def test_health_and_openapi_over_http(server: Gunicorn) -> None:
    health = get(server.url + '/health')
    assert health.status == 200
    assert health.json()['cache'] == {'status': 'ok'}
    document = json.loads(get(server.url + '/openapi.json').body)
    assert document['openapi'] == '3.1.0'
    error = get(server.url + '/no/such/thing')
    assert error.status == 404
    assert set(error.json()) == {'title', 'description'}


def test_broken_chunked_framing_is_400_not_500(server: Gunicorn) -> None:
    """gunicorn's parser refuses the body only when look reads it; the client hears why."""
    with socket.create_connection(('127.0.0.1', server.port), timeout=10) as sock:
        sock.sendall(
            b'POST /images HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n'
            b'zz\r\nnot a chunk size\r\n0\r\n\r\n'
        )
        answer = b''
        while not answer.rstrip().endswith(b'}'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 400'), answer
    assert set(json.loads(body)) == {'title', 'description'}


def test_a_form_with_two_image_fields_stores_the_first_and_answers(server: Gunicorn) -> None:
    """The rest of the form is read too, so a client still sending it sees the 201.

    Answering when the first field was read left a client that was still
    sending the second one (a 6 MiB bitmap here) with a reset connection.
    """
    first = image_bytes('PNG', (320, 200), seed=4)
    second = image_bytes('BMP', (1600, 1300), seed=5)  # larger than a socket buffer
    one, content_type = multipart('image', 'first.png', first, 'image/png', boundary='twice')
    two, _ = multipart('image', 'second.bmp', second, 'image/bmp', boundary='twice')
    body = one.removesuffix(b'--twice--\r\n') + two

    with socket.create_connection(('127.0.0.1', server.port), timeout=30) as client:
        head = (
            f'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n'
            f'Content-Length: {len(body)}\r\nConnection: close\r\n\r\n'
        )
        client.sendall(head.encode() + body)  # as curl does: all of it, then the answer
        answer = b''.join(iter(lambda: client.recv(65536), b''))

    status_line, _, rest = answer.partition(b'\r\n')
    assert status_line == b'HTTP/1.1 201 Created', answer[:300]
    created = json.loads(rest.partition(b'\r\n\r\n')[2])
    assert created['size'] == [320, 200]
    assert get(server.url + created['image']).status == 200
