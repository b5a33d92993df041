"""Receiving an upload: stream the body to a file, a chunk at a time, within limits.

The web worker never holds more than one chunk of a body in memory, a client
cannot hold a worker thread for longer than ``deadline`` seconds by
trickling its upload, and only so many bodies are received at once, so
uploads never take every thread from downloads and cache hits.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import IO

import falcon

from look.core.lazy import PerProcess
from look.errors import (
    BadUpload,
    EmptyUpload,
    LookError,
    TooManyUploads,
    UploadTimeout,
    UploadTooLarge,
    refused_writes,
)

CHUNK_SIZE = 64 * 1024
_FORM_OVERHEAD = 1024 * 1024
_MULTIPART = falcon.media.MultipartFormHandler()
# NOTE: a body that stops arriving for this long is abandoned.
IDLE_TIMEOUT = 15.0
# What receiving a body takes before any has been received here, and how much
# each one received moves that estimate (for the Retry-After of a refusal).
FIRST_RECEIVE_SECONDS = 0.1
RECEIVE_WEIGHT = 0.25


class Receiver:
    """Receive upload bodies within a size limit, a deadline and a number at once.

    An upload that finds every slot taken waits for one, up to ``max_wait``
    seconds. (Under gunicorn, look's worker keeps such requests off its
    threads until a slot is free; this bound is for any other server.)
    """

    def __init__(
        self, *, max_bytes: int, deadline: float, max_at_once: int, max_wait: float
    ) -> None:
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.max_at_once = max_at_once
        self.max_wait = max_wait
        self._slots = threading.BoundedSemaphore(max_at_once)
        self._lock = threading.Lock()
        self._waiting = 0
        self._receive_seconds = FIRST_RECEIVE_SECONDS

    def receive(self, req: falcon.Request, out: IO[bytes]) -> int:
        """Copy the image in the request body into ``out``; return its size.

        Raise TooManyUploads, before reading, when no slot comes free in time.
        """
        with self._lock:
            self._waiting += 1
        try:
            admitted = self._slots.acquire(timeout=self.max_wait)
        finally:
            with self._lock:
                self._waiting -= 1
                waiting = self._waiting
        if not admitted:
            wait = (waiting + 1) * self._receive_seconds / self.max_at_once
            raise TooManyUploads(
                f'{self.max_at_once} uploads were being received here for all of the '
                f'{self.max_wait:g}s an upload may wait for its turn; try again shortly.',
                retry_after=max(1, math.ceil(wait)),
            )
        started = time.monotonic()
        try:
            return receive(req, out, max_bytes=self.max_bytes, deadline=self.deadline)
        finally:
            self._slots.release()
            took = time.monotonic() - started
            with self._lock:
                self._receive_seconds += RECEIVE_WEIGHT * (took - self._receive_seconds)


def receive(req: falcon.Request, out: IO[bytes], *, max_bytes: int, deadline: float) -> int:
    """Copy the image in the request body (raw or multipart) into ``out``; return its size."""
    length = req.content_length
    # NOTE: a body refused unread is left unread: gunicorn (27 and later)
    #   reads at most 64 KiB of it after the answer, then closes the
    #   connection. Shutting the socket's read side would not stop later
    #   bytes; it only ends the first read early, and gunicorn then took
    #   that for the end of the body and read on, all 30 MiB of it.
    if length is not None and length > max_bytes:
        raise UploadTooLarge(_too_large(max_bytes))

    with _time_limit(req, deadline) as timed_out:
        try:
            # NOTE: without a Content-Length (chunked), Falcon's bounded_stream
            #   reads as empty; gunicorn ends wsgi.input at the end of the body.
            body = req.bounded_stream if length is not None else req.stream
            if req.content_type and req.content_type.lower().startswith('multipart/form-data'):
                received = _receive_multipart(req, body, out, max_bytes)
            else:
                received = _copy(body, out, max_bytes)
                if length is not None and received < length:
                    raise UploadTimeout('The upload stopped before the whole body arrived.')
        except (LookError, falcon.HTTPError):
            raise  # our own answers, and Falcon's 400 for a malformed form
        except Exception as ex:
            # Reading the body failed. A full disk was already turned into
            # StorageError, so this is the client's doing: too slow, gone, or
            # a broken framing that the server's parser refused.
            if timed_out.is_set() or isinstance(ex, TimeoutError):
                raise UploadTimeout(
                    f'The upload did not arrive within {deadline:g}s; send it faster or smaller.'
                ) from None
            if isinstance(ex, OSError):
                raise UploadTimeout('The upload stopped before the whole body arrived.') from ex
            raise BadUpload(f'The request body could not be read: {ex}') from ex
        if timed_out.is_set():
            raise UploadTimeout('The upload stopped before the whole body arrived.')

    if received == 0:
        raise EmptyUpload('The request body is empty; send the image as the body.')
    with refused_writes():
        out.flush()
    return received


def _receive_multipart(
    req: falcon.Request, body: IO[bytes], out: IO[bytes], max_bytes: int
) -> int:
    # Room for the form's other fields and boundaries around a file of max_bytes.
    form_limit = req.content_length or max_bytes + _FORM_OVERHEAD
    form = _MULTIPART.deserialize(body, req.content_type, form_limit)
    # The first field named "image" wins; otherwise the first file part.
    received = None
    found_image_field = False
    for part in form:
        is_image_field = part.name == 'image'
        if not found_image_field and (is_image_field or (received is None and part.filename)):
            out.seek(0)
            out.truncate()
            received = _copy(part.stream, out, max_bytes)
            found_image_field = is_image_field
        else:
            # NOTE: the rest of the form is read too (and thrown away, within
            #   the form's limit): an answer sent before the body is read
            #   would reach a client that is still sending, which may never see it.
            _discard(part.stream, max_bytes)
    if received is None:
        raise EmptyUpload(
            'The form has no file; send the image in a field named "image" '
            '(curl -F image=@photo.jpg).'
        )
    return received


def _copy(stream: IO[bytes], out: IO[bytes], max_bytes: int) -> int:
    received = 0
    while chunk := stream.read(CHUNK_SIZE):
        received += len(chunk)
        if received > max_bytes:
            raise UploadTooLarge(_too_large(max_bytes))
        with refused_writes():
            out.write(chunk)
    return received


def _discard(stream: IO[bytes], max_bytes: int) -> None:
    received = 0
    while chunk := stream.read(CHUNK_SIZE):
        received += len(chunk)
        if received > max_bytes:
            raise UploadTooLarge(_too_large(max_bytes))


def _too_large(max_bytes: int) -> str:
    return f'The upload is larger than the limit of {max_bytes} bytes.'


class _DeadlineWatch:
    """A thread that cuts off uploads past their deadline: one per process, made on first use.

    Cheaper than a timer thread per upload: registering is a dict update.
    """

    INTERVAL = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, socket.socket, threading.Event]] = {}
        threading.Thread(target=self._run, daemon=True, name='look-uploads').start()

    def watch(self, sock: socket.socket, seconds: float) -> tuple[int, threading.Event]:
        timed_out = threading.Event()
        token = id(timed_out)
        with self._lock:
            self._watched[token] = (time.monotonic() + seconds, sock, timed_out)
        return token, timed_out

    def forget(self, token: int) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL)
            now = time.monotonic()
            with self._lock:
                expired = [token for token, (due, _, _) in self._watched.items() if due <= now]
                entries = [self._watched.pop(token) for token in expired]
            for _, sock, timed_out in entries:
                timed_out.set()
                _shutdown_read(sock)


_deadlines = PerProcess(_DeadlineWatch)


@contextlib.contextmanager
def _time_limit(req: falcon.Request, deadline: float) -> Iterator[threading.Event]:
    """Bound how long reading the body may take, where the server gives us its socket."""
    sock = req.env.get('gunicorn.socket')
    if not isinstance(sock, socket.socket):
        yield threading.Event()
        return

    sock.settimeout(IDLE_TIMEOUT)
    token, timed_out = _deadlines.get().watch(sock, deadline)
    try:
        yield timed_out
    finally:
        _deadlines.get().forget(token)
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def _shutdown_read(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
