"""HTTP load on 127.0.0.1: keep-alive connections, one thread each, spread evenly over workers.

Only HTTP sides pay for the client's CPU, so it sends prepared bytes, reads
answers by Content-Length, and notes its CPU each round. A gthread worker keeps
a connection for life and a burst of connects often lands on one worker, so
connections are reopened until each worker holds its share (noted as dealt).
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import resource
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from bench.rounds import Figure

from support.gunicorn import Gunicorn
from support.http import Response, request

_CONTENT_LENGTH = re.compile(rb'\r\ncontent-length:[ \t]*(\d+)', re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb'\r\nconnection:[ \t]*close', re.IGNORECASE)
_MAX_OPENS = 200  # past this many, connections are kept wherever they land


class BenchError(RuntimeError):
    """A server did not answer as the benchmark needs."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One HTTP request to send, and the status that counts as an answer."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    expect: int = 200

    def encode(self, port: int) -> bytes:
        lines = [f'{self.method} {self.path} HTTP/1.1', f'Host: 127.0.0.1:{port}']
        lines += [f'{name}: {value}' for name, value in self.headers.items()]
        if self.body is not None:
            lines.append(f'Content-Length: {len(self.body)}')
        return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + (self.body or b'')

    def check(self, status: int, body: bytes = b'') -> None:
        if status != self.expect:
            raise BenchError(f'{self.method} {self.path} answered {status}: {body[:200]!r}')


def post(path: str, body: bytes, content_type: str) -> Call:
    """Return an upload-like POST, answered by a 201."""
    return Call('POST', path, body, {'Content-Type': content_type}, expect=201)


def answer(server: Gunicorn, call: Call) -> Response:
    """Send one request on a new connection; raise unless its status is ``call.expect``."""
    response = request(call.method, server.url + call.path, call.body, call.headers, timeout=60)
    call.check(response.status, response.body)
    return response


class _Connection(http.client.HTTPConnection):
    """Prepared bytes out, answers read by Content-Length; an HTTPConnection for its worker."""

    def __init__(self, port: int) -> None:
        super().__init__('127.0.0.1', port, timeout=60)
        self.connect()  # with TCP_NODELAY
        self._buffer = bytearray()
        self._scratch = memoryview(bytearray(256 * 1024))

    def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send a request, read its answer; return the status and whether the server closed."""
        assert self.sock is not None
        self.sock.sendall(request)
        buffer = self._buffer
        while (end := buffer.find(b'\r\n\r\n')) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError('the server closed the connection mid-answer')
            buffer += chunk
        head = bytes(buffer[:end])
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise BenchError(f'an answer without Content-Length: {head[:300]!r}')
        remaining = end + 4 + int(length.group(1)) - len(buffer)
        del buffer[: len(buffer) + min(remaining, 0)]
        while remaining > 0:
            received = self.sock.recv_into(self._scratch, min(remaining, len(self._scratch)))
            if not received:
                raise ConnectionError('the server closed the connection mid-body')
            remaining -= received
        return int(head[9:12]), bool(_CONNECTION_CLOSE.search(head))


def _open_spread(server: Gunicorn, count: int, first: Call) -> tuple[list[_Connection], str]:
    """Open ``count`` connections, each answered once, held evenly by the workers."""
    workers = sorted(server.worker_pids())
    room = {pid: len(range(n, count, len(workers))) for n, pid in enumerate(workers)}
    dealt = dict.fromkeys(workers, 0)
    connections: list[_Connection] = []
    opened = 0
    try:
        while len(connections) < count:
            connection = _Connection(server.port)
            opened += 1
            status, closed = connection.exchange(first.encode(server.port))
            first.check(status)
            owner = server.answering_worker(connection, workers)  # it has accepted it by now
            if owner in dealt and opened <= count:
                dealt[owner] += 1
            if closed or (room.get(owner, 1) <= 0 and opened <= _MAX_OPENS):
                connection.close()
            else:
                connections.append(connection)
                room[owner] = room.get(owner, 1) - 1
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    return connections, '+'.join(str(dealt[pid]) for pid in workers)


def _together(
    connections: list[_Connection], work: Callable[[int, float], int]
) -> tuple[float, list[float], int]:
    """Run ``work(n, start)`` for each connection in a thread, let go at once; close them after."""
    started: list[float] = []
    go = threading.Barrier(len(connections), action=lambda: started.append(time.perf_counter()))
    finished, counts = [0.0] * len(connections), [0] * len(connections)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            go.wait()
            counts[n] = work(n, started[0])
        except BaseException as ex:
            errors.append(ex)
            go.abort()
        finally:
            finished[n] = time.perf_counter()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(connections))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()
    if errors:
        raise BenchError(f'a request failed: {errors[0]!r}') from errors[0]
    return started[0], finished, sum(counts)


def throughput(
    server: Gunicorn, calls: Sequence[Call], concurrency: int, seconds: float
) -> Figure:
    """Keep ``concurrency`` connections busy for ``seconds``, each cycling through ``calls``."""
    # NOTE: connections are dealt to the workers by a cheap GET when the work
    #   is an upload: dealt by uploads of a second or more each (an animated
    #   GIF), the first ones would wait longer than gunicorn keeps an idle
    #   connection (keepalive, 5 s) and be closed before their round.
    first = calls[0] if calls[0].method == 'GET' else Call('GET', '/images')
    connections, dealt = _open_spread(server, concurrency, first)
    requests = [call.encode(server.port) for call in calls]

    def load(n: int, start: float) -> int:
        i = n
        while time.perf_counter() < start + seconds:
            status, closed = connections[n].exchange(requests[i % len(calls)])
            calls[i % len(calls)].check(status)
            i += 1
            if closed:
                connections[n].close()
                connections[n] = _Connection(server.port)
        return i - n

    usage = resource.getrusage(resource.RUSAGE_SELF)
    start, finished, answers = _together(connections, load)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # NOTE: requests in flight at the deadline count, and so does the time
    #   they took, so a slow last answer is not free.
    elapsed = max(finished) - start
    client = (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / elapsed
    return Figure(answers / elapsed, answers, f'client {client:.2f} cores, dealt {dealt}')


def latency(server: Gunicorn, call: Call, seconds: float) -> Figure:
    """Send ``call`` one at a time on one connection; return the median time it took."""
    connection, request, times = _Connection(server.port), call.encode(server.port), []
    # NOTE: half a round's seconds: one request at a time gives a steady median sooner.
    deadline = time.perf_counter() + seconds / 2
    try:
        while len(times) < 500 and (len(times) < 3 or time.perf_counter() < deadline):
            began = time.perf_counter()
            call.check(connection.exchange(request)[0])
            times.append(time.perf_counter() - began)
    finally:
        connection.close()
    return Figure(statistics.median(times), len(times))


def at_once(server: Gunicorn, call: Call, count: int) -> float:
    """Send ``call`` on ``count`` connections opened beforehand; return the last answer's time."""
    connections, request = (
        [_Connection(server.port) for _ in range(count)],
        call.encode(server.port),
    )

    def ask(n: int, start: float) -> int:
        call.check(connections[n].exchange(request)[0])
        return 1

    start, finished, _answers = _together(connections, ask)
    return max(finished) - start
