"""HTTP load on 127.0.0.1: keep-alive connections, one thread each, spread evenly over workers.

Two things decide whether a throughput figure means anything on two cores:

- The client's own CPU. Only the look side of a look-vs-Pillow ratio pays
  for it, so the load loop speaks HTTP/1.1 on a raw socket with prepared
  request bytes (a fraction of ``http.client``'s cost per request), and its
  CPU use is reported with each figure.
- Which worker holds each connection. A gthread worker keeps a keep-alive
  connection for its whole life, and a burst of connects often lands every
  one on the same worker, leaving a core idle for the round (seen with wrk
  and with this client alike). So each connection's server side is looked
  up in /proc and connections are reopened until every worker holds its
  share; the split as first dealt is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import re
import resource
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench.harness import BenchError
from bench.procfs import socket_owner

_CONTENT_LENGTH = re.compile(rb'\r\ncontent-length:[ \t]*(\d+)', re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb'\r\nconnection:[ \t]*close', re.IGNORECASE)
_MAX_REOPENS = 200


@dataclasses.dataclass(frozen=True)
class Call:
    """One HTTP request to send, and the status that counts as an answer."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    expect: int = 200

    def encode(self, port: int) -> bytes:
        body = self.body or b''
        lines = [f'{self.method} {self.path} HTTP/1.1', f'Host: 127.0.0.1:{port}']
        lines += [f'{name}: {value}' for name, value in self.headers.items()]
        if self.body is not None:
            lines.append(f'Content-Length: {len(body)}')
        return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Rate:
    """Answers per second over one round, and what the round cost besides the server."""

    per_second: float
    count: int
    client_cpu: float  # share of one core
    dealt: str  # connections per worker as the server first dealt them, e.g. '8+0'
    reopened: int  # connections closed and reopened to spread them evenly


# -- one request at a time (set-up, latencies) ---------------------------------------


def send(port: int, call: Call, timeout: float = 60.0) -> Answer:
    """Send one request on a fresh connection; raise unless the status is ``call.expect``."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        return _exchange(connection, call)
    finally:
        connection.close()


def _exchange(connection: http.client.HTTPConnection, call: Call) -> Answer:
    connection.request(call.method, call.path, body=call.body, headers=dict(call.headers))
    response = connection.getresponse()
    body = response.read()
    if response.status != call.expect:
        raise BenchError(
            f'{call.method} {call.path} answered {response.status}, not {call.expect}: '
            f'{body[:300]!r}'
        )
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def latencies(
    port: int, call: Call, *, seconds: float, max_requests: int, min_requests: int = 3
) -> list[float]:
    """Send ``call`` one at a time on one keep-alive connection; return each time in seconds."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
    times: list[float] = []
    try:
        deadline = time.perf_counter() + seconds
        while len(times) < max_requests and (
            len(times) < min_requests or time.perf_counter() < deadline
        ):
            began = time.perf_counter()
            _exchange(connection, call)
            times.append(time.perf_counter() - began)
    finally:
        connection.close()
    return times


# -- throughput ------------------------------------------------------------------------


class _Connection:
    """A keep-alive HTTP/1.1 connection that reads answers by Content-Length, nothing more."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port: int = self.sock.getsockname()[1]
        self._buffer = bytearray()
        self._scratch = bytearray(256 * 1024)

    def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send a request, read its answer; return the status and whether the server closed."""
        self.sock.sendall(request)
        buffer = self._buffer
        while (end := buffer.find(b'\r\n\r\n')) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError('the server closed the connection mid-answer')
            buffer += chunk
        head = bytes(buffer[:end])
        status = int(head[9:12])
        length_match = _CONTENT_LENGTH.search(head)
        if length_match is None:
            raise BenchError(f'an answer without Content-Length: {head[:300]!r}')
        need = end + 4 + int(length_match.group(1))
        if len(buffer) >= need:
            del buffer[:need]
        else:
            remaining = need - len(buffer)
            buffer.clear()
            view = memoryview(self._scratch)
            while remaining:
                received = self.sock.recv_into(view, min(remaining, len(view)))
                if not received:
                    raise ConnectionError('the server closed the connection mid-body')
                remaining -= received
        return status, bool(_CONNECTION_CLOSE.search(head))

    def close(self) -> None:
        self.sock.close()


def _check(call: Call, status: int) -> None:
    if status != call.expect:
        raise BenchError(f'{call.method} {call.path} answered {status}, not {call.expect}')


def _open_spread(
    port: int, count: int, workers: Sequence[int], first: Call
) -> tuple[list[_Connection], str, int]:
    """Open ``count`` connections, each answered once, held evenly by ``workers``."""
    request = first.encode(port)
    share, extra = divmod(count, len(workers))
    quota = {pid: share + (n < extra) for n, pid in enumerate(workers)}
    held: dict[int, int] = dict.fromkeys(workers, 0)
    dealt: dict[int, int] = dict.fromkeys(workers, 0)
    connections: list[_Connection] = []
    reopened = 0
    try:
        while len(connections) < count:
            connection = _Connection(port)
            status, closed = connection.exchange(request)  # now some worker has accepted it
            _check(first, status)
            if closed:
                connection.close()
                continue
            owner = socket_owner(port, connection.local_port, workers)
            if len(connections) + reopened < count and owner in dealt:
                dealt[owner] += 1
            if owner is None or held[owner] < quota[owner] or reopened >= _MAX_REOPENS:
                connections.append(connection)
                if owner is not None:
                    held[owner] += 1
            else:
                connection.close()
                reopened += 1
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    return connections, '+'.join(str(dealt[pid]) for pid in workers), reopened


def throughput(
    port: int,
    calls: Sequence[Call],
    *,
    concurrency: int,
    seconds: float,
    workers: Sequence[int],
) -> Rate:
    """Keep ``concurrency`` connections busy for ``seconds``; return answers per second.

    Connection ``n`` cycles through ``calls`` from the ``n``-th, so a few
    distinct URLs are in flight at once.
    """
    connections, dealt, reopened = _open_spread(port, concurrency, workers, calls[0])
    requests = [call.encode(port) for call in calls]
    start_barrier = threading.Barrier(concurrency + 1)
    counts = [0] * concurrency
    finished = [0.0] * concurrency
    errors: list[BaseException] = []
    deadline = 0.0

    def run(n: int) -> None:
        connection = connections[n]
        try:
            start_barrier.wait()
            i = n
            while time.perf_counter() < deadline:
                index = i % len(calls)
                status, closed = connection.exchange(requests[index])
                _check(calls[index], status)
                counts[n] += 1
                i += 1
                if closed:
                    connection.close()
                    connection = connections[n] = _Connection(port)
        except BaseException as ex:
            errors.append(ex)
            start_barrier.abort()
        finally:
            finished[n] = time.perf_counter()
            connection.close()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    deadline = start + seconds  # read by the threads once the barrier lets them go
    with contextlib.suppress(threading.BrokenBarrierError):  # a thread failed; see below
        start_barrier.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f'load on port {port} failed: {errors[0]!r}') from errors[0]
    # NOTE: requests still in flight at the deadline are counted, and so is
    #   the time they took, so a slow last answer is not free.
    elapsed = max(finished) - start
    total = sum(counts)
    cpu = (_cpu_seconds() - cpu_before) / elapsed
    return Rate(total / elapsed, total, cpu, dealt, reopened)


def at_once(port: int, call: Call, count: int) -> float:
    """Send ``call`` on ``count`` connections at once; return seconds until the last answer.

    The connections are open before the clock starts, so the time is the
    requests' own, from the moment they are let go together.
    """
    connections: list[_Connection] = []
    try:
        for _ in range(count):
            connections.append(_Connection(port))
        request = call.encode(port)
        started: list[float] = []
        go = threading.Barrier(count + 1, action=lambda: started.append(time.perf_counter()))
        statuses = [0] * count
        finished = [0.0] * count
        errors: list[BaseException] = []

        def ask(n: int) -> None:
            try:
                go.wait()
                statuses[n] = connections[n].exchange(request)[0]
                finished[n] = time.perf_counter()
            except BaseException as ex:
                errors.append(ex)
                go.abort()

        threads = [threading.Thread(target=ask, args=(n,), daemon=True) for n in range(count)]
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a thread failed; see below
            go.wait()
        for thread in threads:
            thread.join()
    finally:
        for connection in connections:
            connection.close()
    if errors:
        raise BenchError(f'{call.method} {call.path} failed: {errors[0]!r}') from errors[0]
    for status in statuses:
        _check(call, status)
    return max(finished) - started[0]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
