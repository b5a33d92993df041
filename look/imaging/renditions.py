"""Renditions: a thumbnail of one image in one size and one format.

What decides a thumbnail's bytes (the image, the size, the format and the
format's encoder settings) is one ``Rendition`` value; its URL, ETag, media
type and cache key all derive from it, and so does the purge of a deleted
image, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from look.imaging.formats import FALLBACK_FORMAT, FORMAT_MEDIA_TYPES


def thumbnail_sizes(size: tuple[int, int], min_size: int) -> list[tuple[int, int]]:
    """Return the thumbnail sizes of an image: halve both sides while both stay >= min_size."""
    width, height = size
    sizes = []
    while True:
        width, height = width // 2, height // 2
        if width < min_size or height < min_size:
            return sizes
        sizes.append((width, height))


@dataclasses.dataclass(frozen=True, slots=True)
class Rendition:
    """One thumbnail: image, size, format, and a tag naming the encoder settings."""

    image_id: str
    size: tuple[int, int]
    format: str
    encoding: str

    @property
    def path(self) -> str:
        """The thumbnail's one address, with the format as its extension."""
        width, height = self.size
        return f'/thumbnails/{self.image_id}/{width}x{height}.{self.format}'

    @property
    def etag(self) -> str:
        """A strong ETag (unquoted) that changes whenever the bytes would."""
        width, height = self.size
        return f'{self.image_id}-{width}x{height}-{self.encoding}'

    @property
    def media_type(self) -> str:
        """The Content-Type of the thumbnail."""
        return FORMAT_MEDIA_TYPES[self.format]

    @property
    def cache_key(self) -> str:
        """The key of the thumbnail in a cache shared by every look deployment.

        NOTE: the encoder settings are not part of it, so a purge reaches a
          deployment with other settings too; the cache entry names its
          ETag, and one made under other settings is not served.
        """
        return self.path


class Renditions:
    """The renditions one look deployment offers: which sizes, which formats, which settings."""

    def __init__(
        self, *, formats: Iterable[str], encodings: dict[str, str], min_thumb_size: int
    ) -> None:
        enabled = set(formats)
        unknown = enabled - set(FORMAT_MEDIA_TYPES)
        if unknown:
            raise ValueError(f'unknown thumbnail formats: {", ".join(sorted(unknown))}')
        # In preference order, whatever order they were given in.
        self.formats = [name for name in FORMAT_MEDIA_TYPES if name in enabled]
        self.encodings = encodings
        self.min_thumb_size = min_thumb_size

    def sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Return the thumbnail sizes an image of ``size`` has here."""
        return thumbnail_sizes(size, self.min_thumb_size)

    def offers(self, format: str) -> bool:
        """Return whether this deployment renders ``format``."""
        return format in self.formats

    def rendition(self, image_id: str, size: tuple[int, int], format: str) -> Rendition:
        """Return the rendition of an image in one size and format (both checked by the caller)."""
        return Rendition(image_id, size, format, self.encodings[format])

    def every_cached(self, image_id: str, size: tuple[int, int]) -> list[Rendition]:
        """Return every rendition any deployment may have cached of an image.

        Every format, and every halving down to one pixel: a deployment
        with a smaller minimum size, or other formats enabled, has more.
        """
        return [
            Rendition(image_id, thumbnail_size, format, '')
            for thumbnail_size in thumbnail_sizes(size, 1)
            for format in FORMAT_MEDIA_TYPES
        ]

    def negotiate(self, accept: str | None) -> str:
        """Return the format to serve for an Accept header (RFC 9110, section 12.5.1).

        AVIF, JPEG XL and WebP count only where the client names them: ``*/*``
        or ``image/*`` say nothing of which new formats a browser decodes.
        Among those named, the highest q wins, then AVIF, JPEG XL, WebP, JPEG;
        JPEG is the fallback whatever the header says.
        """
        if not accept or len(self.formats) == 1:
            return FALLBACK_FORMAT
        ranges = _parse_accept(accept)
        best, best_q = FALLBACK_FORMAT, _quality(ranges, 'image', FALLBACK_FORMAT, wildcards=True)
        for format in self.formats:
            if format == FALLBACK_FORMAT:
                continue
            q = _quality(ranges, 'image', format, wildcards=False)
            if q > 0 and q >= best_q and (best == FALLBACK_FORMAT or q > best_q):
                best, best_q = format, q
        return best


def _parse_accept(accept: str) -> dict[tuple[str, str], float]:
    """Return {(type, subtype): q} of an Accept header; malformed ranges are skipped."""
    ranges: dict[tuple[str, str], float] = {}
    for item in accept.split(','):
        media_range, *parameters = item.split(';')
        media_type, slash, subtype = media_range.strip().lower().partition('/')
        if not slash or not media_type or not subtype:
            continue
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.strip().partition('=')
            if name.strip().lower() == 'q':
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0
        key = (media_type, subtype)
        ranges[key] = max(q, ranges.get(key, 0.0))
    return ranges


def _quality(
    ranges: dict[tuple[str, str], float], media_type: str, subtype: str, *, wildcards: bool
) -> float:
    """Return the q the most specific matching range gives a media type (0 if none)."""
    for key in ((media_type, subtype), (media_type, '*'), ('*', '*')):
        if key in ranges:
            return ranges[key]
        if not wildcards:
            return 0.0
    return 0.0
