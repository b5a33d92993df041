"""``/thumbnails/{id}/{w}x{h}.{format}``: one rendition of an image, rendered in the pool."""

from __future__ import annotations

import falcon

from look.core.index import StoredImage
from look.core.library import Library
from look.errors import ImageNotFound, NoSuchThumbnailSize
from look.imaging.pool import Thumbnailer
from look.imaging.renditions import Rendition, Renditions
from look.web.cache import Cacheable
from look.web.conditional import answer_not_modified, is_not_modified, set_immutable


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
