"""Falcon resources for images and thumbnails: parse, call library and thumbnailer, respond."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import falcon

from look.auth import Access, new_delete_token
from look.cache import Cacheable
from look.conditional import answer_not_modified, is_not_modified, set_immutable
from look.errors import ImageNotFound, NoSuchThumbnailSize, refused_writes
from look.index import StoredImage, is_valid_id
from look.library import Library
from look.metrics import Metrics
from look.renditions import FORMAT_MEDIA_TYPES, Rendition, Renditions
from look.spool import Spool
from look.thumbnailer import Thumbnailer
from look.uploads import Receiver

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ImageIdConverter(falcon.routing.BaseConverter):
    """Match an image id only as look writes it: a lowercase, hyphenated UUID.

    Falcon's ``uuid`` and ``int`` converters also accept other spellings
    (uppercase or unhyphenated ids, ``0160``, ``+160``); each would be a
    second address of one image, rendered and cached on its own, that a
    delete would not purge.
    """

    def convert(self, value: str) -> str | None:
        return value if is_valid_id(value) else None


class SideConverter(falcon.routing.BaseConverter):
    """Match a thumbnail side only in its one spelling: digits, no leading zero."""

    def convert(self, value: str) -> int | None:
        if value.isascii() and value.isdigit() and value[0] != '0' and len(value) <= 6:
            return int(value)
        return None


class FormatConverter(falcon.routing.BaseConverter):
    """Match a thumbnail format look knows, as its lowercase extension."""

    def convert(self, value: str) -> str | None:
        return value if value in FORMAT_MEDIA_TYPES else None


CONVERTERS = {'image_id': ImageIdConverter, 'side': SideConverter, 'format': FormatConverter}


def image_uri(image_id: str) -> str:
    return f'/images/{image_id}.jpeg'


def describe(image: StoredImage, renditions: Renditions) -> dict[str, Any]:
    """Return the JSON description of an image: its URLs, size and thumbnails in every format."""
    sizes = renditions.sizes(image.size)
    # PERF: each rendition's path made once, and lists joined rather than
    #   generators: a quarter less (16 000 instructions for a 640x360 upload),
    #   for every image of a list page too.
    widths = [f' {width}w' for width, _height in sizes]
    paths = {
        format: [renditions.rendition(image.id, size, format).path for size in sizes]
        for format in renditions.formats
    }
    jpegs = paths.get('jpeg')
    if jpegs is None:
        jpegs = [renditions.rendition(image.id, size, 'jpeg').path for size in sizes]
    return {
        'id': image.id,
        'image': image_uri(image.id),
        'modified': image.modified_http,
        'size': list(image.size),
        'thumbnails': jpegs,
        'formats': {
            format: {
                'type': FORMAT_MEDIA_TYPES[format],
                'srcset': ', '.join(
                    [path + width for path, width in zip(in_format, widths, strict=True)]
                ),
            }
            for format, in_format in paths.items()
        },
    }


class Images:
    """``/images`` (list, upload) and ``/images/{id}.jpeg`` (download, delete)."""

    def __init__(
        self,
        library: Library,
        thumbnailer: Thumbnailer,
        renditions: Renditions,
        access: Access,
        *,
        spool: Spool,
        receiver: Receiver,
        uuid_generator: Callable[[], uuid.UUID],
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._library = library
        self._thumbnailer = thumbnailer
        self._renditions = renditions
        self._access = access
        self._spool = spool
        self._receiver = receiver
        self._uuid_generator = uuid_generator

    # -- /images ------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.require_key(req, 'list images')
        limit = req.get_param_as_int('limit', min_value=1, max_value=MAX_PAGE_SIZE)
        after = req.get_param('after')
        order = req.get_param('order', default='oldest')
        if order not in ('oldest', 'newest'):
            raise falcon.HTTPInvalidParam('The value must be "oldest" or "newest".', 'order')
        if after is not None:
            try:
                after = str(uuid.UUID(after))
            except ValueError:
                raise falcon.HTTPInvalidParam('The value must be an image id.', 'after') from None
        page_size = limit or DEFAULT_PAGE_SIZE
        try:
            page = self._library.page(
                after=after, limit=page_size + 1, newest_first=order == 'newest'
            )
        except ImageNotFound:
            raise falcon.HTTPInvalidParam(
                f'No image has the id {after}; use an id from the previous page.', 'after'
            ) from None
        if len(page) > page_size:
            page = page[:page_size]
            # RFC 8288: the next page starts after the last image of this one.
            ordering = '&order=newest' if order == 'newest' else ''
            next_uri = f'/images?limit={page_size}{ordering}&after={page[-1].id}'
            resp.append_header('Link', f'<{next_uri}>; rel="next"')
        resp.media = [describe(image, self._renditions) for image in page]

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # NOTE: the 401 goes out before any of the body is read, and the read
        #   side stays open: gunicorn then reads at most 64 KiB of the unread
        #   body and closes. With the read side shut, its drain could see an
        #   early end, keep the connection and read the whole body after all.
        who = self._access.require_key(req, 'upload images')
        image_id = str(self._uuid_generator())
        token, token_hash = new_delete_token()
        with contextlib.ExitStack() as cleanup, refused_writes():
            upload = self._spool.create()
            cleanup.callback(upload.close)
            received = self._receiver.receive(req, upload.file)
            size = self._thumbnailer.convert_upload(upload.path)
            length = os.fstat(upload.file.fileno()).st_size
            image = StoredImage(image_id, int(time.time()), size, length, token_hash)
            self._library.add(image, upload)
        self._metrics.stored(received)
        log.info(
            'stored image %s: %dx%d, %d bytes (%d received), by %s',
            image.id,
            *image.size,
            length,
            received,
            who,
        )
        resp.status = falcon.HTTP_201
        resp.location = image_uri(image.id)
        resp.media = {**describe(image, self._renditions), 'delete_token': token}

    # -- /images/{id}.jpeg --------------------------------------------------

    def on_get_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            original = self._library.open_original(image)
            resp.content_length = original.length
            # NOTE: Falcon hands a stream with read() to the server's
            #   wsgi.file_wrapper, so gunicorn sends a file with sendfile().
            resp.stream = original.stream

    def on_head_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            if image.length:
                resp.content_length = image.length
                return
            # Falcon drops a HEAD body without closing it: don't leave one.
            original = self._library.open_original(image)
            original.stream.close()
            resp.content_length = original.length

    def on_delete_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        # With keys set, the anonymous hear 401 whether or not the image exists.
        self._access.require_credential(req, 'delete an image')
        image = self._library.get(image_id)
        who = self._access.may_delete(req, image)
        self._library.delete(image.id)
        log.info('deleted image %s: %dx%d, by %s', image.id, *image.size, who)
        # Cached thumbnails of this image are stale on every worker now.
        resp.context.stale_keys = [
            rendition.cache_key
            for rendition in self._renditions.every_cached(image.id, image.size)
        ]
        resp.status = falcon.HTTP_204

    def _validated(
        self, req: falcon.Request, resp: falcon.Response, image_id: str
    ) -> StoredImage | None:
        """Set the headers of an original; return None if a 304 answers the request."""
        image = self._library.get(image_id)
        resp.content_type = 'image/jpeg'
        set_immutable(resp, etag=image.id, last_modified=image.modified_http)
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return None
        return image


class Thumbnails:
    """``/thumbnails/{id}/{w}x{h}.{format}``, and ``/thumbnails/{id}/{w}x{h}`` by Accept."""

    def __init__(self, library: Library, thumbnailer: Thumbnailer, renditions: Renditions) -> None:
        self._library = library
        self._thumbnailer = thumbnailer
        self._renditions = renditions

    def cacheable(
        self, req: falcon.Request, image_id: str, width: int, height: int, format: str = ''
    ) -> Cacheable | None:
        """Name the cache entry that answers this request (the cache middleware asks)."""
        if not format:
            format = self._renditions.negotiate(req.get_header('Accept'))
            headers = self._negotiated_headers(image_id, width, height, format)
        elif self._renditions.offers(format):
            headers = {}
        else:
            return None
        rendition = self._renditions.rendition(image_id, (width, height), format)
        variant = f'{rendition.encoding}:m{self._renditions.min_thumb_size}'
        return Cacheable(rendition.cache_key, variant, headers)

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        image_id: str,
        width: int,
        height: int,
        format: str = '',
    ) -> None:
        if not format:
            format = self._renditions.negotiate(req.get_header('Accept'))
            resp.set_headers(self._negotiated_headers(image_id, width, height, format))
        elif not self._renditions.offers(format):
            raise ImageNotFound(
                f'{format.upper()} thumbnails are turned off here; '
                f'the formats there are: {", ".join(self._renditions.formats)}.'
            )
        image = self._library.get(image_id)
        # NOTE: only the listed sizes are rendered; arbitrary sizes would let
        #   anyone keep the pool busy (and fill the cache) at will.
        sizes = self._renditions.sizes(image.size)
        if (width, height) not in sizes:
            if sizes:
                listed = ', '.join(f'{w}x{h}' for w, h in sizes)
                there_are = f'its sizes are {listed} (its "thumbnails" list)'
            else:
                there_are = (
                    f'it has none: its sides halve below {self._renditions.min_thumb_size} pixels'
                )
            raise NoSuchThumbnailSize(
                f'Image {image.id} has no {width}x{height} thumbnail; {there_are}.'
            )
        rendition = self._renditions.rendition(image.id, (width, height), format)
        resp.content_type = rendition.media_type
        set_immutable(resp, etag=rendition.etag, last_modified=image.modified_http)
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        resp.data = self._render(image, rendition)

    on_head = on_get

    def _render(self, image: StoredImage, rendition: Rendition) -> bytes:
        try:
            with self._library.local_path(image) as source:
                data = self._thumbnailer.render(source, rendition.size, rendition.format)
        except FileNotFoundError:
            raise ImageNotFound(f'No image has the id {image.id}.') from None
        self._library.get(image.id)  # deleted while this one rendered: don't serve it
        return data

    def _negotiated_headers(
        self, image_id: str, width: int, height: int, format: str
    ) -> dict[str, str]:
        path = self._renditions.rendition(image_id, (width, height), format).path
        return {'Vary': 'Accept', 'Content-Location': path}


def near_miss(path: str) -> str | None:
    """Return a hint at the address a request for ``path`` (no route) most likely meant."""
    suggested = _suggested_address(path.strip('/').split('/'))
    if suggested is None or suggested == path:
        return None
    return f'Did you mean {suggested}?'


def _suggested_address(parts: list[str]) -> str | None:
    if parts == ['images']:
        return '/images'
    if len(parts) == 2 and parts[0] == 'images':
        image_id = _canonical_id(parts[1].partition('.')[0])
        return f'/images/{image_id}.jpeg' if image_id else None
    if len(parts) in (2, 3) and parts[0] == 'thumbnails':
        image_id = _canonical_id(parts[1])
        if image_id is None:
            return None
        if len(parts) == 2:
            return (
                f'/thumbnails/{image_id}/<width>x<height>.jpeg, with a size from '
                'the "thumbnails" list of the image'
            )
        size, dot, extension = parts[2].partition('.')
        width, x, height = size.lower().partition('x')
        if not (x and _is_side(width) and _is_side(height)):
            return None
        size = f'{int(width)}x{int(height)}'
        format = {'jpg': 'jpeg', 'jpe': 'jpeg'}.get(extension.lower(), extension.lower())
        if dot and format not in FORMAT_MEDIA_TYPES:
            format = 'jpeg'
        return f'/thumbnails/{image_id}/{size}' + (f'.{format}' if dot else '')
    return None


def _is_side(value: str) -> bool:
    """Return whether ``value`` spells a side, leading zeros allowed (up to 12 digits)."""
    return value.isascii() and value.isdigit() and len(value) <= 12


def _canonical_id(value: str) -> str | None:
    """Return an id in look's spelling if ``value`` is another spelling of one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
