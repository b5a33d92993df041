"""Domain exceptions, and the one place that turns them into HTTP errors.

The store and the thumbnailer raise these without knowing about HTTP; they
also cross the process-pool boundary, so each one pickles with its message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from collections.abc import Iterator
from typing import Any

import falcon

log = logging.getLogger(__name__)


class LookError(Exception):
    """Base class: ``str(error)`` is the description a client sees."""

    title = 'Error'
    status = falcon.HTTP_500

    def __init__(self, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        if retry_after is not None:
            self.retry_after = retry_after  # seconds; for an error worth retrying


class ImageNotFound(LookError):
    title = 'Image not found'
    status = falcon.HTTP_404


class NoSuchThumbnailSize(ImageNotFound):
    """The image exists, but has no thumbnail of the size asked for."""

    title = 'No such thumbnail size'


class EmptyUpload(LookError):
    title = 'Empty upload'
    status = falcon.HTTP_400


class BadUpload(LookError):
    title = 'Malformed upload'
    status = falcon.HTTP_400


class CorruptImage(LookError):
    title = 'Corrupt image'
    status = falcon.HTTP_400


class UnsupportedImage(LookError):
    title = 'Unsupported media type'
    status = falcon.HTTP_415


class UploadTooLarge(LookError):
    title = 'Upload too large'
    status = falcon.HTTP_413


class UploadTimeout(LookError):
    title = 'Upload too slow'
    status = falcon.HTTP_408


class TooManyUploads(LookError):
    """Every upload slot of this worker stayed busy for as long as an upload may wait."""

    title = 'Too many uploads'
    status = falcon.HTTP_503
    retry_after = 1


class ImageTooLarge(LookError):
    title = 'Image too large'
    status = falcon.HTTP_413


class ImageTooComplex(LookError):
    """The image is built as no real encoder builds it (scans, chunks, blocks)."""

    title = 'Image too complex'
    status = falcon.HTTP_422


class ThumbnailerUnavailable(LookError):
    """The render could not be done now; the client should retry shortly."""

    title = 'Thumbnailer unavailable'
    status = falcon.HTTP_503
    retry_after = 1


class ThumbnailerBusy(ThumbnailerUnavailable):
    """The image processes have more work queued than a request may wait for; nothing started."""

    title = 'Image processes busy'


class StorageError(LookError):
    """The disk refused a write (full, read-only); nothing was stored."""

    title = 'Storage unavailable'
    status = falcon.HTTP_507


class ImageExists(LookError):
    """An image with this id is stored already (ids are never reused)."""

    title = 'Image exists'
    status = falcon.HTTP_409


class BackendUnavailable(LookError):
    """The index or the image store does not answer now; the client should retry."""

    title = 'Service unavailable'
    status = falcon.HTTP_503
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


def _handle_look_error(
    req: falcon.Request, resp: falcon.Response, ex: LookError, params: dict[str, Any]
) -> None:
    headers = {}
    retry_after = getattr(ex, 'retry_after', None)
    if retry_after is not None:
        headers['Retry-After'] = str(retry_after)
    raise falcon.HTTPError(ex.status, title=ex.title, description=ex.description, headers=headers)


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    # NOTE: every error is JSON with both keys, whatever the client accepts,
    #   so scripts can always read `description`.
    title = ex.title or resp.status
    description = ex.description or _DEFAULT_DESCRIPTIONS.get(ex.status_code, title)
    if ex.status_code >= 500:
        # One line per server-side failure; 503 and 507 are look protecting itself.
        level = logging.ERROR if ex.status_code == 500 else logging.WARNING
        log.log(
            level,
            '%s %s answered %d %s: %s',
            req.method,
            req.path,
            ex.status_code,
            title,
            description,
        )
    # NOTE: a resource may have set an image's validators before the work
    #   that failed; the error must not be kept for a year as that image.
    resp.delete_header('ETag')
    resp.delete_header('Last-Modified')
    resp.cache_control = ['no-store']
    resp.data = json.dumps({'title': title, 'description': description}).encode()
    resp.content_type = falcon.MEDIA_JSON


_DEFAULT_DESCRIPTIONS = {
    400: 'The request could not be understood.',
    408: 'The request did not arrive in time.',
    404: 'There is nothing at this address.',
    405: 'This method is not allowed here; see the Allow header.',
    413: 'The request body is larger than this service accepts.',
    500: 'The service failed to answer this request.',
}


def add_error_handlers(app: falcon.App) -> None:
    """Map domain exceptions to HTTP and give every error one JSON shape."""
    app.add_error_handler(LookError, _handle_look_error)
    app.set_error_serializer(_serialize_error)
