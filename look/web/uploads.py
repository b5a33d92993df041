"""Receiving an upload: stream the body to a file, a chunk at a time, within limits.

The web worker never holds more than one chunk of a body in memory, a client
cannot hold a worker thread for longer than ``deadline`` seconds by
trickling its upload, and only so many bodies are received at once, so
uploads never take every thread from downloads and cache hits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

import falcon

from look.core.lazy import PerProcess
from look.core.spool import SpoolFile
from look.errors import (
    BadUpload,
    EmptyUpload,
    LookError,
    TooManyUploads,
    UnsupportedImage,
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


# An image's alt text: what it shows, for people who cannot see it (the longest a
# caption on the image hosts people know runs, and more than any screen reader reads out).
MAX_ALT_CHARS = 1000
# The most bytes of a form's text field read: 1 000 characters of up to 4 UTF-8 bytes
# each, and room for the spaces around them that are dropped.
MAX_FIELD_BYTES = 4 * MAX_ALT_CHARS + 1024
# NOTE: the most files one browser form post may carry: a batch people pick
#   at once (12 photos, say) passes; each takes a conversion of the worker's
#   pool, so a form of hundreds would hold its thread for minutes.
MAX_FORM_FILES = 20


class AltTooLong(BadUpload):
    title = 'Alt text too long'


class TooManyFiles(BadUpload):
    title = 'Too many files'


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """An upload received: its bytes, and the alt text its form gave (empty without one)."""

    length: int
    alt: str = ''


@dataclasses.dataclass
class FormFile:
    """One file of a browser form post: where it went, its alt text, or why it was refused."""

    filename: str
    length: int = 0
    alt: str = ''
    spooled: SpoolFile | None = None
    error: LookError | None = None


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

    def receive(self, req: falcon.Request, out: IO[bytes]) -> Received:
        """Copy the image in the request body into ``out``; return its size and alt text.

        Raise TooManyUploads, before reading, when no slot comes free in time.
        """
        with self._slot():
            return receive(req, out, max_bytes=self.max_bytes, deadline=self.deadline)

    def receive_files(
        self, req: falcon.Request, create: Callable[[], SpoolFile]
    ) -> list[FormFile]:
        """Copy every file of a multipart form into a spool file of its own (``create``).

        Each file is held to the limit of one upload; a file over it, or past
        the first MAX_FORM_FILES, is refused on its own (``FormFile.error``)
        and the others are kept. The caller closes every ``spooled``.
        """
        with self._slot():
            return receive_files(
                req,
                create,
                max_bytes=self.max_bytes,
                max_files=MAX_FORM_FILES,
                deadline=self.deadline,
            )

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
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
            yield
        finally:
            self._slots.release()
            took = time.monotonic() - started
            with self._lock:
                self._receive_seconds += RECEIVE_WEIGHT * (took - self._receive_seconds)


def receive(req: falcon.Request, out: IO[bytes], *, max_bytes: int, deadline: float) -> Received:
    """Copy the image in the request body (raw or multipart) into ``out``; return what came."""
    length = req.content_length
    # NOTE: a body refused unread is left unread: gunicorn (27 and later)
    #   reads at most 64 KiB of it after the answer, then closes the
    #   connection. Shutting the socket's read side would not stop later
    #   bytes; it only ends the first read early, and gunicorn then took
    #   that for the end of the body and read on, all 30 MiB of it.
    if length is not None and length > max_bytes:
        raise UploadTooLarge(_too_large(max_bytes))

    with _reading(req, deadline) as body:
        if is_form(req):
            received = _receive_multipart(req, body, out, max_bytes)
        else:
            received = Received(_copy(body, out, max_bytes))
            if length is not None and received.length < length:
                raise UploadTimeout('The upload stopped before the whole body arrived.')

    if received.length == 0:
        raise EmptyUpload('The request body is empty; send the image as the body.')
    with refused_writes():
        out.flush()
    return received


def receive_files(
    req: falcon.Request,
    create: Callable[[], SpoolFile],
    *,
    max_bytes: int,
    max_files: int,
    deadline: float,
) -> list[FormFile]:
    """Copy each file of a multipart form into its own spool file; see Receiver.receive_files.

    The n-th ``alt`` field describes the n-th file, as a form lists them.
    """
    if not is_form(req):
        raise UnsupportedImage(
            'A form post is multipart/form-data, with its files in fields named "image".'
        )
    form_limit = max_files * max_bytes + _FORM_OVERHEAD
    if req.content_length is not None and req.content_length > form_limit:
        raise UploadTooLarge(
            f'The form is larger than the limit of {max_files} files of {max_bytes} bytes each.'
        )
    files: list[FormFile] = []
    alts: list[str] = []
    try:
        with _reading(req, deadline) as body:
            form = _MULTIPART.deserialize(body, req.content_type, form_limit)
            for part in form:
                if part.filename is None:
                    if part.name == 'alt':
                        alts.append(_read_field(part.stream))
                    else:
                        _discard(part.stream, max_bytes)
                    continue
                wanted = len(files) < max_files
                files.append(_receive_file(part, create, max_bytes, form_limit, wanted))
    except BaseException:
        for file in files:
            if file.spooled is not None:
                file.spooled.close()
        raise
    # NOTE: a file input left empty still sends one part, with no name and no bytes.
    files = [file for file in files if file.filename or file.length or file.error]
    for number, file in enumerate(files):
        alt = alts[number] if number < len(alts) else ''
        try:
            file.alt = checked_alt(alt)
        except AltTooLong as ex:
            file.error = file.error or ex
    if not files:
        raise EmptyUpload('The form has no file; choose one or more images to upload.')
    return files


def _receive_file(
    part: falcon.media.multipart.BodyPart,
    create: Callable[[], SpoolFile],
    max_bytes: int,
    form_limit: int,
    wanted: bool,
) -> FormFile:
    file = FormFile(filename=_file_name(part.filename))
    if not wanted:
        _discard(part.stream, form_limit)  # the form as a whole is within it
        file.error = TooManyFiles(f'A form may carry at most {MAX_FORM_FILES} files.')
        return file
    spooled = create()
    try:
        file.length = _copy(part.stream, spooled.file, max_bytes)
        with refused_writes():
            spooled.file.flush()
    except UploadTooLarge as ex:
        spooled.close()
        _discard(part.stream, form_limit)  # the form as a whole is within it
        file.error = ex
        return file
    except BaseException:
        spooled.close()
        raise
    if file.length == 0:
        spooled.close()
        if file.filename:
            file.error = EmptyUpload('The file is empty.')
        return file
    file.spooled = spooled
    return file


def _file_name(name: str) -> str:
    """Return a file name as a page may show it: its last part, at most 200 characters."""
    name = name.replace('\\', '/').rpartition('/')[2]
    return ''.join(c for c in name if c.isprintable())[:200]


def checked_alt(alt: str) -> str:
    """Return an alt text as look keeps it (spaces at its ends dropped); BadUpload if too long."""
    alt = alt.strip()
    if len(alt) > MAX_ALT_CHARS:
        raise AltTooLong(
            f'The alt text is {len(alt)} characters long; the limit is {MAX_ALT_CHARS}.'
        )
    return alt


def is_form(req: falcon.Request) -> bool:
    """Return whether the request body is a multipart form."""
    return bool(req.content_type) and req.content_type.lower().startswith('multipart/form-data')


@contextlib.contextmanager
def _reading(req: falcon.Request, deadline: float) -> Iterator[IO[bytes]]:
    """Give the body to read within the deadline; turn a failed read into look's errors."""
    with _time_limit(req, deadline) as timed_out:
        try:
            # NOTE: without a Content-Length (chunked), Falcon's bounded_stream
            #   reads as empty; gunicorn ends wsgi.input at the end of the body.
            yield req.bounded_stream if req.content_length is not None else req.stream
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


def _read_field(stream: IO[bytes]) -> str:
    """Return a text field of a form; BadUpload if it is longer than any alt text can be."""
    data = stream.read(MAX_FIELD_BYTES + 1)
    if len(data) > MAX_FIELD_BYTES:
        _discard(stream, MAX_FIELD_BYTES * 1024)
        raise AltTooLong(f'The alt text is longer than the limit of {MAX_ALT_CHARS} characters.')
    # NOTE: a browser sends a form's text in the page's encoding, UTF-8; a
    #   byte that is none is shown as U+FFFD rather than refuse the image.
    return data.decode(errors='replace')


def _receive_multipart(
    req: falcon.Request, body: IO[bytes], out: IO[bytes], max_bytes: int
) -> Received:
    # Room for the form's other fields and boundaries around a file of max_bytes.
    form_limit = req.content_length or max_bytes + _FORM_OVERHEAD
    form = _MULTIPART.deserialize(body, req.content_type, form_limit)
    # The first field named "image" wins; otherwise the first file part.
    received = None
    found_image_field = False
    alt = None
    for part in form:
        is_image_field = part.name == 'image'
        if not found_image_field and (is_image_field or (received is None and part.filename)):
            out.seek(0)
            out.truncate()
            received = _copy(part.stream, out, max_bytes)
            found_image_field = is_image_field
        elif part.name == 'alt' and part.filename is None and alt is None:
            alt = _read_field(part.stream)
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
    return Received(received, checked_alt(alt or ''))


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
