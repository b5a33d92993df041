"""The web worker against slow clients, over real gunicorn with make run's 2 workers x 12 threads.

Each attack opens more connections than the workers have threads (24): heads
sent a byte at a time, connections that send nothing, kept-alive connections
that trickle their next request. Meanwhile a request on a new connection must
be answered within a second, and every attacking connection must be closed
at LOOK_HEADER_TIMEOUT (a 408 first, if it had begun a request).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from gunicorn.config import Config

from look.server.worker import declares_body, reads_heads

from support.gunicorn import Gunicorn, MakeGunicorn
from support.http import SlowClient, connect, open_slow_clients, request, send, trickle
from support.processes import REPO_ROOT, wait_until

pytestmark = pytest.mark.e2e


HEADER_TIMEOUT = 3.0  # LOOK_HEADER_TIMEOUT of these servers
# How long after its deadline a head may still be open: the worker looks
# for late heads at least once a second.
DEADLINE_SLACK = 1.5
# A normal request is answered within this, whatever else is going on.
PROMPT = 1.0
TRICKLE_INTERVAL = 0.5
UPLOAD_HEAD = b'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n'
MAX_CONCURRENT_UPLOADS = 6  # look's default, per worker
MAX_QUEUE_SECONDS = 2.0  # look's default: how long an upload waits for a body slot
REQUEST_HEAD = (
    b'GET /health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n'
)


@pytest.fixture(scope='module')
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """make run's settings (2 workers x 12 threads) with a 3 s head deadline."""
    storage = tmp_path_factory.mktemp('storage')
    environ = {'LOOK_HEADER_TIMEOUT': str(HEADER_TIMEOUT)}
    with Gunicorn(storage, workers=2, environ=environ) as gunicorn:
        yield gunicorn


# -- slow clients --------------------------------------------------------------------


def prompt_answers(url: str, count: int, spacing: float) -> list[float]:
    """GET /health on a new connection ``count`` times; return how long each answer took.

    Stops at the first request that is not answered within PROMPT (its time is inf).
    """
    took = []
    for _ in range(count):
        time.sleep(spacing)
        started = time.monotonic()
        try:
            response = request('GET', f'{url}/health', timeout=PROMPT + 1.0)
        except OSError:
            took.append(float('inf'))
            break
        took.append(time.monotonic() - started if response.status == 200 else float('inf'))
        if took[-1] > PROMPT:
            break
    return took


def under_attack(server: Gunicorn, clients: list[SlowClient]) -> list[float]:
    """Trickle ``clients`` in the background while timing normal requests; return their times."""
    until = time.monotonic() + HEADER_TIMEOUT + DEADLINE_SLACK + 1.0
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        attack = background.submit(trickle, clients, TRICKLE_INTERVAL, until)
        try:
            # Within the first 2.5 s, while every attacking connection is open.
            took = prompt_answers(server.url, 8, 0.3)
        finally:
            attack.result()
    return took


def check_json_error(received: bytes, status: bytes) -> dict[str, str]:
    """Assert ``received`` is one look error answer of ``status``; return its body.

    The worker's own answers have the app's shape: JSON ``{"title",
    "description"}``, not to be kept by a cache, nor sniffed as anything else.
    """
    head, _, body = received.partition(b'\r\n\r\n')
    status_line, *lines = head.decode('latin-1').split('\r\n')
    assert status_line.split(' ', 2)[1] == status.decode(), received[:300]
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(':') for h in lines)}
    assert headers['content-type'] == 'application/json', headers
    assert headers['cache-control'] == 'no-store', headers
    assert headers['x-content-type-options'] == 'nosniff', headers
    assert int(headers['content-length']) == len(body), headers
    document = json.loads(body)
    assert set(document) == {'title', 'description'}, document
    assert all(isinstance(value, str) and value for value in document.values()), document
    return document


def check_closed_at_the_deadline(clients: list[SlowClient], answer: bytes) -> None:
    """Assert every client was closed by HEADER_TIMEOUT (and slack), after ``answer``."""
    held = sorted(client.held for client in clients)
    assert held[-1] <= HEADER_TIMEOUT + DEADLINE_SLACK, (
        f'{sum(h > HEADER_TIMEOUT + DEADLINE_SLACK for h in held)} of {len(held)} connections'
        f' were still open {HEADER_TIMEOUT + DEADLINE_SLACK}s after their head began'
    )
    assert held[0] >= HEADER_TIMEOUT - 0.1, f'a connection was closed after {held[0]:.2f}s'
    answers = {client.received.partition(b'\r\n')[0] for client in clients}
    assert answers == {answer}, answers
    if answer:
        check_json_error(clients[0].received, answer.split(b' ')[1])


@pytest.mark.parametrize(
    ('count', 'to_send', 'answer'),
    [
        (50, REQUEST_HEAD, b'HTTP/1.1 408 Request Timeout'),
        (60, b'', b''),
    ],
    ids=['50 heads sent a byte every 0.5 s', '60 connections that send nothing'],
)
def test_slow_new_connections_hold_no_thread_and_close_at_the_deadline(
    server: Gunicorn, count: int, to_send: bytes, answer: bytes
) -> None:
    """More slow connections than threads: others are answered at once; each is closed in time."""
    clients = open_slow_clients(server.port, count, to_send)
    took = under_attack(server, clients)

    assert max(took) <= PROMPT, f'normal requests took {[round(t, 2) for t in took]}s'
    check_closed_at_the_deadline(clients, answer)


def test_a_kept_alive_connections_next_head_has_its_own_deadline(server: Gunicorn) -> None:
    """30 connections trickle their second request: others are served; 408 from its first byte."""
    clients = open_slow_clients(server.port, 30, REQUEST_HEAD)
    for client in clients:
        client.sock.sendall(REQUEST_HEAD.replace(b'GET', b'HEAD'))
        answer = b''
        while b'\r\n\r\n' not in answer:
            answer += client.sock.recv(65536)
        assert answer.startswith(b'HTTP/1.1 200 OK'), answer
    # Idle, kept alive (gunicorn's keepalive is 5 s): none of this counts.
    time.sleep(1.0)
    now = time.monotonic()
    for client in clients:
        client.started = now  # the first byte of the next head goes out at once
    took = under_attack(server, clients)

    assert max(took) <= PROMPT, f'normal requests took {[round(t, 2) for t in took]}s'
    check_closed_at_the_deadline(clients, b'HTTP/1.1 408 Request Timeout')


def test_trickled_upload_bodies_hold_a_few_threads_and_the_rest_are_told_to_retry(
    server: Gunicorn,
) -> None:
    """80 uploads whose bodies trickle in, more than the 24 threads: each worker receives 6.

    The others wait for a body slot without a thread, and are answered 503 with
    Retry-After, without their bodies, once LOOK_MAX_QUEUE_SECONDS is over;
    normal requests meanwhile within a second.
    """
    clients = open_slow_clients(server.port, 80, b'\x89PNG' * 250, head=UPLOAD_HEAD)
    for client in clients:
        client.started = time.monotonic()
    took = under_attack(server, clients)

    assert max(took) <= PROMPT, f'normal requests took {[round(t, 2) for t in took]}s'
    refused = [client for client in clients if client.received.startswith(b'HTTP/1.1 503')]
    assert len(refused) >= len(clients) - 2 * MAX_CONCURRENT_UPLOADS, [
        client.received[:40] for client in clients
    ]
    for client in refused:
        assert b'\r\nretry-after: ' in client.received.lower(), client.received
        assert check_json_error(client.received, b'503')['title'] == 'Too many uploads'
        assert MAX_QUEUE_SECONDS <= client.held <= MAX_QUEUE_SECONDS + DEADLINE_SLACK, client.held


# -- the head still reaches gunicorn's parser ----------------------------------------


def exchange(port: int, *pieces: bytes, pause: float = 0.2) -> bytes:
    """Send ``pieces`` with ``pause`` between them; return all the server sent until it closed."""
    with socket.create_connection(('127.0.0.1', port), timeout=PROMPT + 5.0) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        received = b''
        while chunk := sock.recv(65536):
            received += chunk
    return received


def statuses(received: bytes) -> list[bytes]:
    """Return the status lines in a stream of responses."""
    return re.findall(rb'HTTP/1\.1 \d{3} [^\r]*', received)


def test_a_head_in_pieces_within_the_deadline_is_served(server: Gunicorn) -> None:
    """A head that arrives in pieces, a CRLF split among them, is one request."""
    closing = REQUEST_HEAD.replace(b'Accept', b'Connection: close\r\nAccept')
    received = exchange(server.port, closing[:5], closing[5:30], closing[30:-3], closing[-3:])
    assert statuses(received) == [b'HTTP/1.1 200 OK'], received[:300]


def test_pipelined_requests_are_answered_in_order(server: Gunicorn) -> None:
    """Requests sent back to back, the last one's head split across reads, all get answers."""
    last = b'GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
    received = exchange(server.port, REQUEST_HEAD + REQUEST_HEAD + last[:20], last[20:])
    assert statuses(received) == [b'HTTP/1.1 200 OK'] * 3, received[:300]
    assert received.rstrip().endswith(b'}')


@pytest.mark.parametrize(
    ('head', 'status', 'title'),
    [
        (b'GET /' + b'a' * 9000, b'414', 'Request line too long'),
        (
            b'GET /health HTTP/1.1\r\nX-Big: ' + b'b' * 9000 + b'\r\n\r\n',
            b'431',
            'Request header fields too large',
        ),
        (
            b'GET /health HTTP/1.1\r\n' + b'X-Many: c\r\n' * 101 + b'\r\n',
            b'431',
            'Request header fields too large',
        ),
        (b'GET /health HTTP/1.1\nHost: localhost', b'400', 'Bad request'),
        (b'GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n', b'400', 'Bad request'),
        (b'GET /health HTTP/9.9\r\nHost: localhost\r\n\r\n', b'400', 'Bad request'),
        (b'G\x00T /health HTTP/1.1\r\nHost: localhost\r\n\r\n', b'400', 'Bad request'),
    ],
    ids=[
        'request line too long',
        'field too large',
        'too many fields',
        'bare LF',
        'bad header name',
        'bad version',
        'bad method',
    ],
)
def test_a_head_gunicorn_refuses_is_refused_at_once_in_looks_error_shape(
    server: Gunicorn, head: bytes, status: bytes, title: str
) -> None:
    """gunicorn's own 400, 414 and 431 come at once, as JSON like every other error of look."""
    started = time.monotonic()
    received = exchange(server.port, head, pause=0)
    assert time.monotonic() - started < PROMPT
    assert check_json_error(received, status)['title'] == title


def test_graceful_stop_serves_a_head_under_way_and_closes_idle_connections(
    make_gunicorn: MakeGunicorn,
) -> None:
    """On SIGTERM a request whose head is under way is served, with Connection: close."""
    server = make_gunicorn(workers=1, environ={'LOOK_HEADER_TIMEOUT': str(HEADER_TIMEOUT)})
    idle = socket.create_connection(('127.0.0.1', server.port), timeout=10.0)
    begun = socket.create_connection(('127.0.0.1', server.port), timeout=10.0)
    with idle, begun, concurrent.futures.ThreadPoolExecutor(1) as background:
        begun.sendall(REQUEST_HEAD[:20])
        time.sleep(0.3)
        stopping = background.submit(server.stop)
        assert wait_until(lambda: 'Handling signal: term' in server.log(), 5.0), server.log()
        # NOTE: the master writes that line, then signals the worker: on a busy
        #   machine the rest of the head could reach a worker not yet stopping.
        #   Well within the head's deadline (HEADER_TIMEOUT).
        time.sleep(0.5)
        begun.sendall(REQUEST_HEAD[20:])
        answer = begun.recv(65536)
        assert idle.recv(65536) == b''  # closed, with nothing said
        stopping.result()

    assert statuses(answer) == [b'HTTP/1.1 200 OK'], answer[:300]
    assert b'\r\nConnection: close\r\n' in answer


def test_a_kept_alive_connection_serves_request_after_request(server: Gunicorn) -> None:
    """Keep-alive still works: one connection, many requests, one after another."""
    connection = connect(server.url)
    try:
        for _ in range(20):
            assert send(connection, 'GET', '/health').status == 200
    finally:
        connection.close()


# -- what the worker reads itself ------------------------------------------------------


def gunicorn_config(**settings: object) -> Config:
    """Return a gunicorn Config with ``settings``."""
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


@pytest.mark.parametrize(
    ('head', 'has_body'),
    [
        (b'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n', True),
        (b'POST /images HTTP/1.1\r\ncontent-length:7\r\n\r\n', True),
        (b'POST /images HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n', True),
        (b'POST /images HTTP/1.1\r\nContent-Length: 0\r\n\r\n', False),
        (b'DELETE /images/x.jpeg HTTP/1.1\r\nHost: localhost\r\n\r\n', False),
        (b'GET /health HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n', False),
    ],
)
def test_a_request_waits_for_a_body_slot_only_if_its_head_announces_a_body(
    head: bytes, has_body: bool
) -> None:
    assert declares_body(head) is has_body


def test_heads_are_read_by_the_main_loop_only_over_plain_http1(tmp_path: pathlib.Path) -> None:
    """Under TLS, HTTP/2, the PROXY protocol or uWSGI the worker is gthread as it is."""
    key = tmp_path / 'key.pem'
    key.write_text('')
    assert reads_heads(gunicorn_config())
    assert reads_heads(gunicorn_config(http_protocols='h2,h1'))  # HTTP/2 needs TLS or h2c
    assert not reads_heads(gunicorn_config(certfile=str(key), keyfile=str(key)))
    assert not reads_heads(
        gunicorn_config(http2_cleartext='prior-knowledge', http_protocols='h2,h1')
    )
    assert not reads_heads(gunicorn_config(proxy_protocol='v1'))
    assert not reads_heads(gunicorn_config(protocol='uwsgi'))


@pytest.mark.parametrize('value', ['soon', '0', '-1', 'inf'])
def test_a_bad_header_timeout_stops_start_up_naming_the_variable(value: str) -> None:
    """gunicorn.conf.py refuses a LOOK_HEADER_TIMEOUT that is not a number of seconds above 0."""
    result = subprocess.run(
        [sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', '--check-config', 'x:y'],
        cwd=REPO_ROOT,
        env={**os.environ, 'LOOK_HEADER_TIMEOUT': value},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert result.returncode != 0
    assert f'LOOK_HEADER_TIMEOUT must be a number of seconds greater than 0, got {value!r}' in (
        result.stderr.decode()
    )
