"""Animations over real gunicorn: kept, served, animated thumbnails, refused, deleted everywhere.

One host on local disk with a real redis-server; then hosts on SeaweedFS and
PostgreSQL, whose bucket is read behind look's back.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
from collections.abc import Iterator

import pytest
import redis
from PIL import Image

from look.core.imagestore.s3 import parse_images_url
from look.web.cache import HANDOFF_SECONDS, PURGED_MARKER

from support.gunicorn import Gunicorn, list_ids, upload
from support.http import Response, get, request
from support.imagegen import animation, frame_bomb_gif, image_bytes, moving_picture
from support.postgres import PostgresDatabase
from support.processes import wait_until
from support.proxy import TcpProxy
from support.redis import RedisServer
from support.seaweed import SeaweedServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

DURATIONS = [50, 100, 150, 200]
# Redis keeps thumbnails up to this size; larger ones go to the host's disk.
CACHE_MAX_BYTES = 4096


def frames_of(data: bytes) -> list[int]:
    """Return the duration of every frame of an image (one frame: [None] or [0])."""
    with Image.open(io.BytesIO(data)) as image:
        durations = []
        for index in range(getattr(image, 'n_frames', 1)):
            image.seek(index)
            image.load()  # a WebP's duration is known once its frame is
            durations.append(image.info.get('duration'))
    return durations


def check_error(response: Response, status: int) -> dict[str, str]:
    assert response.status == status, response.body
    assert response.header('Content-Type') == 'application/json'
    body = response.json()
    assert set(body) == {'title', 'description'}, body
    return dict(body)


@pytest.fixture(scope='module')
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope='module')
def server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Gunicorn]:
    """look at its default settings, but for Redis keeping only small thumbnails."""
    storage = tmp_path_factory.mktemp('storage')
    environ = {'LOOK_CACHE_MAX_BYTES': str(CACHE_MAX_BYTES)}
    with Gunicorn(storage, workers=2, redis_url=redis_server.url, environ=environ) as gunicorn:
        yield gunicorn


@pytest.mark.parametrize('fmt', ['GIF', 'WEBP', 'PNG'])
def test_an_animation_keeps_its_frames_over_http(server: Gunicorn, fmt: str) -> None:
    created = upload(server, animation(fmt, (256, 192), frames=4, durations=DURATIONS, loop=0))

    assert created['animation'] == {
        'frames': 4,
        'duration_ms': 500,
        'url': f'/images/{created["id"]}.webp',
    }
    listed = get(f'{server.url}/images?order=newest&limit=1').json()
    assert listed[0]['animation'] == created['animation']
    served = get(server.url + created['animation']['url'])
    assert served.status == 200
    assert served.header('Content-Type') == 'image/webp'
    assert frames_of(served.body) == DURATIONS
    assert len(frames_of(get(server.url + created['image']).body)) == 1


def test_the_animation_has_validators_304_and_head_over_http(server: Gunicorn) -> None:
    created = upload(server, animation('GIF', frames=3))
    url = server.url + created['animation']['url']
    first = get(url)
    jpeg = get(server.url + created['image'])
    etag = first.header('ETag')
    assert etag and etag != jpeg.header('ETag')
    assert first.header('Cache-Control') == jpeg.header('Cache-Control')
    assert int(first.header('Content-Length') or 0) == len(first.body)

    for _ in range(4):  # new connections: whichever worker answers
        by_tag = get(url, {'If-None-Match': etag})
        assert by_tag.status == 304
        assert by_tag.body == b''
        by_date = get(url, {'If-Modified-Since': first.header('Last-Modified') or ''})
        assert by_date.status == 304
    head = request('HEAD', url)
    assert head.status == 200
    assert head.body == b''
    for name in ('Content-Length', 'Content-Type', 'ETag', 'Last-Modified', 'Cache-Control'):
        assert head.header(name) == first.header(name), name


def test_a_still_image_has_no_animation_and_its_webp_is_404_over_http(server: Gunicorn) -> None:
    for data in (image_bytes('PNG'), animation('GIF', frames=1)):
        created = upload(server, data)
        assert 'animation' not in created
        check_error(get(f'{server.url}/images/{created["id"]}.webp'), 404)
        assert request('HEAD', f'{server.url}/images/{created["id"]}.webp').status == 404


def test_a_percent_escaped_webp_address_is_404_over_http(server: Gunicorn) -> None:
    created = upload(server, animation('GIF', frames=3))

    body = check_error(get(f'{server.url}/images/{created["id"]}%2Ewebp'), 404)

    assert f'Did you mean /images/{created["id"]}.webp?' in body['description']


@pytest.mark.parametrize('format', ['webp', 'avif'])
def test_webp_and_avif_thumbnails_are_animated_and_cached_over_http(
    server: Gunicorn, format: str
) -> None:
    created = upload(server, animation('GIF', (256, 192), frames=4, durations=DURATIONS))
    smallest = created['thumbnails'][-1].replace('.jpeg', f'.{format}')

    first = get(server.url + smallest)
    again = get(server.url + smallest)

    assert first.status == again.status == 200
    assert first.header('Content-Type') == f'image/{format}'
    assert frames_of(first.body) == DURATIONS
    assert again.body == first.body
    assert first.header('X-Look-Cache') == 'Miss'
    assert again.header('X-Look-Cache') == 'Hit'
    jpeg = get(server.url + created['thumbnails'][-1])
    assert len(frames_of(jpeg.body)) == 1


def test_a_delete_removes_the_animation_its_thumbnails_and_their_cache_entries(
    server: Gunicorn, redis_server: RedisServer
) -> None:
    created = upload(server, moving_picture((480, 270), frames=30))
    image_id = created['id']
    paths = [
        path.replace('.jpeg', f'.{format}')
        for path in created['thumbnails']
        for format in ('jpeg', 'webp', 'avif')
    ]
    rendered = {path: get(server.url + path) for path in paths}
    assert all(response.status == 200 for response in rendered.values())
    assert frames_of(rendered[paths[1]].body) == [40] * 30
    client = redis.Redis.from_url(redis_server.url)
    try:
        cached = [key for key in client.scan_iter() if image_id.encode() in key]
        assert any(client.get(key) not in (None, PURGED_MARKER) for key in cached)
        large = [
            name
            for name in os.listdir(server.storage_path / 'renditions')
            if name.startswith(image_id)
        ]
        # The animated 240x135 WebP is larger than Redis keeps: it is on the host's disk.
        assert large, 'no thumbnail of the animation was kept on disk'
        assert (server.storage_path / 'images' / f'{image_id}.webp').exists()

        deleted = request(
            'DELETE',
            server.url + created['image'],
            headers={'Authorization': f'Bearer {created["delete_token"]}'},
        )

        assert deleted.status == 204
        check_error(get(server.url + created['animation']['url']), 404)
        for path in paths:
            assert get(server.url + path).status == 404, path
        assert not [
            name for name in os.listdir(server.storage_path / 'images') if image_id in name
        ]
        assert not [
            name
            for name in os.listdir(server.storage_path / 'renditions')
            if name.startswith(image_id)
        ]
        # Every entry of its thumbnails is purged (marked, so no late fill revives it);
        # a large one handed to waiters lapses within seconds.
        entries = [key for key in client.scan_iter() if image_id.encode() in key]
        assert entries
        for key in entries:
            if b':handoff:' in key:
                assert 0 < client.ttl(key) <= HANDOFF_SECONDS, key
            else:
                assert client.get(key) == PURGED_MARKER, key
    finally:
        client.close()


def test_a_frame_bomb_is_413_and_an_ordinary_gif_beside_it_is_stored(
    server: Gunicorn,
) -> None:
    before = sorted(os.listdir(server.storage_path / 'images'))

    refused = request('POST', f'{server.url}/images', frame_bomb_gif())

    body = check_error(refused, 413)
    assert 'frames of 2000x2000' in body['description']
    assert sorted(os.listdir(server.storage_path / 'images')) == before
    assert not [name for name in os.listdir(server.storage_path / 'spool') if 'animation' in name]
    stored = upload(server, moving_picture((480, 270), frames=60))
    assert stored['animation']['frames'] == 60


def test_four_people_uploading_ordinary_gifs_at_once_are_all_stored(server: Gunicorn) -> None:
    """Each GIF costs most of a second of an image process: four at once still fit the queue."""
    gif = moving_picture((480, 270), frames=60)
    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        created = list(clients.map(lambda _: upload(server, gif), range(4)))

    assert [image['animation']['frames'] for image in created] == [60] * 4
    assert {image['id'] for image in created} <= set(list_ids(server))


def test_the_budget_setting_is_honoured_on_both_sides(
    tmp_path: pathlib.Path,
) -> None:
    data = animation('GIF', (100, 100), frames=10)
    environ = {'LOOK_MAX_ANIMATION_PIXELS': '100000'}
    with Gunicorn(tmp_path / 'at', workers=1, environ=environ) as at:
        assert upload(at, data)['animation']['frames'] == 10
    environ = {'LOOK_MAX_ANIMATION_PIXELS': '99999'}
    with Gunicorn(tmp_path / 'under', workers=1, environ=environ) as under:
        check_error(request('POST', f'{under.url}/images', data), 413)
        assert list_ids(under) == []


# -- on SeaweedFS and PostgreSQL --------------------------------------------------------------


def shared_environ(seaweed: SeaweedServer, postgres: PostgresDatabase, endpoint: str) -> dict:
    name = f'a{os.urandom(5).hex()}'
    return {
        **seaweed.environ,
        'AWS_ENDPOINT_URL_S3': endpoint,
        'LOOK_IMAGES_URL': f's3://look-tests/{name}',
        'LOOK_INDEX_URL': postgres.create_schema(name),
    }


def bucket_names(seaweed: SeaweedServer, environ: dict[str, str]) -> set[str]:
    """Return the names of the objects under images/, read from SeaweedFS itself."""
    bucket, prefix = parse_images_url(environ['LOOK_IMAGES_URL'])
    client = seaweed.client()
    try:
        pages = client.get_paginator('list_objects_v2').paginate(
            Bucket=bucket, Prefix=f'{prefix}images/'
        )
        return {
            item['Key'].rsplit('/', 1)[1] for page in pages for item in page.get('Contents', ())
        }
    finally:
        client.close()


@pytest.fixture(scope='module')
def store_proxy(seaweed: SeaweedServer) -> Iterator[TcpProxy]:
    port = int(seaweed.endpoint_url.rsplit(':', 1)[1].rstrip('/'))
    with TcpProxy('127.0.0.1', port) as proxy:
        yield proxy


@pytest.fixture(scope='module')
def shared(
    seaweed: SeaweedServer,
    postgres: PostgresDatabase,
    store_proxy: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gunicorn, Gunicorn, dict[str, str]]]:
    """Two hosts of one deployment, each with its own disk, the store behind a proxy."""
    environ = shared_environ(seaweed, postgres, f'http://127.0.0.1:{store_proxy.port}')
    with (
        Gunicorn(tmp_path_factory.mktemp('first'), workers=2, environ=environ) as first,
        Gunicorn(tmp_path_factory.mktemp('second'), workers=2, environ=environ) as second,
    ):
        yield first, second, environ


def test_an_animation_is_stored_served_and_deleted_on_the_shared_backends(
    shared: tuple[Gunicorn, Gunicorn, dict[str, str]], seaweed: SeaweedServer
) -> None:
    first, second, environ = shared
    created = upload(first, animation('GIF', (256, 192), frames=4, durations=DURATIONS))
    image_id = created['id']

    assert {f'{image_id}.jpeg', f'{image_id}.webp'} <= bucket_names(seaweed, environ)
    # The other host fetches it from the store.
    served = get(second.url + created['animation']['url'])
    assert served.status == 200
    assert frames_of(served.body) == DURATIONS
    thumbnail = get(second.url + created['thumbnails'][0].replace('.jpeg', '.webp'))
    assert frames_of(thumbnail.body) == DURATIONS

    deleted = request(
        'DELETE',
        second.url + created['image'],
        headers={'Authorization': f'Bearer {created["delete_token"]}'},
    )

    assert deleted.status == 204
    assert not {name for name in bucket_names(seaweed, environ) if image_id in name}
    for host in (first, second):
        check_error(get(host.url + created['animation']['url']), 404)


def test_a_delete_while_the_store_is_down_removes_the_animation_once_it_is_back(
    shared: tuple[Gunicorn, Gunicorn, dict[str, str]],
    seaweed: SeaweedServer,
    store_proxy: TcpProxy,
) -> None:
    first, _, environ = shared
    created = upload(first, animation('GIF', frames=3))
    image_id = created['id']

    store_proxy.cut()
    try:
        deleted = request(
            'DELETE',
            first.url + created['image'],
            headers={'Authorization': f'Bearer {created["delete_token"]}'},
        )
        assert deleted.status == 204
        assert get(first.url + created['animation']['url']).status == 404
    finally:
        store_proxy.mend()

    assert wait_until(
        lambda: not {name for name in bucket_names(seaweed, environ) if image_id in name}, 60, 0.1
    )
