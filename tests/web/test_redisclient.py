"""The thumbnail cache against a real redis-server, through the whole app in-process.

fakeredis shows the middleware's logic elsewhere; these are the promises only a
real server can break: what is stored and for how long, a server that dies
mid-run and comes back on its own, one that was never there, and garbage in a key.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator

import falcon.testing
import msgpack
import pytest
import redis
from PIL import Image

from look.app import create_app
from look.config import Config
from look.imaging import pool as thumbnailer
from look.web.cache import PURGED_MARKER
from look.web.redisclient import getter, limit_waits

from support.client import upload
from support.imagegen import image_bytes
from support.redis import RedisServer

pytestmark = pytest.mark.redis

MakeApp = Callable[[str], falcon.testing.TestClient]

TTL = 1234
# Headers a cache hit must give back, so conditional requests work from the cache.
VALIDATORS = ('ETag', 'Last-Modified', 'Cache-Control')
# RedisCache's default: after a failure, Redis is left alone this long.
RETRY_INTERVAL = 5.0
# A bound on "never hangs on a dead cache", not a performance target.
PROMPT = 2.0


@pytest.fixture
def make_app(tmp_path: pathlib.Path) -> Iterator[MakeApp]:
    """Return a factory of TestClients of apps on fresh storage, cached in Redis at a URL."""
    numbers = itertools.count()
    clients: list[redis.Redis] = []

    def redis_from_url(url: str) -> redis.Redis:
        client = redis.Redis.from_url(url)
        clients.append(client)
        return client

    def make(redis_url: str) -> falcon.testing.TestClient:
        config = Config(
            environ={},
            storage_path=tmp_path / f'storage-{next(numbers)}',
            redis_url=redis_url,
            redis_from_url=redis_from_url,
            processes=1,
            allowed_hosts=(falcon.testing.helpers.DEFAULT_HOST,),
            cache_ttl=TTL,
        )
        return falcon.testing.TestClient(create_app(config))

    yield make
    for client in clients:
        client.close()
    thumbnailer.close_all()


@pytest.fixture
def inspector(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of its own, to look at what the app stored."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


JPEG = image_bytes('JPEG')  # a seeded 640x360 photo


def timed_get(client: falcon.testing.TestClient, path: str) -> falcon.testing.Result:
    """GET ``path``, failing (rather than hanging) unless the answer comes promptly."""
    background = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return background.submit(client.simulate_get, path).result(timeout=PROMPT)
    except concurrent.futures.TimeoutError:
        pytest.fail(f'{path} took over {PROMPT}s')
    finally:
        # NOTE: not waiting: a hung request is left to finish once Redis is back.
        background.shutdown(wait=False)


def check_thumbnail(result: falcon.testing.Result, path: str, cache: str) -> None:
    """Assert a 200 thumbnail: a JPEG of the size in its path, and the cache's verdict."""
    assert result.status_code == 200, result.text
    assert result.headers['Content-Type'] == 'image/jpeg'
    assert result.headers['X-Look-Cache'] == cache
    image = Image.open(io.BytesIO(result.content))
    image.load()
    width, height = path.removesuffix('.jpeg').rsplit('/', 1)[1].split('x')
    assert (image.format, image.size) == ('JPEG', (int(width), int(height)))


def wait_for_hit(client: falcon.testing.TestClient, path: str) -> bool:
    """Request a thumbnail until the cache answers it, for twice the retry interval."""
    deadline = time.monotonic() + 2 * RETRY_INTERVAL
    while time.monotonic() < deadline:
        result = timed_get(client, path)
        verdict = result.headers['X-Look-Cache']
        check_thumbnail(result, path, verdict)
        if verdict == 'Hit':
            return True
        time.sleep(0.2)
    return False


def cache_key(path: str) -> str:
    """Return the Redis key of a cached path (RedisCache's default prefix)."""
    return f'look:{path}'


def check_entry(raw: bytes | None, result: falcon.testing.Result) -> None:
    """Assert a stored entry is msgpack [content type, body, validators, variant] of ``result``."""
    assert raw is not None, 'nothing was cached'
    content_type, body, validators, variant = msgpack.unpackb(raw, raw=False)
    assert content_type == result.headers['Content-Type']
    assert body == result.content
    assert validators == {name: result.headers[name] for name in VALIDATORS}
    assert variant == 'q85:m64'  # the settings it was made under: look's defaults


def test_miss_then_hit(make_app: MakeApp, redis_server: RedisServer) -> None:
    """The first request renders and stores; the next is answered from Redis, same bytes."""
    client = make_app(redis_server.url)
    path = upload(client, JPEG)['thumbnails'][0]

    miss = client.simulate_get(path)
    check_thumbnail(miss, path, 'Miss')
    hit = client.simulate_get(path)
    check_thumbnail(hit, path, 'Hit')
    assert hit.content == miss.content
    for name in VALIDATORS:
        assert hit.headers[name] == miss.headers[name]


def test_entry_is_msgpack_with_the_ttl(
    make_app: MakeApp, redis_server: RedisServer, inspector: redis.Redis
) -> None:
    """Only a rendered thumbnail is stored: msgpack, living cache_ttl seconds."""
    client = make_app(redis_server.url)
    created = upload(client, JPEG)
    path = created['thumbnails'][0]
    assert client.simulate_get('/images').status_code == 200
    assert client.simulate_get(created['image']).status_code == 200
    unlisted = path.replace('.jpeg', '0.jpeg')
    assert client.simulate_get(unlisted).status_code == 404

    miss = client.simulate_get(path)
    check_thumbnail(miss, path, 'Miss')

    key = cache_key(path)
    assert inspector.keys('*') == [key.encode()]
    check_entry(inspector.get(key), miss)
    assert TTL - 10 <= inspector.ttl(key) <= TTL


def test_redis_killed_mid_run_then_back(make_app: MakeApp, redis_server: RedisServer) -> None:
    """A dead Redis costs nothing but the cache; when it is back, caching resumes by itself."""
    client = make_app(redis_server.url)
    path = upload(client, JPEG)['thumbnails'][0]
    check_thumbnail(client.simulate_get(path), path, 'Miss')
    check_thumbnail(client.simulate_get(path), path, 'Hit')

    redis_server.kill()
    for _ in range(5):
        check_thumbnail(timed_get(client, path), path, 'Miss')

    redis_server.restart()
    # The restarted server is empty: a Hit means the app stored the entry again.
    assert wait_for_hit(client, path), f'no Hit within {2 * RETRY_INTERVAL}s of the restart'


def test_redis_hung_mid_run_then_back(make_app: MakeApp, redis_server: RedisServer) -> None:
    """A Redis that accepts but never answers costs one short timeout, not a hung request."""
    client = make_app(redis_server.url)
    path = upload(client, JPEG)['thumbnails'][0]
    check_thumbnail(client.simulate_get(path), path, 'Miss')

    redis_server.pause()
    try:
        for _ in range(5):
            check_thumbnail(timed_get(client, path), path, 'Miss')
    finally:
        redis_server.resume()

    assert wait_for_hit(client, path), f'no Hit within {2 * RETRY_INTERVAL}s of resuming'


def test_a_kept_connection_the_server_closed_is_replaced(
    redis_server: RedisServer, inspector: redis.Redis
) -> None:
    """A GET's connection closed while it waited (a client timeout, say) costs no failure."""
    client = redis.Redis.from_url(redis_server.url)
    limit_waits(client, 0.25)
    get = getter(client)
    inspector.set('entry', b'bytes')
    assert get('entry') == b'bytes'

    assert inspector.client_kill_filter(skipme=True) == 1  # the one the GET kept

    assert get('entry') == b'bytes'
    client.close()


def test_unreachable_at_start(make_app: MakeApp) -> None:
    """An app whose Redis never existed starts, uploads and serves thumbnails, uncached."""
    client = make_app(f'unix:///tmp/look-no-redis-{uuid.uuid4().hex}/redis.sock')
    created = upload(client, JPEG)
    for path in created['thumbnails'] * 2:
        check_thumbnail(timed_get(client, path), path, 'Miss')

    health = timed_get(client, '/health')
    assert health.status_code == 200, health.text
    assert health.json['cache']['status'] == 'unavailable'


GARBAGE = {
    'not-msgpack': b'\xc1 this is not msgpack',
    'truncated': msgpack.packb(['image/jpeg', b'\xff\xd8' * 100])[:50],
    'too-short': msgpack.packb(['image/jpeg']),
    'not-a-list': msgpack.packb({'content_type': 'image/jpeg', 'body': b'\xff\xd8'}),
    'text-body': msgpack.packb(['image/jpeg', 'not bytes', {}]),
    'foreign-header': msgpack.packb(['text/html', b'<p>hi</p>', {'Set-Cookie': 'session=1'}]),
}


@pytest.mark.parametrize('garbage', GARBAGE.values(), ids=GARBAGE.keys())
def test_corrupt_entry_is_ignored_and_replaced(
    make_app: MakeApp, redis_server: RedisServer, inspector: redis.Redis, garbage: bytes
) -> None:
    """Garbage under a thumbnail's key is never served; a good entry takes its place."""
    client = make_app(redis_server.url)
    path = upload(client, JPEG)['thumbnails'][0]
    inspector.set(cache_key(path), garbage)

    result = client.simulate_get(path)
    check_thumbnail(result, path, 'Miss')
    assert 'Set-Cookie' not in result.headers
    check_entry(inspector.get(cache_key(path)), result)

    again = client.simulate_get(path)
    check_thumbnail(again, path, 'Hit')
    assert again.content == result.content


def test_render_finishing_after_a_delete_is_not_cached(
    make_app: MakeApp, redis_server: RedisServer, inspector: redis.Redis
) -> None:
    """A render under way when its image is deleted must not put the thumbnail back.

    DELETE purges the cached paths, but a render that ends after the purge
    would store the deleted image again, served as a Hit for cache_ttl.
    """
    client = make_app(redis_server.url)
    data = image_bytes('JPEG', (6000, 4000))  # a render slow enough to delete during
    for _ in range(3):
        created = upload(client, data)
        path = created['thumbnails'][0]
        started = time.monotonic()
        check_thumbnail(client.simulate_get(path), path, 'Miss')
        render_time = time.monotonic() - started
        inspector.delete(cache_key(path))

        with concurrent.futures.ThreadPoolExecutor(1) as background:
            rendering = background.submit(client.simulate_get, path)
            # NOTE: a third of a render in, the pool process has the file open.
            time.sleep(render_time / 3)
            assert client.simulate_delete(created['image']).status_code == 204
            rendering.result()

        assert inspector.get(cache_key(path)) in (None, PURGED_MARKER), (
            'the deleted thumbnail was cached again'
        )
        after = client.simulate_get(path)
        assert after.status_code == 404, f'served after the delete: {after.headers}'
