"""Redis middleware that caches responses; it knows nothing of images.

A resource says which of its responses may be cached, and under which key,
by a ``cacheable(req, **params)`` method that returns a ``Cacheable``. An
entry is msgpack ``[content_type, body, validators, variant]``: the
validators (ETag, Last-Modified, Cache-Control) let a hit answer conditional
requests with a 304 without asking the resource; the variant names the
settings the response was made under, so an entry made under others is not
served.

Redis is only a cache: when it is unreachable, slow, returns garbage or is
not Redis at all, requests are answered uncached. Each call has one
deadline for the whole of it, not per socket read; after a failure the
cache is skipped for ``retry_interval`` seconds, so a dead Redis costs one
short timeout per worker every few seconds rather than one per request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import falcon
import msgpack
import redis

from look.core.breaker import Breaker
from look.core.lazy import PerProcess
from look.web.conditional import VALIDATOR_HEADERS, answer_not_modified, is_not_modified
from look.web.redisclient import CallDeadline, getter, limit_waits

log = logging.getLogger(__name__)

CACHE_HEADER = 'X-Look-Cache'
_FILL_PREFIX = 'fill:'
_FAILED_PREFIX = 'failed:'
_HANDOFF_PREFIX = 'handoff:'
_WAKE_PREFIX = 'wake:'
_WAITERS_PREFIX = 'waiters:'
# NOTE: a waiter that missed its wake-up token looks again after this long.
WAKE_WAIT = 0.1
_FAILED = object()  # what a failed call returns, where None is an answer too
# How long requests waiting for a fill that failed answer with its error.
FAILURE_SHARED_MS = 2000
# How long a render over max_entry_bytes stays, for the requests waiting for it.
HANDOFF_SECONDS = 5
# NOTE: a purge leaves this marker rather than an empty key, and entries are
#   only added where no key exists (SET NX): a render that was already under
#   way when its image was deleted cannot put it back in the cache.
PURGED_MARKER = b'look:purged'


# What a Cacheable without headers to add may share.
NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


# PERF: not frozen: a frozen dataclass sets each field through
#   object.__setattr__, 0.4 µs more for every cacheable request.
@dataclasses.dataclass(slots=True)
class Cacheable:
    """How a response may be cached: its key, the variant it must match, headers to add.

    ``kept_elsewhere``, asked only when the cache has no entry, says whether
    the resource has the answer at hand itself (a large thumbnail on this
    host's disk): it then answers at once, and the cache stays out of it.
    """

    key: str
    variant: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kept_elsewhere: Callable[[], bool] | None = None


class RedisCache:
    """Cache GET responses of resources that name a ``Cacheable`` for them."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        ttl: int,
        max_entry_bytes: int = 1024 * 1024,
        key_prefix: str = 'look:',
        timeout: float = 0.25,
        retry_interval: float = 5.0,
        fill_timeout: float | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        # NOTE: each process makes its own client on first use, as every
        #   backend's: none is made at import or carried across a fork.
        self._connection = PerProcess(lambda: _Connection(connect(), timeout))
        self._on_error = on_error
        # NOTE: with fill_timeout set, concurrent misses of one entry, in every
        #   worker and host on this Redis, wait for one request to make it
        #   (at most this long) instead of each making its own.
        self.fill_timeout = fill_timeout
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self.key_prefix = key_prefix
        self.timeout = timeout
        self._deadline = CallDeadline(timeout)
        self.retry_interval = retry_interval
        self._breaker = Breaker(retry_interval)
        self._probe_lock = threading.Lock()
        # Keys a DELETE could not purge while Redis was unreachable: never
        # served from here, and purged again as soon as Redis answers.
        self._unpurged: set[str] = set()

    @property
    def client(self) -> Any:
        """Return this process's Redis client, made on first use."""
        return self._connection.get().client

    @property
    def available(self) -> bool:
        """Whether the cache is in use now (not skipped after a failure)."""
        return not self._breaker.open

    def ping(self) -> bool:
        """Return whether Redis answers now."""
        return bool(self._call('PING', self.client.ping))

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        # PERF: a hit is the hottest path in look; it does no more than this.
        if req.method not in ('GET', 'HEAD'):
            return
        name_entry = getattr(resource, 'cacheable', None)
        if name_entry is None:
            return
        cacheable: Cacheable | None = name_entry(req, **params)
        if cacheable is None:
            return
        key = self.key_prefix + cacheable.key
        unpurged = bool(self._unpurged) and key in self._unpurged
        if not unpurged:
            raw = self._call('GET', self._get, key)
            if raw is not None and self._serve(req, resp, cacheable, key, raw):
                return
        # PERF: asked after the GET, not before: a hit is never kept elsewhere
        #   (what a host keeps on its disk is too large for the cache), and
        #   a hit makes no stat for it.
        if cacheable.kept_elsewhere is not None and cacheable.kept_elsewhere():
            return
        # PERF: what the cache notes on a request are context attributes, not
        #   items: Falcon's Context maps items onto attributes in Python, 0.3 µs
        #   more each way.
        req.context.look_cacheable = cacheable
        if unpurged:
            self._purge()
        elif self.fill_timeout is not None and not _is_conditional(req):
            self._fill_or_wait(req, resp, cacheable, key)

    def _serve(
        self, req: falcon.Request, resp: falcon.Response, cacheable: Cacheable, key: str, raw: Any
    ) -> bool:
        """Answer from an entry; return False (dropping a bad entry) if it cannot answer."""
        if raw == PURGED_MARKER:
            return False
        entry = _decode(raw)
        if entry is None or entry[3] != cacheable.variant:
            if entry is None:
                log.warning('ignoring a corrupt cache entry for %s', cacheable.key)
            self._call('DEL', self.client.delete, key)
            return False
        content_type, body, validators, _variant = entry
        resp.content_type = content_type
        resp.set_headers(validators)
        if cacheable.headers:
            resp.set_headers(cacheable.headers)
        resp.set_header(CACHE_HEADER, 'Hit')
        req.context.look_cache_hit = True
        resp.complete = True
        if is_not_modified(req, resp):
            answer_not_modified(resp)
        else:
            resp.data = body
        return True

    def _fill_or_wait(
        self, req: falcon.Request, resp: falcon.Response, cacheable: Cacheable, key: str
    ) -> None:
        """Let one request in the whole deployment make a missing entry; the others wait for it.

        The one that takes the fill lock goes on to the resource. The others
        count themselves in and wait until it wakes them (BLPOP on a list it
        pushes one token per waiter to; they look again after WAKE_WAIT in
        any case), then answer from the entry. A fill that failed leaves
        its error for a moment (FAILURE_SHARED_MS), which they and the
        requests right after answer with too; a fill whose maker vanished
        (its lock expired, or was let go without an entry) is taken over.
        Without Redis, every request goes on to the resource.
        """
        assert self.fill_timeout is not None
        lock_key = self.key_prefix + _FILL_PREFIX + cacheable.key
        handoff_key = self.key_prefix + _HANDOFF_PREFIX + cacheable.key
        failed_key = self.key_prefix + _FAILED_PREFIX + cacheable.key
        wake_key = self.key_prefix + _WAKE_PREFIX + cacheable.key
        waiters_key = self.key_prefix + _WAITERS_PREFIX + cacheable.key
        lock_ms = int(self.fill_timeout * 1000)
        deadline = time.monotonic() + self.fill_timeout
        while True:
            # One round trip: a failure to share, the lock, and a place among the waiters.
            answered = self._try(
                'fill', self._try_to_fill, failed_key, lock_key, waiters_key, lock_ms
            )
            if answered is _FAILED:
                return  # Redis failed: make it here
            failed, took = answered
            req.context.look_cache_counted = getattr(req.context, 'look_cache_counted', 0) + 1
            if failed is not None and _answer_failure(req, resp, failed):
                if took:
                    self._let_go(req, cacheable, lock_key)
                return  # it failed a moment ago: not again for everyone at once
            if took:
                # NOTE: checked again: the last maker may have stored the entry
                #   and let go of the lock since we looked.
                raw = self._call('GET', self._get, key)
                if raw is not None and self._serve(req, resp, cacheable, key, raw):
                    self._let_go(req, cacheable, lock_key)
                    return
                req.context.look_cache_filling = lock_key
                return
            while True:
                if time.monotonic() >= deadline:
                    raise falcon.HTTPServiceUnavailable(
                        title='Still rendering',
                        description='Another request is still making this answer; try again.',
                        retry_after=1,
                    )
                self._await_wake(wake_key)
                found = self._try(
                    'MGET', self.client.mget, [key, handoff_key, failed_key, lock_key]
                )
                if found is _FAILED:
                    return  # Redis failed while waiting: make it here
                raw, handed_off, failed, holder = found
                raw = raw if raw is not None else handed_off
                if raw is not None and self._serve(req, resp, cacheable, key, raw):
                    return
                if failed is not None and _answer_failure(req, resp, failed):
                    return
                if holder is None:
                    break  # nobody is making it any more: take over

    def _try_to_fill(
        self, failed_key: str, lock_key: str, waiters_key: str, lock_ms: int
    ) -> tuple[Any, bool]:
        """Return a shared failure, if any, and whether this request took the fill lock.

        It counts itself among the waiters either way, in one round trip; a
        maker takes itself off the count when it lets go.
        """
        pipeline = self.client.pipeline(transaction=False)
        pipeline.get(failed_key)
        pipeline.set(lock_key, b'1', px=lock_ms, nx=True)
        pipeline.incr(waiters_key)
        pipeline.pexpire(waiters_key, lock_ms)
        failed, took, _, _ = pipeline.execute()
        return failed, bool(took)

    def _await_wake(self, wake_key: str) -> None:
        """Wait until the maker of an entry says it is done, or WAKE_WAIT seconds pass."""
        started = time.monotonic()
        woken = self._try('BLPOP', self.client.blpop, [wake_key], timeout=WAKE_WAIT)
        left = WAKE_WAIT - (time.monotonic() - started)
        if woken is None and left > 0:
            time.sleep(left)  # a client that does not block (a fake Redis) must not spin

    def _let_go(self, req: falcon.Request, cacheable: Cacheable, lock_key: str) -> None:
        """Give up the fill lock and wake the requests that said they wait for the entry."""
        counted_self = getattr(req.context, 'look_cache_counted', 0)
        waiters_key = self.key_prefix + _WAITERS_PREFIX + cacheable.key
        wake_key = self.key_prefix + _WAKE_PREFIX + cacheable.key

        def let_go() -> bool:
            pipeline = self.client.pipeline(transaction=False)
            pipeline.delete(lock_key)
            pipeline.getdel(waiters_key)
            waiting = int(pipeline.execute()[1] or 0) - counted_self
            if waiting > 0:
                pipeline = self.client.pipeline(transaction=False)
                pipeline.rpush(wake_key, *[b'1'] * waiting)
                pipeline.pexpire(wake_key, FAILURE_SHARED_MS)
                pipeline.execute()
            return True

        self._call('wake', let_go)

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        if getattr(req.context, 'look_cache_hit', False):
            return
        cacheable: Cacheable | None = getattr(req.context, 'look_cacheable', None)
        if cacheable is None:
            self._purge_stale(resp, req_succeeded)
            return
        resp.set_header(CACHE_HEADER, 'Miss')
        key = self.key_prefix + cacheable.key
        body = resp.data
        if req_succeeded and resp.status_code == 200 and isinstance(body, bytes):
            validators = {
                name: value
                for name in VALIDATOR_HEADERS
                if (value := resp.get_header(name)) is not None
            }
            entry = msgpack.packb(
                [resp.content_type, body, validators, cacheable.variant], use_bin_type=True
            )
            if len(body) <= self.max_entry_bytes:
                self._call('SET', self.client.set, key, entry, ex=self.ttl, nx=True)
            elif hasattr(req.context, 'look_cache_filling'):
                # NOTE: too large to keep, but handed to the requests waiting
                #   for this render, under a key only they read.
                handoff_key = self.key_prefix + _HANDOFF_PREFIX + cacheable.key
                self._call('SET', self.client.set, handoff_key, entry, ex=HANDOFF_SECONDS)
        elif hasattr(req.context, 'look_cache_filling') and resp.status_code >= 500:
            # NOTE: a 503 from a render is shared with those waiting for it;
            #   a 404 (an image deleted meanwhile) is quick to find for each.
            failure = msgpack.packb(
                [resp.status_code, resp.content_type, resp.data, resp.get_header('Retry-After')],
                use_bin_type=True,
            )
            failed_key = self.key_prefix + _FAILED_PREFIX + cacheable.key
            self._call('SET', self.client.set, failed_key, failure, px=FAILURE_SHARED_MS)
        lock_key = getattr(req.context, 'look_cache_filling', None)
        if lock_key is not None:
            self._let_go(req, cacheable, lock_key)

    def _purge_stale(self, resp: falcon.Response, req_succeeded: bool) -> None:
        # NOTE: resources name the cache keys a change made stale in
        #   resp.context.stale_keys; purging them here keeps Redis out of
        #   the resources.
        stale: Iterable[str] = resp.context.get('stale_keys') or ()
        if req_succeeded and stale:
            self._unpurged.update(self.key_prefix + key for key in stale)
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

    def _get(self, key: str) -> Any:
        try:
            return self._connection.get().get(key)
        except redis.ResponseError:
            # Not a string (WRONGTYPE): never ours to serve, and SET NX would
            # never replace it.
            log.warning('replacing a cache key of the wrong type: %s', key)
            self.client.delete(key)
            return None

    def _call(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call Redis; return what it answered, or None if the call failed (it is logged)."""
        result = self._try(name, method, *args, **kwargs)
        return None if result is _FAILED else result

    def _try(self, name: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call Redis; return what it answered, or ``_FAILED``."""
        if self._breaker.failing:  # Redis failed lately
            # NOTE: after a failure, one thread at a time probes Redis once
            #   the interval is over; the others keep skipping it meanwhile.
            with self._probe_lock:
                if self._breaker.open:
                    return _FAILED
                self._breaker.trip()
        try:
            with self._deadline:
                result = method(*args, **kwargs)
        except Exception as ex:
            self._failed(name, ex)
            return _FAILED
        if self._breaker.failing and self._breaker.close():  # and answered now
            log.info('Redis is back; caching again')
            if self._unpurged:
                self._purge()
        return result

    def _failed(self, name: str, ex: Exception) -> None:
        """Log a failed call; skip Redis for a while unless it only refused the command."""
        if self._on_error is not None:
            self._on_error(name)
        if isinstance(ex, redis.ResponseError):
            log.warning('Redis %s failed: %s', name, ex)
            return
        self._breaker.trip()
        if isinstance(ex, redis.ConnectionError | redis.TimeoutError | OSError):
            log.warning(
                'Redis unavailable (%s: %s); serving uncached for %gs',
                name,
                ex,
                self.retry_interval,
            )
        else:
            # NOTE: whatever answers on the cache URL, its errors are the
            #   cache's (a server that is not Redis raises parser errors).
            log.warning(
                'the cache at the Redis URL answered %s with %s: %s; serving uncached for %gs',
                name,
                type(ex).__name__,
                ex,
                self.retry_interval,
            )


class _Connection:
    """A process's Redis client, with short timeouts, and its quickest GET."""

    __slots__ = ('client', 'get')

    def __init__(self, client: Any, timeout: float) -> None:
        limit_waits(client, timeout)
        self.client = client
        self.get = getter(client)


def _is_conditional(req: falcon.Request) -> bool:
    environ = req.env
    return 'HTTP_IF_NONE_MATCH' in environ or 'HTTP_IF_MODIFIED_SINCE' in environ


def _answer_failure(req: falcon.Request, resp: falcon.Response, raw: Any) -> bool:
    """Answer with the error a failed fill left; return False if it is not one."""
    try:
        status, content_type, body, retry_after = msgpack.unpackb(raw, raw=False)
    except Exception:
        return False
    if not (isinstance(status, int) and isinstance(body, bytes | None)):
        return False
    resp.status = status
    if content_type:
        resp.content_type = content_type
    resp.data = body
    resp.cache_control = ['no-store']
    if retry_after:
        resp.set_header('Retry-After', str(retry_after))
    req.context.look_cache_hit = True  # answered here; nothing to store
    resp.complete = True
    return True


def _decode(raw: Any) -> tuple[str, bytes, dict[str, str], str] | None:
    """Return a well-formed entry, or None for anything else: it is never served."""
    try:
        entry = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    if not isinstance(entry, list) or len(entry) != 4:
        return None
    content_type, body, validators, variant = entry
    if not (
        isinstance(content_type, str)
        and isinstance(body, bytes)
        and isinstance(validators, dict)
        and isinstance(variant, str)
    ):
        return None
    # PERF: a loop, not all() over a generator: 0.3 µs less per hit.
    for name, value in validators.items():
        if name not in VALIDATOR_HEADERS or not isinstance(value, str):
            return None
    return content_type, body, validators, variant
