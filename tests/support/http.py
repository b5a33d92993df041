"""HTTP as a client on loopback sees it: one request per connection, forms, slow clients."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Self


@dataclasses.dataclass(frozen=True)
class Response:
    """What came back: status, headers (case-insensitive) and the whole body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        """Return a header's value, or None."""
        return self.headers.get(name)

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


def send(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
) -> Response:
    """Send one request on an open connection and read the whole response."""
    headers = dict(headers or {})
    # NOTE: a server may answer before reading the whole body (a 413) and
    #   stop reading (RFC 9112, section 9.6); look shuts the read side, and
    #   gunicorn drains at most 64 KiB. Like curl, read that early answer.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        connection.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    if connection.sock is None:  # the send failed, and took the connection with it
        raise ConnectionResetError(f'{method} {path}: the connection closed while sending')
    response = connection.getresponse()
    return Response(response.status, response.headers, response.read())


def connect(url: str, timeout: float = 30.0) -> http.client.HTTPConnection:
    """Return an unopened connection to the host and port of ``url``."""
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or '127.0.0.1', parts.port, timeout=timeout)


def request(
    method: str,
    url: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    timeout: float = 30.0,
) -> Response:
    """Send one request on a new connection, so any worker may answer it.

    ``url`` is sent as written (no normalisation of ``..``); with ``chunked``
    the body (bytes or an iterable of bytes) goes without Content-Length.
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f'?{parts.query}' if parts.query else '')
    connection = connect(url, timeout)
    try:
        return send(connection, method, path, body, headers, chunked=chunked)
    finally:
        connection.close()


def get(url: str, headers: Mapping[str, str] | None = None) -> Response:
    """GET ``url`` on a new connection."""
    return request('GET', url, headers=headers)


def post(url: str, body: bytes, content_type: str = 'application/octet-stream') -> Response:
    """POST ``body`` to ``url`` on a new connection."""
    return request('POST', url, body, {'Content-Type': content_type})


def multipart(
    field: str, filename: str, data: bytes, content_type: str, boundary: str | None = None
) -> tuple[bytes, str]:
    """Return a multipart/form-data body with one file field, and its Content-Type."""
    boundary = boundary or f'look-test-{os.urandom(8).hex()}'
    body = b''.join(
        (
            f'--{boundary}\r\n'.encode(),
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode(),
            f'Content-Type: {content_type}\r\n\r\n'.encode(),
            data,
            f'\r\n--{boundary}--\r\n'.encode(),
        )
    )
    return body, f'multipart/form-data; boundary={boundary}'


def form_body(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """Return a multipart/form-data body and its Content-Type; parts are (name, filename, data).

    A part with a filename is a file, as a browser sends one; one without is a text field.
    """
    boundary = 'look-test-7f3a'
    body = b''
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f'--{boundary}\r\nContent-Disposition: {disposition}\r\n'.encode()
        if filename is not None:
            body += b'Content-Type: application/octet-stream\r\n'
        body += b'\r\n' + data + b'\r\n'
    body += f'--{boundary}--\r\n'.encode()
    return body, f'multipart/form-data; boundary={boundary}'


@dataclasses.dataclass
class SlowClient:
    """One connection that sends its bytes slowly, and what the server did with it."""

    sock: socket.socket
    to_send: bytes
    started: float  # when it connected, or (reset by the caller) sent its first byte
    received: bytes = b''
    closed_at: float | None = None

    @property
    def held(self) -> float:
        """Seconds from ``started`` until the server closed the connection (inf if it did not)."""
        return float('inf') if self.closed_at is None else self.closed_at - self.started


def open_slow_clients(
    port: int, count: int, to_send: bytes, head: bytes = b''
) -> list[SlowClient]:
    """Connect ``count`` clients to 127.0.0.1:``port``, each sending ``head`` at once.

    ``to_send`` is what each will trickle (see ``trickle``).
    """
    clients = []
    for _ in range(count):
        sock = socket.create_connection(('127.0.0.1', port), timeout=5.0)
        clients.append(SlowClient(sock, to_send, time.monotonic()))
        if head:
            sock.sendall(head)
    return clients


def trickle(clients: list[SlowClient], interval: float, until: float) -> None:
    """Send each client's bytes one per ``interval`` s; note answers and closes until ``until``.

    One thread and a selector for all of them, as a cheap attacker would.
    Every socket is closed on return.
    """
    with selectors.DefaultSelector() as selector:
        for client in clients:
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, client)
        next_byte = time.monotonic()
        still_open = len(clients)
        while still_open and time.monotonic() < until:
            timeout = max(0.0, min(next_byte, until) - time.monotonic())
            for key, _ in selector.select(timeout):
                client = key.data
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b''
                if data:
                    client.received += data
                    continue
                client.closed_at = time.monotonic()
                selector.unregister(client.sock)
                still_open -= 1
            if time.monotonic() >= next_byte:
                next_byte += interval
                for client in clients:
                    if client.closed_at is None and client.to_send:
                        try:
                            client.sock.send(client.to_send[:1])
                        except OSError:
                            continue  # closed by the server: the selector reports it
                        client.to_send = client.to_send[1:]
    for client in clients:
        client.sock.close()


class ClientThreads:
    """Client threads that run ``_run(*args)`` until stopped; a context manager.

    A load of a test (uploaders, a storm) subclasses it: ``_run`` works until
    ``self._stop`` is set, and notes what came back under ``self._lock``.
    """

    def __init__(self, args: list[tuple[object, ...]]) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=each, daemon=True) for each in args
        ]

    def _run(self, *args: object) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the clients and wait for their threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
