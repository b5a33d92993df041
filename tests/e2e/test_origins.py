"""Hosts, origins and spellings, as browsers, proxies and caches send them to real gunicorn.

make run's default: no keys, on loopback. A page elsewhere must not drive it,
through DNS rebinding (its own name, resolving to 127.0.0.1) or a form that
posts across sites; curl, scripts and look's own pages go on as before.
Every answer says nosniff, and Vary: Origin where CORS answers differ by
origin; a percent-escaped spelling of an address is no second address.
"""

from __future__ import annotations

import html.parser
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from support.gunicorn import Gunicorn, MakeGunicorn, list_ids, upload
from support.http import Response, get, multipart, request
from support.imagegen import image_bytes
from support.redis import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

APP = 'https://app.example.com'  # LOOK_CORS_ORIGINS of the shared server
KEY = 'origins-test-key-0123456789'
PHOTO = image_bytes('JPEG', (640, 360), seed=3)


@pytest.fixture(scope='module')
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """make run's settings (no keys, loopback), a real Redis, and one origin listed for CORS."""
    storage = tmp_path_factory.mktemp('storage')
    with (
        RedisServer() as redis,
        Gunicorn(
            storage, workers=2, redis_url=redis.url, environ={'LOOK_CORS_ORIGINS': APP}
        ) as gunicorn,
    ):
        yield gunicorn


def check_error(response: Response, status: int) -> dict[str, str]:
    assert response.status == status, response.body[:300]
    assert response.header('Content-Type') == 'application/json'
    assert response.header('X-Content-Type-Options') == 'nosniff'
    document: dict[str, str] = response.json()
    assert set(document) == {'title', 'description'}
    return document


def as_host(server: Gunicorn, host: str, **headers: str) -> dict[str, str]:
    return {'Host': host.format(port=server.port), **headers}


# -- the Host ------------------------------------------------------------------------------


def test_a_rebound_name_reaches_nothing_and_loopback_names_reach_everything(
    server: Gunicorn,
) -> None:
    """DNS rebinding: a page at rebind.evil.example, whose name now resolves to 127.0.0.1."""
    image = upload(server, PHOTO)
    rebound = as_host(server, 'rebind.evil.example:{port}')

    check_error(request('GET', f'{server.url}/images', headers=rebound), 421)
    check_error(request('DELETE', f'{server.url}{image["image"]}', headers=rebound), 421)
    check_error(request('POST', f'{server.url}/images', PHOTO, rebound), 421)
    check_error(request('GET', f'{server.url}{image["image"]}', headers=rebound), 421)

    for host in ('127.0.0.1:{port}', 'localhost:{port}', '[::1]:{port}', 'localhost'):
        headers = as_host(server, host)
        assert request('GET', f'{server.url}/images', headers=headers).status == 200, host
        assert request('GET', f'{server.url}/health', headers=headers).status == 200, host
    assert image['id'] in list_ids(server)


def test_listed_names_are_answered_and_a_public_url_names_the_pages(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path
) -> None:
    """With keys set, a list is kept to; pages name themselves by LOOK_PUBLIC_URL, not Host."""
    server = make_gunicorn(
        tmp_path / 'storage',
        environ={
            'LOOK_API_KEYS': KEY,
            'LOOK_ALLOWED_HOSTS': '.example.org',
            'LOOK_PUBLIC_URL': 'https://photos.example.org',
        },
    )
    bearer = {'Authorization': f'Bearer {KEY}'}
    image = upload(server, PHOTO, bearer)

    for host in ('photos.example.org', 'Photos.Example.org.:8443', 'example.org'):
        listed = request('GET', f'{server.url}/images', headers={'Host': host, **bearer})
        assert listed.status == 200, host
    check_error(request('GET', f'{server.url}/images', headers={'Host': 'example.com'}), 421)

    page = request(
        'GET', f'{server.url}/view/{image["id"]}', headers={'Host': 'photos.example.org'}
    )
    assert meta(page, 'og:url') == f'https://photos.example.org/view/{image["id"]}'


def test_an_unlisted_host_never_ends_up_in_a_page(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path
) -> None:
    """Keys set, no list: any Host is answered, but a cache in front gets no page naming it."""
    server = make_gunicorn(tmp_path / 'storage', environ={'LOOK_API_KEYS': KEY})
    image = upload(server, PHOTO, {'Authorization': f'Bearer {KEY}'})
    view = f'{server.url}/view/{image["id"]}'

    poisoned = request('GET', view, headers={'Host': 'poison.example'})
    assert poisoned.status == 200
    assert b'poison.example' not in poisoned.body
    assert meta(poisoned, 'og:url') is None and meta(poisoned, 'og:image') is None
    assert meta(get(view), 'og:url') == f'{server.url}/view/{image["id"]}'


class Metas(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        name = named.get('property') or named.get('name')
        if tag == 'meta' and name and named.get('content') is not None:
            self.found[name] = named['content'] or ''


def meta(page: Response, name: str) -> str | None:
    assert page.status == 200, page.body[:300]
    parser = Metas()
    parser.feed(page.body.decode())
    return parser.found.get(name)


# -- writes from other sites ------------------------------------------------------------------


def form_post(server: Gunicorn, headers: dict[str, str]) -> Response:
    """POST /images as an HTML form does, with ``headers`` of the page it was sent from."""
    body, content_type = multipart('file', 'photo.jpg', PHOTO, 'image/jpeg')
    return request('POST', f'{server.url}/images', body, {'Content-Type': content_type, **headers})


def test_a_cross_site_form_or_delete_is_refused_and_nothing_changes(server: Gunicorn) -> None:
    image = upload(server, PHOTO)
    before = list_ids(server)
    evil = {'Origin': 'https://evil.example', 'Sec-Fetch-Site': 'cross-site'}

    refused = [
        form_post(server, evil),
        form_post(server, {'Sec-Fetch-Site': 'cross-site'}),
        form_post(server, {'Origin': 'null'}),
        request('DELETE', f'{server.url}{image["image"]}', headers=evil),
    ]

    for response in refused:
        assert check_error(response, 403)['title'] == 'Cross-site request refused'
    assert list_ids(server) == before
    assert get(f'{server.url}{image["image"]}', headers=evil).status == 200  # reads are anyone's


def test_own_pages_listed_origins_and_curl_write_as_before(server: Gunicorn) -> None:
    own = {'Origin': server.url, 'Sec-Fetch-Site': 'same-origin'}
    listed = {'Origin': APP, 'Sec-Fetch-Site': 'cross-site'}

    for headers in (own, listed, {}):
        created = form_post(server, headers)
        assert created.status == 201, (headers, created.body)
        deleted = request('DELETE', f'{server.url}{created.json()["image"]}', headers=headers)
        assert deleted.status == 204, (headers, deleted.body)
    assert form_post(server, listed).header('Access-Control-Allow-Origin') == APP


# -- what every answer carries ----------------------------------------------------------------


def test_every_answer_says_nosniff_and_varies_by_origin(server: Gunicorn) -> None:
    """Cached thumbnails (Redis hits), 304s, errors, pages and static files alike."""
    image = upload(server, PHOTO)
    thumbnail = f'{server.url}{image["thumbnails"][0]}'
    miss = get(thumbnail, {'Origin': APP})
    hit = get(thumbnail, {'Origin': 'https://elsewhere.example'})
    page = get(f'{server.url}/view/{image["id"]}')
    style = re.search(rb'href="(/static/[^"]+\.css)"', page.body)
    assert style is not None
    answers: dict[str, Any] = {
        'miss': miss,
        'hit': hit,
        '304': get(thumbnail, {'If-None-Match': miss.header('ETag') or ''}),
        'negotiated': get(thumbnail.rpartition('.')[0], {'Accept': 'image/webp'}),
        'original': get(f'{server.url}{image["image"]}'),
        'list': get(f'{server.url}/images', {'Origin': APP}),
        'error': get(f'{server.url}/no/such/path', {'Origin': APP}),
        'page': page,
        'static': get(f'{server.url}{style[1].decode()}'),
        'health': get(f'{server.url}/health'),
    }

    assert (miss.header('X-Look-Cache'), hit.header('X-Look-Cache')) == ('Miss', 'Hit')
    assert miss.header('Access-Control-Allow-Origin') == APP
    assert hit.header('Access-Control-Allow-Origin') is None  # not the first asker's
    assert answers['304'].status == 304
    for kind, answer in answers.items():
        assert answer.header('X-Content-Type-Options') == 'nosniff', kind
        vary = [value.strip() for value in (answer.header('Vary') or '').split(',')]
        assert 'Origin' in vary, (kind, vary)


# -- one spelling of each address ---------------------------------------------------------------


def test_a_percent_escaped_spelling_of_a_thumbnail_is_404_naming_the_one_spelling(
    server: Gunicorn,
) -> None:
    image = upload(server, PHOTO)
    thumbnail = image['thumbnails'][0]
    stem, _, format = thumbnail.rpartition('.')
    image_id = image['id']

    for spelling in (
        f'{stem}%2E{format}',
        f'{stem}%2e{format}',
        thumbnail.replace(f'{image_id}/', f'{image_id}%2F'),
        thumbnail.replace(image_id, image_id[:8] + '%2D' + image_id[9:]),
        image['image'].replace('.jpeg', '%2Ejpeg'),
    ):
        answer = get(f'{server.url}{spelling}')
        description = check_error(answer, 404)['description']
        assert 'Did you mean /' in description, description
    assert get(f'{server.url}{thumbnail}').status == 200
