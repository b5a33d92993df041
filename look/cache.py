"""Redis middleware that caches thumbnail responses; it knows nothing of images.

An entry is msgpack ``[content_type, body, validators, variant]``: the
validators (ETag, Last-Modified, Cache-Control) let a hit answer conditional
requests with a 304 without asking the store; the variant names the settings
the response was made under, so an entry made under others is not served.

Redis is only a cache: when it is unreachable, slow or returns garbage,
requests are answered uncached. After a failure the cache is skipped for
``retry_interval`` seconds, so a dead Redis costs one short timeout per
worker every few seconds rather than one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import falcon
import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from look.conditional import VALIDATOR_HEADERS, answer_not_modified, is_not_modified

log = logging.getLogger(__name__)

CACHE_HEADER = 'X-Look-Cache'
_HIT_FLAG = 'look_cache_hit'
# NOTE: a purge leaves this marker rather than an empty key, and entries are
#   only added where no key exists (SET NX): a render that was already under
#   way when its image was deleted cannot put it back in the cache.
PURGED_MARKER = b'look:purged'


def limit_waits(client: Any, timeout: float) -> None:
    """Give a redis-py client short socket timeouts (unless set) and no retries."""
    pool = getattr(client, 'connection_pool', None)
    connection_kwargs = getattr(pool, 'connection_kwargs', None)
    if isinstance(connection_kwargs, dict):
        if connection_kwargs.get('socket_timeout') is None:
            connection_kwargs['socket_timeout'] = timeout
        if connection_kwargs.get('socket_connect_timeout') is None:
            connection_kwargs['socket_connect_timeout'] = timeout
    if hasattr(client, 'set_retry'):
        # NOTE: retrying is the circuit breaker's job; redis-py's default
        #   retries with exponential backoff would hold a request for seconds.
        client.set_retry(Retry(NoBackoff(), 0))


class RedisCache:
    """Cache GET responses under ``path_prefix`` as msgpack ``[content_type, body, ...]``."""

    def __init__(
        self,
        client: Any,
        *,
        ttl: int,
        path_prefix: str = '/thumbnails/',
        key_prefix: str = 'look:',
        variant: str = '',
        timeout: float = 0.25,
        retry_interval: float = 5.0,
    ) -> None:
        limit_waits(client, timeout)
        self.client = client
        self.ttl = ttl
        self.path_prefix = path_prefix
        self.key_prefix = key_prefix
        # NOTE: one key per path whatever the settings, so a purge reaches
        #   every deployment sharing the Redis; an entry made under other
        #   settings is replaced, as a corrupt one is.
        self.variant = variant
        self.retry_interval = retry_interval
        self._skip_until = 0.0  # 0.0 while Redis answers, else when to probe it again
        self._probe_lock = threading.Lock()
        # Keys a DELETE could not purge while Redis was unreachable: never
        # served from here, and purged again as soon as Redis answers.
        self._unpurged: set[str] = set()

    @property
    def _failing(self) -> bool:
        return self._skip_until != 0.0

    @property
    def available(self) -> bool:
        """Whether the cache is in use now (not skipped after a failure)."""
        return time.monotonic() >= self._skip_until

    def ping(self) -> bool:
        """Return whether Redis answers now."""
        return bool(self._call('PING', self.client.ping))

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        # PERF: a hit is the hottest path in look; it does no more than this.
        path = _cached_path(req)
        if req.method not in ('GET', 'HEAD') or not path.startswith(self.path_prefix):
            return
        key = self._key(path)
        if self._unpurged and key in self._unpurged:
            self._purge()
            return
        raw = self._call('GET', self._get, key)
        if raw is None or raw == PURGED_MARKER:
            return
        entry = _decode(raw)
        if entry is None or entry[3] != self.variant:
            if entry is None:
                log.warning('ignoring a corrupt cache entry for %s', path)
            self._call('DEL', self.client.delete, key)
            return
        content_type, body, validators, _variant = entry
        resp.content_type = content_type
        resp.set_headers(validators)
        resp.set_header(CACHE_HEADER, 'Hit')
        req.context[_HIT_FLAG] = True
        resp.complete = True
        if is_not_modified(req, resp):
            answer_not_modified(resp)
        else:
            resp.data = body

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        if req.context.get(_HIT_FLAG):
            return
        path = _cached_path(req)
        if req.method not in ('GET', 'HEAD') or not path.startswith(self.path_prefix):
            self._purge_stale(resp, req_succeeded)
            return
        resp.set_header(CACHE_HEADER, 'Miss')
        if req_succeeded and resp.status_code == 200:
            body = resp.data
            if isinstance(body, bytes):
                validators = {
                    name: value
                    for name in VALIDATOR_HEADERS
                    if (value := resp.get_header(name)) is not None
                }
                entry = msgpack.packb(
                    [resp.content_type, body, validators, self.variant], use_bin_type=True
                )
                key = self._key(path)
                self._call('SET', self.client.set, key, entry, ex=self.ttl, nx=True)

    def _purge_stale(self, resp: falcon.Response, req_succeeded: bool) -> None:
        # NOTE: resources name the cached paths a change made stale in
        #   resp.context.stale_paths; purging them here keeps Redis out of
        #   the resources.
        stale: Iterable[str] = resp.context.get('stale_paths') or ()
        if req_succeeded and stale:
            self._unpurged.update(self._key(path) for path in stale)
            self._purge()

    def _purge(self) -> None:
        keys = list(self._unpurged)

        def mark_purged() -> bool:
            pipeline = self.client.pipeline(transaction=False)
            for key in keys:
                pipeline.set(key, PURGED_MARKER, ex=self.ttl)
            pipeline.execute()
            return True

        if self._call('purge', mark_purged):
            self._unpurged.difference_update(keys)

    def _key(self, path: str) -> str:
        return self.key_prefix + path

    def _get(self, key: str) -> Any:
        try:
            return self.client.get(key)
        except redis.ResponseError:
            # Not a string (WRONGTYPE): never ours to serve, and SET NX would
            # never replace it.
            log.warning('replacing a cache key of the wrong type: %s', key)
            self.client.delete(key)
            return None

    def _call(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        if self._failing:
            # NOTE: after a failure, one thread at a time probes Redis once
            #   the interval is over; the others keep skipping it meanwhile.
            with self._probe_lock:
                if not self.available:
                    return None
                self._skip_until = time.monotonic() + self.retry_interval
        try:
            result = method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as ex:
            self._skip_until = time.monotonic() + self.retry_interval
            log.warning(
                'Redis unavailable (%s: %s); serving uncached for %gs',
                name,
                ex,
                self.retry_interval,
            )
        except redis.RedisError as ex:
            log.warning('Redis %s failed: %s', name, ex)
        else:
            if self._failing:
                log.info('Redis is back; caching again')
                self._skip_until = 0.0
                if self._unpurged:
                    self._purge()
            return result
        return None


def _cached_path(req: falcon.Request) -> str:
    # NOTE: Falcon's router skips leading slashes: //thumbnails/... is the
    #   same thumbnail, and must not be a way around the cache.
    path: str = req.path
    return '/' + path.lstrip('/') if path.startswith('//') else path


def _decode(raw: Any) -> tuple[str, bytes, dict[str, str], str] | None:
    """Return a well-formed entry, or None for anything else: it is never served."""
    try:
        entry = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    if not isinstance(entry, list) or len(entry) not in (2, 3, 4):
        return None
    content_type, body = entry[0], entry[1]
    validators = entry[2] if len(entry) >= 3 else {}
    variant = entry[3] if len(entry) == 4 else ''
    if not (
        isinstance(content_type, str)
        and isinstance(body, bytes)
        and isinstance(validators, dict)
        and isinstance(variant, str)
        and all(
            name in VALIDATOR_HEADERS and isinstance(value, str)
            for name, value in validators.items()
        )
    ):
        return None
    return content_type, body, validators, variant
