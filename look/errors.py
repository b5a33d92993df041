"""Domain exceptions: what went wrong, in words a client can read, and no HTTP.

Every floor raises these; the web floor alone maps them to HTTP statuses, in
one table (``look.web.errors``). They cross the process-pool boundary too,
so each one pickles with its message.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class ConfigError(ValueError):
    """A setting is invalid, or names a backend that cannot be used; the message names it."""


class LookError(Exception):
    """Base class: ``str(error)`` is the description a client sees."""

    title = 'Error'

    def __init__(self, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        if retry_after is not None:
            self.retry_after = retry_after  # seconds; for an error worth retrying


class ImageNotFound(LookError):
    title = 'Image not found'


class NoSuchThumbnailSize(ImageNotFound):
    """The image exists, but has no thumbnail of the size asked for."""

    title = 'No such thumbnail size'


class EmptyUpload(LookError):
    title = 'Empty upload'


class BadUpload(LookError):
    title = 'Malformed upload'


class CorruptImage(LookError):
    title = 'Corrupt image'


class UnsupportedImage(LookError):
    title = 'Unsupported media type'


class UploadTooLarge(LookError):
    title = 'Upload too large'


class UploadTimeout(LookError):
    title = 'Upload too slow'


class TooManyUploads(LookError):
    """Every upload slot of this worker stayed busy for as long as an upload may wait."""

    title = 'Too many uploads'
    retry_after = 1


class ImageTooLarge(LookError):
    title = 'Image too large'


class ImageTooComplex(LookError):
    """The image is built as no real encoder builds it (scans, chunks, blocks)."""

    title = 'Image too complex'


class ThumbnailerUnavailable(LookError):
    """The render could not be done now; the client should retry shortly."""

    title = 'Thumbnailer unavailable'
    retry_after = 1


class ThumbnailerBusy(ThumbnailerUnavailable):
    """The image processes have more work queued than a request may wait for; nothing started."""

    title = 'Image processes busy'


class StorageError(LookError):
    """The disk refused a write (full, read-only); nothing was stored."""

    title = 'Storage unavailable'


class ImageExists(LookError):
    """An image with this id is stored already (ids are never reused)."""

    title = 'Image exists'


class BackendUnavailable(LookError):
    """The index or the image store does not answer now; the client should retry."""

    title = 'Service unavailable'
    retry_after = 5


class BackendUnreachable(BackendUnavailable):
    """The index or the image store could not be reached at all: nothing was written there."""


# The errors of a disk that cannot take a write, as opposed to a bug.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


@contextlib.contextmanager
def refused_writes() -> Iterator[None]:
    """Turn a full or failing disk into StorageError; other errors pass through."""
    try:
        yield
    except OSError as ex:
        if ex.errno in STORAGE_ERRNOS:
            raise StorageError(f'The image could not be stored: {ex.strerror or ex}.') from ex
        raise
