"""Falcon resources for images and thumbnails: parse, call store and thumbnailer, respond."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from typing import Any

import falcon

from look import uploads
from look.conditional import answer_not_modified, is_not_modified, set_immutable
from look.errors import ImageNotFound, refused_writes
from look.store import Store, StoredImage, is_valid_id
from look.thumbnailer import Thumbnailer, encoding_tag, thumbnail_sizes

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


CONVERTERS = {'image_id': ImageIdConverter, 'side': SideConverter}


def image_uri(image_id: str) -> str:
    return f'/images/{image_id}.jpeg'


def thumbnail_uri(image_id: str, size: tuple[int, int]) -> str:
    return f'/thumbnails/{image_id}/{size[0]}x{size[1]}.jpeg'


class Images:
    """``/images`` (list, upload) and ``/images/{id}.jpeg`` (download, delete)."""

    def __init__(
        self,
        store: Store,
        thumbnailer: Thumbnailer,
        *,
        uuid_generator: Callable[[], uuid.UUID],
        max_upload_bytes: int,
        upload_timeout: float,
        min_thumb_size: int,
    ) -> None:
        self._store = store
        self._thumbnailer = thumbnailer
        self._uuid_generator = uuid_generator
        self._max_upload_bytes = max_upload_bytes
        self._upload_timeout = upload_timeout
        self._min_thumb_size = min_thumb_size

    def describe(self, image: StoredImage) -> dict[str, Any]:
        """Return the JSON description of an image."""
        return {
            'id': image.id,
            'image': image_uri(image.id),
            'modified': image.modified_http,
            'size': list(image.size),
            'thumbnails': [
                thumbnail_uri(image.id, size)
                for size in thumbnail_sizes(image.size, self._min_thumb_size)
            ],
        }

    # -- /images ------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int('limit', min_value=1, max_value=MAX_PAGE_SIZE)
        after = req.get_param('after')
        if after is not None:
            try:
                after = str(uuid.UUID(after))
            except ValueError:
                raise falcon.HTTPInvalidParam('The value must be an image id.', 'after') from None
        page_size = limit or DEFAULT_PAGE_SIZE
        try:
            page = self._store.list(after=after, limit=page_size + 1)
        except ImageNotFound:
            raise falcon.HTTPInvalidParam(
                f'No image has the id {after}; use an id from the previous page.', 'after'
            ) from None
        if len(page) > page_size:
            page = page[:page_size]
            # RFC 8288: the next page starts after the last image of this one.
            next_uri = f'/images?limit={page_size}&after={page[-1].id}'
            resp.append_header('Link', f'<{next_uri}>; rel="next"')
        resp.media = [self.describe(image) for image in page]

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        image_id = str(self._uuid_generator())
        with contextlib.ExitStack() as cleanup, refused_writes():
            upload = self._store.temporary()
            cleanup.callback(upload.close)
            uploads.receive(
                req, upload.file, max_bytes=self._max_upload_bytes, deadline=self._upload_timeout
            )
            size = self._thumbnailer.convert_upload(upload.path)
            image = self._store.add(image_id, upload, size)

        resp.status = falcon.HTTP_201
        resp.location = image_uri(image.id)
        resp.media = self.describe(image)

    # -- /images/{id}.jpeg --------------------------------------------------

    def on_get_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            stream = self._store.open_image(image)
            resp.content_length = os.fstat(stream.fileno()).st_size
            # NOTE: Falcon hands a stream with read() to the server's
            #   wsgi.file_wrapper, so gunicorn sends the file with sendfile().
            resp.stream = stream

    def on_head_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            # Falcon drops a HEAD body without closing it: don't leave one.
            with self._store.open_image(image) as stream:
                resp.content_length = os.fstat(stream.fileno()).st_size

    def on_delete_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._store.get(image_id)
        self._store.delete(image.id)
        # Cached thumbnails of this image are stale on every worker now: every
        # halving, as a deployment with a smaller LOOK_MIN_THUMB_SIZE has more.
        resp.context.stale_paths = [
            thumbnail_uri(image.id, size) for size in thumbnail_sizes(image.size, 1)
        ]
        resp.status = falcon.HTTP_204

    def _validated(
        self, req: falcon.Request, resp: falcon.Response, image_id: str
    ) -> StoredImage | None:
        """Set the headers of an original; return None if a 304 answers the request."""
        image = self._store.get(image_id)
        resp.content_type = 'image/jpeg'
        set_immutable(resp, etag=image.id, last_modified=image.modified_http)
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return None
        return image


class Thumbnails:
    """``/thumbnails/{id}/{width}x{height}.jpeg``: rendered on demand."""

    def __init__(self, store: Store, thumbnailer: Thumbnailer, *, min_thumb_size: int) -> None:
        self._store = store
        self._thumbnailer = thumbnailer
        self._min_thumb_size = min_thumb_size

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        image_id: str,
        width: int,
        height: int,
    ) -> None:
        image = self._store.get(image_id)
        # NOTE: only the listed sizes are rendered; arbitrary sizes would let
        #   anyone keep the pool busy (and fill the cache) at will.
        if (width, height) not in thumbnail_sizes(image.size, self._min_thumb_size):
            raise ImageNotFound(
                f'{width}x{height} is not a thumbnail size of image {image.id}; '
                'its "thumbnails" list has the sizes there are.'
            )
        resp.content_type = 'image/jpeg'
        # How it is encoded is part of the tag: the bytes change if that does.
        etag = f'{image.id}-{width}x{height}-{encoding_tag("jpeg", self._thumbnailer.quality)}'
        set_immutable(resp, etag=etag, last_modified=image.modified_http)
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        try:
            data = self._thumbnailer.render(self._store.path(image.id), (width, height), 'jpeg')
        except FileNotFoundError:
            raise ImageNotFound(f'No image has the id {image.id}.') from None
        self._store.get(image.id)  # deleted while this one rendered: don't serve it
        resp.data = data

    on_head = on_get
