"""``/thumbnails/{id}/{w}x{h}.{format}``: one rendition of an image, rendered in the pool.

Most thumbnails are kept in Redis by the cache middleware. Those larger
than it keeps (LOOK_CACHE_MAX_BYTES: the largest sizes of a big photo,
about a second of rendering each) are kept on this host's disk instead
(``LargeThumbnails``), so each is rendered once per host, not once per request.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import IO

import falcon

from look.core.diskcache import DiskCache
from look.core.index import StoredImage
from look.core.library import Library
from look.errors import ImageNotFound, NoSuchThumbnailSize
from look.imaging.animation import ANIMATED_THUMBNAIL_FORMATS
from look.imaging.pool import Thumbnailer
from look.imaging.renditions import Rendition, Renditions
from look.web.cache import CACHE_HEADER, NO_HEADERS, Cacheable
from look.web.conditional import answer_not_modified, is_not_modified, set_immutable

log = logging.getLogger(__name__)

# The Cacheables a worker keeps, of the thumbnails asked for last; and the
# names of thumbnails it knows to be small, forgotten all at once past this many.
CACHEABLES_KEPT = 4096


class LargeThumbnails:
    """Thumbnails over ``min_bytes``, kept on this host's disk once rendered.

    A file is named by the rendition's ETag, which changes whenever its bytes
    would, and its format; ``<id>-`` starts the names of all of an image's.
    """

    def __init__(self, files: DiskCache, *, min_bytes: int) -> None:
        self._files = files
        self.min_bytes = min_bytes
        # PERF: the files of renditions this worker rendered at min_bytes or
        #   less. keep() passes those by in every process, their bytes being
        #   the same wherever they are rendered (the ETag says so), so none
        #   is looked for: a failed open and its exception (3 µs) a render.
        self._small: set[str] = set()

    def open(self) -> None:
        """Make the directory; where it cannot be made (a read-only disk), keep none."""
        if not self._files.max_bytes:
            return
        try:
            self._files.open()
        except OSError as ex:
            log.warning(
                'large thumbnails cannot be kept in %s (%s): each is rendered when asked for',
                self._files.directory,
                ex,
            )
            self._files.max_bytes = 0

    def has(self, rendition: Rendition) -> bool:
        """Return whether this host keeps ``rendition`` (a stat, no more)."""
        if not self._files.max_bytes:
            return False
        name = _file_name(rendition)
        return name not in self._small and os.path.exists(self._files.path(name))

    def read(self, rendition: Rendition) -> IO[bytes] | None:
        """Open the kept file of ``rendition``, or return None if this host has none."""
        if not self._files.max_bytes:
            return None
        name = _file_name(rendition)
        return None if name in self._small else self._files.open_file(name)

    def keep(self, rendition: Rendition, data: bytes) -> bool:
        """Keep a rendered thumbnail if it is large; return whether it was kept."""
        if len(data) > self.min_bytes:
            return self._files.put(_file_name(rendition), data)
        if self._files.max_bytes:
            if len(self._small) >= CACHEABLES_KEPT:
                self._small.clear()
            self._small.add(_file_name(rendition))
        return False

    def discard(self, image_id: str) -> None:
        """Remove every kept thumbnail of an image (deleted)."""
        if self._files.max_bytes:
            self._files.discard_starting(f'{image_id}-')


def _file_name(rendition: Rendition) -> str:
    return f'{rendition.etag}.{rendition.format}'


class Thumbnails:
    """``/thumbnails/{id}/{w}x{h}.{format}``, and ``/thumbnails/{id}/{w}x{h}`` by Accept."""

    def __init__(
        self,
        library: Library,
        thumbnailer: Thumbnailer,
        renditions: Renditions,
        large: LargeThumbnails,
    ) -> None:
        self._library = library
        self._thumbnailer = thumbnailer
        self._renditions = renditions
        self._large = large
        # PERF: the cache variant of each format offered, named once rather
        #   than on every request: the settings a thumbnail is made under.
        self._variants = {
            format: f'{renditions.encodings[format]}:m{renditions.min_thumb_size}'
            for format in renditions.formats
        }
        # PERF: a thumbnail's Cacheable is the same on every request for it at
        #   one address: made once (its rendition, key and variant: 2 µs) for
        #   the CACHEABLES_KEPT addresses asked for last.
        self._cacheable = functools.lru_cache(maxsize=CACHEABLES_KEPT)(self._new_cacheable)

    def cacheable(
        self, req: falcon.Request, image_id: str, width: int, height: int, format: str = ''
    ) -> Cacheable | None:
        """Name the cache entry that answers this request (the cache middleware asks).

        A thumbnail this host keeps on its disk is kept elsewhere: without an
        entry, the resource answers with it at once, without the fill lock.
        """
        negotiated = not format
        if negotiated:
            format = self._renditions.negotiate(req.get_header('Accept'))
        elif format not in self._variants:
            return None  # not offered here
        return self._cacheable(image_id, width, height, format, negotiated)

    def _new_cacheable(
        self, image_id: str, width: int, height: int, format: str, negotiated: bool
    ) -> Cacheable:
        rendition = self._renditions.rendition(image_id, (width, height), format)
        headers = (
            self._negotiated_headers(image_id, width, height, format) if negotiated else NO_HEADERS
        )
        return Cacheable(
            rendition.cache_key,
            self._variants[format],
            headers,
            lambda: self._large.has(rendition),
        )

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
        # NOTE: only after the index said the image is there: another host
        #   may have deleted it, and this host's copy is not deleted with it.
        kept = self._large.read(rendition)
        if kept is not None:
            resp.set_header(CACHE_HEADER, 'Hit')  # not rendered for this request
            resp.content_length = os.fstat(kept.fileno()).st_size
            if req.method == 'HEAD':
                kept.close()  # Falcon drops a HEAD body without closing it
            else:
                resp.stream = kept
            return
        resp.data = self._render(image, rendition)

    on_head = on_get

    def _render(self, image: StoredImage, rendition: Rendition) -> bytes:
        # An animation's WebP and AVIF thumbnails are animated, rendered from its
        # animated WebP; its JPEG ones are the first frame, from its JPEG.
        animated = image.animated and rendition.format in ANIMATED_THUMBNAIL_FORMATS
        try:
            with self._library.local_path(image, animation=animated) as source:
                data = self._thumbnailer.render(
                    source, rendition.size, rendition.format, image.frames if animated else 0
                )
        except FileNotFoundError:
            raise ImageNotFound(f'No image has the id {image.id}.') from None
        self._library.get(image.id)  # deleted while this one rendered: don't serve it
        if self._large.keep(rendition, data):
            try:
                self._library.get(image.id)
            except ImageNotFound:
                self._large.discard(image.id)  # deleted as it was being kept
                raise
        return data

    def _negotiated_headers(
        self, image_id: str, width: int, height: int, format: str
    ) -> dict[str, str]:
        path = self._renditions.rendition(image_id, (width, height), format).path
        return {'Vary': 'Accept', 'Content-Location': path}
