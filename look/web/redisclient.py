"""A redis-py client that fails fast: one deadline per call, short timeouts, no retries.

Redis is only a cache to look: waiting for it is never worth more than a
fraction of a second, and retrying is the circuit breaker's job (look.web.cache).
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


class _Deadline(threading.local):
    at: float | None = None  # when this thread's Redis call must be over


_deadline = _Deadline()
# Seconds a call may overrun its deadline rather than pay to shorten a timeout.
SLACK = 0.05


class CallDeadline:
    """Bound every socket read and write of this thread's Redis calls in the block, together.

    One instance serves every thread: ``with deadline:`` around each call.
    PERF: a class, not a generator: 0.8 µs less per call.
    """

    __slots__ = ('_seconds',)

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        _deadline.at = time.monotonic() + self._seconds

    def __exit__(self, *exc_info: object) -> None:
        _deadline.at = None


def _set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Bound each read and write of a blocking socket in the kernel (SO_RCVTIMEO, SO_SNDTIMEO)."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if whole == 0 and micros == 0:
        micros = 1  # a zero timeval means no limit at all
    timeval = struct.pack('@ll', whole, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


_recv = socket.socket.recv
_recv_into = socket.socket.recv_into
_sendall = socket.socket.sendall
_LEAST = 1e-6  # a deadline already passed never counts as far off


class _DeadlineSocket(socket.socket):
    """A blocking socket whose reads and writes stop at the calling thread's deadline.

    Each read or write is bounded in the kernel by ``op_timeout`` (as
    redis-py's socket_timeout would be), and shortened to what is left of
    the call's deadline when that is less.

    NOTE: redis-py's own socket timeout is per read: a server answering one
      byte every 0.2 s held a request for 13 s under a 0.25 s timeout.
    PERF: a Python socket with a timeout polls before every read and write;
      a blocking one with kernel timeouts makes one system call of each.
    """

    op_timeout: float | None = None
    # How much of a call's deadline must be left for a read or write to go
    # as it is: its own timeout ends first, or within SLACK of the deadline.
    _direct_from: float = math.inf

    def limit(self, op_timeout: float | None) -> None:
        """Bound each read and write by ``op_timeout`` in the kernel (None: only by deadlines)."""
        self.op_timeout = op_timeout
        if op_timeout:
            self._direct_from = max(op_timeout - SLACK, _LEAST)
            _set_kernel_timeouts(self, op_timeout)

    def _bounded(self, call: Any, *args: Any) -> Any:
        at = _deadline.at
        if at is None:
            return call(self, *args)
        left = at - time.monotonic()
        if left <= 0:
            raise TimeoutError('the cache call ran past its deadline')
        current = self.gettimeout()  # None, but for redis-py's own polls (0)
        bound = self.op_timeout if current is None else current
        # PERF: within SLACK of the deadline the timeout is left alone, so a
        #   call that answers at once costs no extra system calls.
        if bound is not None and bound <= left + SLACK:
            return call(self, *args)
        if current is not None:
            self.settimeout(left)
            try:
                return call(self, *args)
            finally:
                self.settimeout(current)
        _set_kernel_timeouts(self, left)
        try:
            return call(self, *args)
        finally:
            _set_kernel_timeouts(self, self.op_timeout or 0.0)

    # PERF: each method takes the common case itself before calling _bounded
    #   (no deadline, or more of it left than the socket's own timeout, which
    #   is the kernel's, None, or 0 in redis-py's polls): about 0.5 µs less
    #   per read or write, of which a cache hit makes three.

    def recv(self, *args: Any) -> bytes:
        at = _deadline.at
        if at is None or (at - time.monotonic() >= self._direct_from and not self.gettimeout()):
            return _recv(self, *args)
        result: bytes = self._bounded(_recv, *args)
        return result

    def recv_into(self, *args: Any) -> int:
        at = _deadline.at
        if at is None or (at - time.monotonic() >= self._direct_from and not self.gettimeout()):
            return _recv_into(self, *args)
        result: int = self._bounded(_recv_into, *args)
        return result

    def sendall(self, *args: Any) -> None:
        at = _deadline.at
        if at is None or (at - time.monotonic() >= self._direct_from and not self.gettimeout()):
            _sendall(self, *args)
        else:
            self._bounded(_sendall, *args)


class _DeadlineConnection:
    """Mixed into a redis-py connection class: its sockets honour the call deadline."""

    _op_timeout: float | None

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        if not hasattr(self, '_op_timeout'):
            self._op_timeout = self.socket_timeout  # type: ignore[attr-defined]
            # NOTE: redis-py sets a socket back to this after each of its own
            #   polls; None keeps it blocking, with the kernel's timeouts.
            self.socket_timeout = None  # type: ignore[attr-defined]
        wrapped = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        wrapped.settimeout(None)
        wrapped.limit(self._op_timeout)
        return wrapped


def limit_waits(client: Any, timeout: float) -> None:
    """Give a redis-py client short socket timeouts (unless set), call deadlines, no retries."""
    pool = getattr(client, 'connection_pool', None)
    connection_kwargs = getattr(pool, 'connection_kwargs', None)
    if isinstance(connection_kwargs, dict):
        if connection_kwargs.get('socket_timeout') is None:
            connection_kwargs['socket_timeout'] = timeout
        if connection_kwargs.get('socket_connect_timeout') is None:
            connection_kwargs['socket_connect_timeout'] = timeout
    connection_class = getattr(pool, 'connection_class', None)
    if isinstance(connection_class, type) and connection_class in (
        redis.Connection,
        redis.UnixDomainSocketConnection,
    ):
        # NOTE: TLS sockets are made by the ssl module and read in C; they
        #   keep redis-py's per-read timeout only.
        pool.connection_class = type(  # type: ignore[union-attr]
            f'Deadline{connection_class.__name__}', (_DeadlineConnection, connection_class), {}
        )
    if hasattr(client, 'set_retry'):
        # NOTE: retrying is the circuit breaker's job; redis-py's default
        #   retries with exponential backoff would hold a request for seconds.
        client.set_retry(Retry(NoBackoff(), 0))


# The fewest connections a pool must be free to make for a GET to keep some of
# them: up to one per thread of a worker (gunicorn.conf.py's 12), on top of as
# many lent for the other commands.
KEEPING_POOL_SIZE = 100


def getter(client: Any) -> Callable[[str], Any]:
    """Return a GET of ``client``'s: on connections it keeps from the pool where that is the same.

    PERF: redis-py's command machinery (retries, events, observability,
      response callbacks) costs a GET about 37 000 instructions, 7 µs of CPU,
      besides sending it and reading the answer, and a cache hit is one GET.
      Lending a connection from the pool and taking it back costs another
      60 000 and three system calls (the pool polls each connection it lends
      for unread bytes). Here GETs keep the connections they used, as many as
      ran at once, and send on them again directly, for a plain
      client whose GET has no callback, no client-side cache and no pushed
      messages (RESP2); any other client (a cluster, a single connection, a
      stand-in in a test) keeps its own ``get``. So does one whose pool may
      not make KEEPING_POOL_SIZE connections (``max_connections`` in its
      URL): kept connections come on top of those the pool lends.
    NOTE: a kept connection never holds unread bytes: any failure but a
      refusal (WRONGTYPE, read whole) disconnects it and gives it back to the
      pool. One the server closed while it waited here (a restart, its client
      timeout) is replaced once, as the pool's poll would have found it closed
      and connected again.
    """
    pool = getattr(client, 'connection_pool', None)
    if not (
        redis.VERSION >= (5, 3)  # get_connection() takes no command name
        and isinstance(client, redis.Redis)
        and isinstance(pool, redis.ConnectionPool)
        and client.connection is None
        and getattr(pool, 'cache', None) is None
        and 'GET' not in client.response_callbacks
        and pool.connection_kwargs.get('protocol') in (None, 2, '2')
        and pool.max_connections >= KEEPING_POOL_SIZE
    ):
        get: Callable[[str], Any] = client.get
        return get

    kept: list[Any] = []  # connections between GETs, lent by the pool and not given back

    def get_on(connection: Any, key: str) -> Any:
        try:
            connection.send_command('GET', key)
            value = connection.read_response()
        except redis.ResponseError:
            kept.append(connection)  # an answer, read whole: the connection is sound
            raise
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        kept.append(connection)
        return value

    def kept_get(key: str) -> Any:
        try:
            connection = kept.pop()
        except IndexError:
            return get_on(pool.get_connection(), key)
        try:
            return get_on(connection, key)
        except redis.ConnectionError:
            return get_on(pool.get_connection(), key)

    return kept_get
