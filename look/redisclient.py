"""A redis-py client that fails fast: one deadline per call, short timeouts, no retries.

Redis is only a cache to look: waiting for it is never worth more than a
fraction of a second, and retrying is the circuit breaker's job (look.cache).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

_deadline = threading.local()
# Seconds a call may overrun its deadline rather than pay to shorten a timeout.
SLACK = 0.05


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Bound every socket read and write of this thread's Redis calls in the block, together."""
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = None


class _DeadlineSocket(socket.socket):
    """A socket whose reads and writes stop at the calling thread's deadline.

    NOTE: redis-py's own socket timeout is per read: a server answering one
      byte every 0.2 s held a request for 13 s under a 0.25 s timeout.
    """

    def _bounded(self, call: Any, *args: Any) -> Any:
        at = getattr(_deadline, 'at', None)
        if at is None:
            return call(*args)
        left = at - time.monotonic()
        if left <= 0:
            raise TimeoutError('the cache call ran past its deadline')
        current = self.gettimeout()
        # PERF: within SLACK of the deadline the socket's own timeout is left
        #   alone, so a call that answers at once costs no extra system calls.
        if current is not None and current <= left + SLACK:
            return call(*args)  # also redis-py's own shorter timeout (0 when it polls)
        self.settimeout(left)
        try:
            return call(*args)
        finally:
            self.settimeout(current)

    def recv(self, *args: Any) -> bytes:
        result: bytes = self._bounded(super().recv, *args)
        return result

    def recv_into(self, *args: Any) -> int:
        result: int = self._bounded(super().recv_into, *args)
        return result

    def sendall(self, *args: Any) -> None:
        self._bounded(super().sendall, *args)


class _DeadlineConnection:
    """Mixed into a redis-py connection class: its sockets honour the call deadline."""

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        timeout = sock.gettimeout()
        wrapped = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        wrapped.settimeout(timeout)
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
