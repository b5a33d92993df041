"""Validators and conditional requests for responses that never change once created."""

from __future__ import annotations

import falcon

# Images and thumbnails are immutable: a new upload gets a new id.
IMMUTABLE = 'public, max-age=31536000, immutable'

# The headers a cached response must carry back on a cache hit.
VALIDATOR_HEADERS = ('ETag', 'Last-Modified', 'Cache-Control')


def set_immutable(resp: falcon.Response, etag: str, last_modified: str) -> None:
    """Mark a response as never changing, with a strong ETag and Last-Modified (an HTTP date)."""
    resp.etag = etag
    resp.set_header('Last-Modified', last_modified)
    resp.cache_control = [IMMUTABLE]


def is_not_modified(req: falcon.Request, resp: falcon.Response) -> bool:
    """Return whether the client's copy, per the request's validators, is still current.

    If-None-Match wins over If-Modified-Since (RFC 9110, section 13.2.2).
    """
    if req.method not in ('GET', 'HEAD'):
        return False
    environ = req.env
    if 'HTTP_IF_NONE_MATCH' not in environ and 'HTTP_IF_MODIFIED_SINCE' not in environ:
        return False  # the common case, without parsing anything
    try:
        if_none_match = req.if_none_match
    except falcon.HTTPInvalidHeader:
        if_none_match = None
    if if_none_match is not None:
        etag = resp.get_header('ETag')
        if etag is None:
            return False
        # Weak comparison, as If-None-Match requires: W/ is ignored.
        current = etag.removeprefix('W/').strip('"')
        return any(tag == '*' or tag == current for tag in if_none_match)
    try:
        if_modified_since = req.if_modified_since
    except falcon.HTTPInvalidHeader:
        # RFC 9110, section 13.1.3: an invalid date is ignored, not an error.
        return False
    last_modified = resp.get_header('Last-Modified')
    if if_modified_since is None or last_modified is None:
        return False
    try:
        modified = falcon.http_date_to_dt(last_modified)
    except ValueError:
        return False
    return modified <= if_modified_since


def answer_not_modified(resp: falcon.Response) -> None:
    """Turn the response into a bodiless 304 that keeps its validators.

    Called before any body is made: callers check freshness first.
    """
    resp.status = falcon.HTTP_304
    resp.delete_header('Content-Type')
    resp.data = None
