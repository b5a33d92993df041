"""The one table from domain errors to HTTP, and the one JSON shape of every error.

Every error look answers is ``{"title": ..., "description": ...}``, so a
script can always read ``description``; only a browser's navigation (a
request that prefers ``text/html``) to an address that is none, with a body
too large or of a kind look does not read, gets a page in the gallery's look
instead, with the same words and a way back to the gallery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import falcon

from look.errors import (
    BackendUnavailable,
    BadUpload,
    CorruptImage,
    EmptyUpload,
    ImageExists,
    ImageNotFound,
    ImageTooComplex,
    ImageTooLarge,
    LookError,
    StorageError,
    ThumbnailerUnavailable,
    TooManyUploads,
    UnsupportedImage,
    UploadTimeout,
    UploadTooLarge,
)

log = logging.getLogger(__name__)


# The status of each domain error; a subclass answers as its nearest listed class.
STATUSES: dict[type[LookError], str] = {
    ImageNotFound: falcon.HTTP_404,
    EmptyUpload: falcon.HTTP_400,
    BadUpload: falcon.HTTP_400,
    CorruptImage: falcon.HTTP_400,
    UploadTimeout: falcon.HTTP_408,
    ImageExists: falcon.HTTP_409,
    UploadTooLarge: falcon.HTTP_413,
    ImageTooLarge: falcon.HTTP_413,
    UnsupportedImage: falcon.HTTP_415,
    ImageTooComplex: falcon.HTTP_422,
    TooManyUploads: falcon.HTTP_503,
    ThumbnailerUnavailable: falcon.HTTP_503,
    BackendUnavailable: falcon.HTTP_503,
    StorageError: falcon.HTTP_507,
}


_Value = TypeVar('_Value')


def nearest(
    table: Mapping[type[LookError], _Value], error: type[LookError], default: _Value
) -> _Value:
    """Return what ``table`` says of ``error``, or of its nearest listed base class."""
    for kind in error.__mro__:
        if kind in table:
            return table[kind]
    return default


def status_of(error: type[LookError]) -> str:
    """Return the HTTP status a domain error answers with (500 for one not in the table)."""
    return nearest(STATUSES, error, falcon.HTTP_500)


def _handle_look_error(
    req: falcon.Request, resp: falcon.Response, ex: LookError, params: dict[str, Any]
) -> None:
    headers = {}
    retry_after = getattr(ex, 'retry_after', None)
    if retry_after is not None:
        headers['Retry-After'] = str(retry_after)
    raise falcon.HTTPError(
        status_of(type(ex)), title=ex.title, description=ex.description, headers=headers
    )


# The errors a person meets in a browser: a link to an image deleted since, a
# typed address, a form's file too large or of the wrong kind.
HTML_ERROR_STATUSES = frozenset({404, 413, 415})


class ErrorPage:
    """What a page of an error is: its HTML and the headers a gallery page goes out with."""

    def __init__(
        self, render: Callable[[int, str, str], bytes], headers: Mapping[str, str]
    ) -> None:
        self.render = render
        self.headers = dict(headers)


def prefers_html(req: falcon.Request) -> bool:
    """Return whether a request is a browser's navigation: it prefers a page to JSON."""
    return (
        'text/html' in req.accept
        and req.client_prefers((falcon.MEDIA_JSON, falcon.MEDIA_HTML)) == falcon.MEDIA_HTML
    )


def _serializer(
    page: ErrorPage | None,
) -> Callable[[falcon.Request, falcon.Response, falcon.HTTPError], None]:
    def serialize(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
        _serialize_error(req, resp, ex)
        if page is not None and ex.status_code in HTML_ERROR_STATUSES and prefers_html(req):
            title, description = json.loads(resp.data).values()
            resp.set_headers({**page.headers, 'Content-Type': falcon.MEDIA_HTML})
            resp.append_header('Vary', 'Accept')
            resp.data = page.render(ex.status_code, title, description)
        elif ex.status_code in HTML_ERROR_STATUSES:
            resp.append_header('Vary', 'Accept')

    return serialize


def _serialize_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    # NOTE: every error is JSON with both keys, whatever a script accepts,
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
    resp.set_headers(ERROR_HEADERS)
    resp.data = error_body(title, description)


# The headers of every error answer, the app's and its gunicorn worker's.
ERROR_HEADERS = {'Content-Type': falcon.MEDIA_JSON, 'Cache-Control': 'no-store'}


def error_body(title: str, description: str) -> bytes:
    """Return the body of an error: the one shape every error of look has."""
    return json.dumps({'title': title, 'description': description}).encode()


_DEFAULT_DESCRIPTIONS = {
    400: 'The request could not be understood.',
    408: 'The request did not arrive in time.',
    404: 'There is nothing at this address.',
    405: 'This method is not allowed here; see the Allow header.',
    413: 'The request body is larger than this service accepts.',
    500: 'The service failed to answer this request.',
}


def add_error_handlers(app: falcon.App, page: ErrorPage | None = None) -> None:
    """Map domain exceptions to HTTP; give every error one JSON shape (``page`` for people)."""
    app.add_error_handler(LookError, _handle_look_error)
    app.set_error_serializer(_serializer(page))
