"""Receiving an upload: stream the body to a file, a chunk at a time, within limits.

The web worker never holds more than one chunk of a body in memory, and a
client cannot hold a worker thread for longer than ``deadline`` seconds by
trickling its upload.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import IO

import falcon

from look.errors import EmptyUpload, UploadTimeout, UploadTooLarge, refused_writes

CHUNK_SIZE = 64 * 1024
_FORM_OVERHEAD = 1024 * 1024
_MULTIPART = falcon.media.MultipartFormHandler()
# NOTE: a body that stops arriving for this long is abandoned.
IDLE_TIMEOUT = 15.0


def receive(req: falcon.Request, out: IO[bytes], *, max_bytes: int, deadline: float) -> int:
    """Copy the image in the request body (raw or multipart) into ``out``; return its size."""
    length = req.content_length
    if length is not None and length > max_bytes:
        _stop_reading(req)
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
        except UploadTooLarge:
            _stop_reading(req)
            raise
        except (OSError, falcon.MediaMalformedError) as ex:
            if timed_out.is_set() or isinstance(ex, TimeoutError):
                _stop_reading(req)
                raise UploadTimeout(
                    f'The upload did not arrive within {deadline:g}s; send it faster or smaller.'
                ) from None
            if isinstance(ex, OSError):
                # The client went away mid-body (reset, or gunicorn's NoMoreData);
                # a full disk was already turned into StorageError.
                raise UploadTimeout('The upload stopped before the whole body arrived.') from ex
            raise
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
    # The field named "image" wins; otherwise the first file part.
    received = None
    for part in form:
        is_image_field = part.name == 'image'
        if is_image_field or (received is None and part.filename):
            out.seek(0)
            out.truncate()
            received = _copy(part.stream, out, max_bytes)
            if is_image_field:
                break
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


def _too_large(max_bytes: int) -> str:
    return f'The upload is larger than the limit of {max_bytes} bytes.'


@contextlib.contextmanager
def _time_limit(req: falcon.Request, deadline: float) -> Iterator[threading.Event]:
    """Bound how long reading the body may take, where the server gives us its socket."""
    timed_out = threading.Event()
    sock = req.env.get('gunicorn.socket')
    if not isinstance(sock, socket.socket):
        yield timed_out
        return

    def cut_off() -> None:
        timed_out.set()
        _shutdown_read(sock)

    sock.settimeout(IDLE_TIMEOUT)
    timer = threading.Timer(deadline, cut_off)
    timer.daemon = True
    timer.start()
    try:
        yield timed_out
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def _stop_reading(req: falcon.Request) -> None:
    # NOTE: without this, gunicorn would read and discard the rest of a
    #   refused body before the next request on the connection, at whatever
    #   pace the client chooses. The response still goes out.
    sock = req.env.get('gunicorn.socket')
    if isinstance(sock, socket.socket):
        _shutdown_read(sock)


def _shutdown_read(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
