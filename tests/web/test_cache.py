"""RedisCache: Hit and Miss, what it stores, and serving on when Redis misbehaves.

The middleware is tested twice: on a tiny app of its own (it knows nothing of
images) and inside look through ``create_app``, with fakeredis for Redis.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import falcon
import msgpack
import pytest
import redis
from falcon.testing import TestClient
from PIL import Image

from look.config import Config
from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.imaging.renditions import thumbnail_sizes
from look.web.cache import CACHE_HEADER, PURGED_MARKER, Cacheable, RedisCache
from look.web.redisclient import getter, limit_waits

from support.imagegen import image_bytes
from support.storage import remove_jpeg

MakeClient = Callable[..., TestClient]
UPLOAD = image_bytes('PNG', size=(640, 360))


class Redis:
    """A stand-in Redis client that counts its calls and fails while ``down`` is set."""

    def __init__(self, backend: Any = None, error: type[Exception] = redis.ConnectionError):
        self.backend = backend if backend is not None else fakeredis.FakeRedis()
        self.error = error
        self.down = True
        self.calls: list[str] = []

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        if self.down:
            raise self.error('Connection refused')
        return getattr(self.backend, name)(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._call('get', *args, **kwargs)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        return self._call('set', *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._call('delete', *args, **kwargs)

    def mget(self, *args: Any, **kwargs: Any) -> Any:
        return self._call('mget', *args, **kwargs)

    def ping(self) -> Any:
        return self._call('ping')

    def pipeline(self, transaction: bool = True) -> Any:
        stand_in = self

        class Pipeline:
            def __init__(self) -> None:
                self.commands: list[tuple[Any, ...]] = []

            def set(self, *args: Any, **kwargs: Any) -> None:
                self.commands.append((args, kwargs))

            def execute(self) -> list[Any]:
                return [stand_in._call('set', *a, **k) for a, k in self.commands]

        return Pipeline()


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == 'JPEG'
        return image.size


# -- the middleware on its own ----------------------------------------------------


class Rendered:
    """A resource that says how often it was asked; 'missing' is a 404.

    Its answers under /thumbnails/ may be cached, under their path.
    """

    def __init__(self) -> None:
        self.calls = 0

    def cacheable(self, req: falcon.Request, name: str) -> Cacheable | None:
        if not req.path.startswith('/thumbnails/'):
            return None
        return Cacheable(f'/thumbnails/{name}', 'v1')

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self.calls += 1
        if name == 'missing':
            raise falcon.HTTPNotFound()
        resp.content_type = 'image/jpeg'
        resp.data = f'pixels of {name}'.encode()
        resp.etag = name

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self.calls += 1
        resp.data = b'posted'

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.context.stale_keys = [f'/thumbnails/{name}']
        resp.status = falcon.HTTP_204


def tiny_app(client: Any, **options: Any) -> tuple[TestClient, Rendered]:
    cache = RedisCache(lambda: client, ttl=60, **options)
    app = falcon.App(middleware=[cache])
    resource = Rendered()
    app.add_route('/thumbnails/{name}', resource)
    app.add_route('/other/{name}', resource)
    return TestClient(app), resource


def test_hit_does_not_reach_the_resource() -> None:
    client, resource = tiny_app(fakeredis.FakeRedis(server=fakeredis.FakeServer()))

    first = client.simulate_get('/thumbnails/a')
    second = client.simulate_get('/thumbnails/a')

    assert first.headers[CACHE_HEADER] == 'Miss'
    assert second.headers[CACHE_HEADER] == 'Hit'
    assert second.content == first.content == b'pixels of a'
    assert second.headers['Content-Type'] == 'image/jpeg'
    assert second.headers['ETag'] == first.headers['ETag']
    assert resource.calls == 1


def test_what_the_resource_keeps_elsewhere_is_asked_only_without_an_entry() -> None:
    """A miss that the resource answers from what it keeps is left to it: no fill, no Miss."""
    backend = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client, resource = tiny_app(backend, fill_timeout=1.0)
    asked: list[str] = []
    named = resource.cacheable

    def cacheable(req: falcon.Request, name: str) -> Cacheable | None:
        def kept_elsewhere() -> bool:
            asked.append(name)
            return name == 'kept'

        entry = named(req, name)
        assert entry is not None
        return dataclasses.replace(entry, kept_elsewhere=kept_elsewhere)

    resource.cacheable = cacheable  # type: ignore[method-assign]
    client.simulate_get('/thumbnails/a')
    assert client.simulate_get('/thumbnails/a').headers[CACHE_HEADER] == 'Hit'
    kept = [client.simulate_get('/thumbnails/kept') for _ in range(2)]

    assert asked == ['a', 'kept', 'kept']  # not for the hit
    assert [CACHE_HEADER in answer.headers for answer in kept] == [False, False]
    assert backend.keys('*') == [b'look:/thumbnails/a']  # no entry, no fill lock left
    assert resource.calls == 3


@pytest.mark.parametrize(
    ('method', 'path'), [('GET', '/other/a'), ('POST', '/thumbnails/a'), ('GET', '/thumbnails')]
)
def test_only_get_and_head_of_the_prefix_are_cached(method: str, path: str) -> None:
    backend = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client, _ = tiny_app(backend)

    for _ in range(2):
        response = client.simulate_request(method, path)
        assert response.headers.get(CACHE_HEADER) != 'Hit'

    assert backend.keys('*') == []


def test_errors_are_not_cached() -> None:
    backend = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    client, resource = tiny_app(backend)

    for _ in range(2):
        assert client.simulate_get('/thumbnails/missing').status_code == 404

    assert resource.calls == 2
    assert backend.keys('*') == []


def test_dead_redis_is_skipped_for_retry_interval_then_tried_again() -> None:
    failing = Redis()
    client, resource = tiny_app(failing, retry_interval=0.3)

    for _ in range(3):
        response = client.simulate_get('/thumbnails/a')
        assert response.status_code == 200
        assert response.headers[CACHE_HEADER] == 'Miss'
    assert len(failing.calls) == 1  # one timeout, then no waiting on a dead server

    time.sleep(0.35)
    failing.down = False
    client.simulate_get('/thumbnails/a')
    assert len(failing.calls) > 1

    assert client.simulate_get('/thumbnails/a').headers[CACHE_HEADER] == 'Hit'
    assert resource.calls == 4


def test_a_purge_that_found_redis_down_is_done_when_it_is_back() -> None:
    """A DELETE while Redis is unreachable must not leave the entry to be served later."""
    server = fakeredis.FakeServer()
    backend = fakeredis.FakeRedis(server=server)
    flaky = Redis(backend)
    flaky.down = False
    client, _ = tiny_app(flaky, retry_interval=0.2)
    client.simulate_get('/thumbnails/a')
    assert client.simulate_get('/thumbnails/a').headers[CACHE_HEADER] == 'Hit'

    flaky.down = True
    assert client.simulate_delete('/thumbnails/a').status_code == 204  # the purge failed
    flaky.down = False  # Redis is back, with the stale entry

    time.sleep(0.25)
    assert client.simulate_get('/thumbnails/a').headers[CACHE_HEADER] == 'Miss'
    # The purge was replayed: no client of this Redis (another worker) gets the entry.
    assert backend.get('look:/thumbnails/a') == PURGED_MARKER
    other_worker, _ = tiny_app(
        fakeredis.FakeRedis(server=backend.connection_pool.connection_kwargs['server'])
    )
    assert other_worker.simulate_get('/thumbnails/a').headers[CACHE_HEADER] == 'Miss'


# -- inside look ------------------------------------------------------------------
# NOTE: what the cache keeps, serves and purges for look's images runs on
#   both backends; what it does with a failing Redis or odd paths is the
#   same whichever backend is behind it, and runs once.

both_backends = pytest.mark.backends('local', 'shared')


@pytest.fixture
def inspect_redis(fake_redis_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """A second connection to the Redis the app uses."""
    return fakeredis.FakeRedis(server=fake_redis_server)


@both_backends
def test_miss_then_hit_with_the_same_thumbnail(client: TestClient) -> None:
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    miss, hit = client.simulate_get(url), client.simulate_get(url)

    assert (miss.headers[CACHE_HEADER], hit.headers[CACHE_HEADER]) == ('Miss', 'Hit')
    assert hit.content == miss.content
    assert jpeg_size(hit.content) == (320, 180)
    for header in ('Content-Type', 'ETag', 'Last-Modified', 'Cache-Control'):
        assert hit.headers[header] == miss.headers[header]


@both_backends
def test_hit_does_not_touch_the_store(client: TestClient, config: Config) -> None:
    upload = client.simulate_post('/images', body=UPLOAD).json
    url = upload['thumbnails'][1]
    rendered = client.simulate_get(url).content

    # Behind the app's back: the image file is gone.
    remove_jpeg(config, upload['id'])

    response = client.simulate_get(url)
    assert response.status_code == 200
    assert response.headers[CACHE_HEADER] == 'Hit'
    assert response.content == rendered


@both_backends
def test_entry_is_msgpack_of_type_and_body_with_the_ttl(
    make_client: MakeClient, inspect_redis: fakeredis.FakeRedis
) -> None:
    client = make_client(cache_ttl=120)
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]
    body = client.simulate_get(url).content

    (key,) = inspect_redis.keys('*')
    assert key.decode().endswith(url)
    entry = msgpack.unpackb(inspect_redis.get(key))
    assert entry[:2] == ['image/jpeg', body]
    assert 110 <= inspect_redis.ttl(key) <= 120


@pytest.mark.parametrize(
    'garbage',
    [
        pytest.param(b'\xc1\xc1 not msgpack', id='not-msgpack'),
        pytest.param(b'', id='empty'),
        pytest.param(msgpack.packb('image/jpeg'), id='string'),
        pytest.param(msgpack.packb({'image/jpeg': b'x'}), id='map'),
        pytest.param(msgpack.packb(['image/jpeg']), id='short'),
        pytest.param(msgpack.packb(['image/jpeg', 'text, not bytes']), id='str-body'),
        pytest.param(msgpack.packb([7, b'x']), id='int-type'),
        pytest.param(msgpack.packb(['image/jpeg', b'x', {'Set-Cookie': 'a=b'}]), id='header'),
        pytest.param(msgpack.packb(['image/jpeg', b'x', {'ETag': 5}]), id='int-header'),
        pytest.param(msgpack.packb(['image/jpeg', b'x', {}, 7]), id='int-variant'),
        pytest.param(msgpack.packb(['image/jpeg', b'x', {}, '', 'extra']), id='long'),
    ],
)
def test_corrupt_entry_is_ignored_and_replaced(
    client: TestClient, inspect_redis: fakeredis.FakeRedis, garbage: bytes
) -> None:
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]
    client.simulate_get(url)
    (key,) = inspect_redis.keys('*')
    inspect_redis.set(key, garbage)

    response = client.simulate_get(url)

    assert response.status_code == 200
    assert response.headers[CACHE_HEADER] == 'Miss'
    assert jpeg_size(response.content) == (320, 180)
    assert client.simulate_get(url).headers[CACHE_HEADER] == 'Hit'
    assert msgpack.unpackb(inspect_redis.get(key))[1] == response.content


@pytest.mark.parametrize('error', [redis.ConnectionError, redis.TimeoutError])
def test_unreachable_redis_serves_uncached_and_is_not_asked_again(
    make_client: MakeClient, error: type[Exception]
) -> None:
    failing = Redis(error=error)
    client = make_client(redis_from_url=lambda url: failing)
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    for _ in range(3):
        response = client.simulate_get(url)
        assert response.status_code == 200
        assert response.headers[CACHE_HEADER] == 'Miss'
        assert jpeg_size(response.content) == (320, 180)

    # The first request found Redis down; the rest, within retry_interval, skip it.
    assert failing.calls == ['get']


def test_redis_errors_other_than_connection_serve_uncached(make_client: MakeClient) -> None:
    failing = Redis(error=redis.ResponseError)
    client = make_client(redis_from_url=lambda url: failing)
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    for _ in range(2):
        response = client.simulate_get(url)
        assert response.status_code == 200
        assert jpeg_size(response.content) == (320, 180)


@both_backends
def test_nothing_but_thumbnails_is_cached(
    client: TestClient, inspect_redis: fakeredis.FakeRedis
) -> None:
    upload = client.simulate_post('/images', body=UPLOAD).json
    responses = [
        client.simulate_get('/images'),
        client.simulate_get(upload['image']),
        client.simulate_head(upload['image']),
        client.simulate_get('/health'),
        client.simulate_get('/openapi.json'),
        client.simulate_get(upload['image'].replace('.jpeg', '.png')),
    ]

    assert all(CACHE_HEADER not in response.headers for response in responses)
    assert inspect_redis.keys('*') == []


@both_backends
def test_head_fills_the_cache_for_get(client: TestClient) -> None:
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    head = client.simulate_head(url)
    get = client.simulate_get(url)

    assert (head.headers[CACHE_HEADER], get.headers[CACHE_HEADER]) == ('Miss', 'Hit')
    assert jpeg_size(get.content) == (320, 180)


@both_backends
def test_unlisted_or_unknown_thumbnails_are_not_cached(
    client: TestClient, inspect_redis: fakeredis.FakeRedis
) -> None:
    image_id = client.simulate_post('/images', body=UPLOAD).json['id']

    for _ in range(2):
        assert client.simulate_get(f'/thumbnails/{image_id}/7x7.jpeg').status_code == 404
        unknown = '/thumbnails/00000000-0000-0000-0000-000000000001/320x180.jpeg'
        assert client.simulate_get(unknown).status_code == 404

    assert inspect_redis.keys('*') == []


@both_backends
def test_delete_purges_the_cached_thumbnails(
    client: TestClient, inspect_redis: fakeredis.FakeRedis
) -> None:
    upload = client.simulate_post('/images', body=UPLOAD).json
    for url in upload['thumbnails']:
        client.simulate_get(url)
    assert len(inspect_redis.keys('*')) == len(upload['thumbnails'])

    assert client.simulate_delete(upload['image']).status_code == 204

    # Each key now holds the purge marker, which a late render cannot replace;
    # so do those of the sizes a smaller minimum would list, down to 1 pixel,
    # in every format.
    values = [inspect_redis.get(key) for key in inspect_redis.keys('*')]
    every = len(thumbnail_sizes((640, 360), 1)) * len(FORMAT_MEDIA_TYPES)
    assert values == [PURGED_MARKER] * every
    for url in upload['thumbnails']:
        assert client.simulate_get(url).status_code == 404


@both_backends
def test_thumbnails_made_under_other_settings_are_not_served_and_a_delete_reaches_them(
    make_config: Callable[..., Config], make_client: MakeClient
) -> None:
    """Two deployments on one storage and one Redis: new settings, or a rollback."""
    old = make_config(min_thumb_size=16)
    old_client = make_client(old)
    upload = old_client.simulate_post('/images', body=UPLOAD).json
    large, small = upload['thumbnails'][0], upload['thumbnails'][-1]  # 320x180 and 40x22
    for url in (large, small):
        old_client.simulate_get(url)
        assert old_client.simulate_get(url).headers[CACHE_HEADER] == 'Hit'
    new_client = make_client(
        make_config(storage_path=old.storage_path, jpeg_quality=60, min_thumb_size=100)
    )

    rendered = new_client.simulate_get(large)
    assert rendered.headers[CACHE_HEADER] == 'Miss'
    assert rendered.headers['ETag'].endswith('-q60"')
    assert new_client.simulate_get(large).headers[CACHE_HEADER] == 'Hit'
    assert new_client.simulate_get(small).status_code == 404  # not a size under its minimum

    assert new_client.simulate_delete(upload['image']).status_code == 204
    for client in (new_client, old_client):
        for url in (large, small):
            assert client.simulate_get(url).status_code == 404


def test_leading_slashes_are_the_same_thumbnail_to_the_cache(client: TestClient) -> None:
    """The router ignores them; a script joining a base URL ending in / sends them."""
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    assert client.simulate_get('//' + url.lstrip('/')).headers[CACHE_HEADER] == 'Miss'
    assert client.simulate_get(url).headers[CACHE_HEADER] == 'Hit'
    assert client.simulate_get('///' + url.lstrip('/')).headers[CACHE_HEADER] == 'Hit'


@both_backends
def test_no_address_of_a_deleted_thumbnail_is_served(client: TestClient) -> None:
    """The router also accepts other spellings of an id or a size; none may outlive a delete."""
    upload = client.simulate_post('/images', body=UPLOAD).json
    image_id = upload['id']
    aliases = [
        f'/thumbnails/{image_id.upper()}/160x90.jpeg',
        f'/thumbnails/{image_id.replace("-", "")}/160x90.jpeg',
        f'/thumbnails/{image_id}/0160x090.jpeg',
        f'/thumbnails/{image_id}/+160x90.jpeg',
    ]
    for alias in aliases:
        client.simulate_get(alias)

    client.simulate_delete(upload['image'])

    still_served = [alias for alias in aliases if client.simulate_get(alias).status_code == 200]
    assert still_served == []


# -- limit_waits ----------------------------------------------------------------------


def test_limit_waits_sets_short_timeouts_and_no_retries() -> None:
    """Inspected on a real client object: nothing listens on port 1, nothing connects."""
    client = redis.Redis.from_url('redis://localhost:1/0')

    limit_waits(client, 0.25)

    kwargs = client.connection_pool.connection_kwargs
    assert kwargs['socket_timeout'] == 0.25
    assert kwargs['socket_connect_timeout'] == 0.25
    assert client.get_retry().get_retries() == 0
    connection = client.connection_pool.make_connection()  # what a request would use
    assert (connection.socket_timeout, connection.socket_connect_timeout) == (0.25, 0.25)
    assert connection.retry.get_retries() == 0


def test_limit_waits_keeps_timeouts_from_the_url() -> None:
    client = redis.Redis.from_url('redis://localhost:1/0?socket_timeout=3')

    limit_waits(client, 0.25)

    assert client.connection_pool.connection_kwargs['socket_timeout'] == 3
    assert client.connection_pool.connection_kwargs['socket_connect_timeout'] == 0.25


def test_limit_waits_leaves_other_clients_alone() -> None:
    """A client without a pool (a fake, a wrapper) is used as it is."""
    client = Redis()

    limit_waits(client, 0.25)

    assert client.calls == []


# -- getter ---------------------------------------------------------------------------


def test_getter_answers_as_the_clients_get() -> None:
    client = fakeredis.FakeRedis()
    client.set('entry', b'bytes')
    client.rpush('a-list', b'1')
    get = getter(client)

    assert get is not client.get  # on the pool's connections
    assert get('entry') == client.get('entry') == b'bytes'
    assert get('missing') is None
    with pytest.raises(redis.ResponseError, match='WRONGTYPE'):
        get('a-list')
    assert get('entry') == b'bytes'  # the connection still answers


def test_getter_lets_go_of_a_connection_that_failed() -> None:
    """Nothing listens on port 1: each GET fails at once, and no connection stays lent."""
    client = redis.Redis.from_url('redis://localhost:1/0')
    limit_waits(client, 0.25)
    get = getter(client)

    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            get('entry')

    assert not client.connection_pool._in_use_connections


def test_getter_keeps_its_connection_for_the_next_get() -> None:
    client = fakeredis.FakeRedis()
    client.set('entry', b'bytes')
    get = getter(client)

    for _ in range(3):
        assert get('entry') == b'bytes'

    assert len(client.connection_pool._in_use_connections) == 1  # kept, lent once


def test_getter_keeps_other_clients_own_get() -> None:
    """A stand-in without a pool, a client on one connection, or on a small pool, keeps its get."""
    stand_in = Redis()
    single = fakeredis.FakeRedis(single_connection_client=True)
    small = redis.Redis.from_url('redis://localhost:1/0?max_connections=20')
    resp3 = redis.Redis.from_url('redis://localhost:1/0?protocol=3')

    assert getter(stand_in) == stand_in.get
    assert getter(single) == single.get
    assert getter(small) == small.get
    assert getter(resp3) == resp3.get


def test_unreachable_redis_answers_ping_false_at_once_and_pauses_the_cache() -> None:
    cache = RedisCache(lambda: redis.Redis.from_url('redis://localhost:1/0'), ttl=60)
    started = time.monotonic()

    assert cache.ping() is False

    assert time.monotonic() - started < 1
    assert not cache.available


def test_a_thumbnail_over_the_size_limit_is_not_kept(
    make_client: MakeClient, inspect_redis: fakeredis.FakeRedis
) -> None:
    """LOOK_CACHE_MAX_BYTES bounds what one thumbnail may take of Redis's memory.

    A larger one is kept on this host's disk instead, and served from there.
    """
    client = make_client(cache_max_bytes=4000)
    image = client.simulate_post('/images', body=image_bytes('JPEG', size=(640, 360))).json
    large, small = image['thumbnails'][0], image['thumbnails'][-1]
    answers = {path: [client.simulate_get(path) for _ in range(2)] for path in (large, small)}

    assert len(answers[large][0].content) > 4000 >= len(answers[small][0].content)
    assert answers[large][1].content == answers[large][0].content
    assert [a.headers[CACHE_HEADER] for a in answers[large]] == ['Miss', 'Hit']
    assert [a.headers[CACHE_HEADER] for a in answers[small]] == ['Miss', 'Hit']
    # Handed for a few seconds to requests that waited for that render, and only to them.
    assert inspect_redis.get(f'look:{large}') is None
    assert 0 < inspect_redis.ttl(f'look:handoff:{large}') <= 5
