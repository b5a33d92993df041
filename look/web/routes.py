"""Route converters that match ids, sides and formats only as look writes them; near misses."""

from __future__ import annotations

import uuid

import falcon

from look.core.ids import is_valid_id
from look.imaging.formats import FORMAT_MEDIA_TYPES

# The most digits of a thumbnail side in a route (a JPEG's sides stop at 65 500).
MAX_SIDE_DIGITS = 6


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
        if (
            value.isascii()
            and value.isdigit()
            and value[0] != '0'
            and len(value) <= MAX_SIDE_DIGITS
        ):
            return int(value)
        return None


class FormatConverter(falcon.routing.BaseConverter):
    """Match a thumbnail format look knows, as its lowercase extension."""

    def convert(self, value: str) -> str | None:
        return value if value in FORMAT_MEDIA_TYPES else None


CONVERTERS = {'image_id': ImageIdConverter, 'side': SideConverter, 'format': FormatConverter}


def near_miss(path: str) -> str | None:
    """Return a hint at the address a request for ``path`` (no route) most likely meant."""
    suggested = suggested_address(path)
    if suggested is None or suggested == path:
        return None
    return f'Did you mean {suggested}?'


def suggested_address(path: str) -> str | None:
    """Return the address of an image or thumbnail in look's spelling that ``path`` spells."""
    return _suggested_address(path.strip('/').split('/'))


def _suggested_address(parts: list[str]) -> str | None:
    if parts == ['images']:
        return '/images'
    if len(parts) == 2 and parts[0] == 'images':
        name, _, extension = parts[1].partition('.')
        image_id = _canonical_id(name)
        # An animation's WebP (look.web.images.animation_uri), else the JPEG.
        extension = 'webp' if extension.lower() == 'webp' else 'jpeg'
        return f'/images/{image_id}.{extension}' if image_id else None
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
