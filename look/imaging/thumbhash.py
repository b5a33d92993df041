"""A placeholder for every image: its ThumbHash and average colour, from a small level of it.

ThumbHash is Evan Wallace's (https://evanw.github.io/thumbhash/, public
domain): a few cosine terms of luminance, two colour differences and alpha,
with the aspect ratio, in about 25 bytes. This is a port of his reference
encoder, ``rgbaToThumbHash`` in the thumbhash package, which a browser
decodes into a blurred image while the real one loads. Each channel's terms
are two matrix products (numpy), where the reference sums pixel by pixel.
"""

from __future__ import annotations

import base64
import functools
import math

import numpy as np
from PIL import Image

# The reference encoder takes at most 100x100 pixels: more adds only time.
MAX_SIDE = 100
# NOTE: what a placeholder is made from. Its terms go up to 7 half-cycles
#   across, which 32 samples hold (14 would); the hash is the same in all
#   but a nibble or two as from 100 pixels, in a tenth of the time.
PLACEHOLDER_SIDE = 32
# Below this, a cosine term is the sums' rounding error, not the image's.
_NOISE = 1e-9


def placeholder(image: Image.Image) -> tuple[str, str]:
    """Return the ThumbHash (standard base64) and the ``#rrggbb`` average colour of ``image``.

    ``image`` may be any size; it is scaled to fit 32x32 first, so the
    caller hands it the smallest level it has decoded (a JPEG's 1/8 draft).
    """
    small = _fit(image, PLACEHOLDER_SIDE)
    rgba = np.asarray(small.convert('RGBA') if small.mode != 'RGBA' else small)
    red, green, blue = _average(rgba)
    return base64.b64encode(_encode(rgba)).decode('ascii'), f'#{red:02x}{green:02x}{blue:02x}'


def encode(width: int, height: int, rgba: bytes) -> bytes:
    """Return the ThumbHash of ``width`` x ``height`` RGBA pixels (not premultiplied), as bytes."""
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ValueError(f'{width}x{height} does not fit in {MAX_SIDE}x{MAX_SIDE}')
    return _encode(np.frombuffer(rgba, np.uint8).reshape(height, width, 4))


def _fit(image: Image.Image, side: int) -> Image.Image:
    """Return ``image`` scaled (box filter, with Pillow's fast reduce first) to fit side x side."""
    width, height = image.size
    if width <= side and height <= side:
        return image
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.mode not in ('RGB', 'RGBA', 'L'):
        image = image.convert('RGBA' if 'A' in image.getbands() else 'RGB')
    return image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def _average(rgba: np.ndarray) -> tuple[int, int, int]:
    """Return the alpha-weighted mean colour of RGBA pixels, each channel 0-255.

    In integers, so that the quotient is rounded once, as the reference's is.
    """
    alpha = rgba[..., 3].astype(np.int64)
    weight = int(alpha.sum())
    if not weight:
        return 0, 0, 0
    sums = np.einsum('ijc,ij->c', rgba[..., :3].astype(np.int64), alpha)
    return tuple(_js_round(int(total) / weight) for total in sums)  # type: ignore[return-value]


def _js_round(value: float) -> int:
    """Round as JavaScript's Math.round does (halves up), as the reference encoder rounds."""
    return math.floor(value + 0.5)


def _encode(rgba: np.ndarray) -> bytes:
    """Return the ThumbHash of a height x width x 4 array of 8-bit RGBA pixels."""
    height, width = rgba.shape[:2]
    pixels = rgba / 255
    alpha = pixels[..., 3]
    total_alpha = float(alpha.sum())
    has_alpha = total_alpha < width * height
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs the room
    longest = max(width, height)
    lx = max(1, _js_round(l_limit * width / longest))
    ly = max(1, _js_round(l_limit * height / longest))

    # Each pixel composited atop the average colour, then as L, P (yellow-blue), Q (red-green).
    colour = pixels[..., :3]
    if has_alpha:
        average = np.zeros(3)
        if total_alpha:
            average = np.einsum('ijc,ij->c', colour, alpha) / total_alpha
        opacity = alpha[..., np.newaxis]
        colour = average * (1 - opacity) + opacity * colour
    red, green, blue = colour[..., 0], colour[..., 1], colour[..., 2]
    l_dc, l_ac, l_scale = _channel((red + green + blue) / 3, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _channel((red + green) / 2 - blue, 3, 3)
    q_dc, q_ac, q_scale = _channel(red - green, 3, 3)
    channels = [l_ac, p_ac, q_ac]

    landscape = width > height
    header24 = (
        _js_round(63 * l_dc)
        | (_js_round(31.5 + 31.5 * p_dc) << 6)
        | (_js_round(31.5 + 31.5 * q_dc) << 12)
        | (_js_round(31 * l_scale) << 18)
        | (has_alpha << 23)
    )
    header16 = (
        (ly if landscape else lx)
        | (_js_round(63 * p_scale) << 3)
        | (_js_round(63 * q_scale) << 9)
        | (landscape << 15)
    )
    hash_bytes = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255]
    hash_bytes.append(header16 >> 8)
    if has_alpha:
        a_dc, a_ac, a_scale = _channel(alpha, 5, 5)
        hash_bytes.append(_js_round(15 * a_dc) | (_js_round(15 * a_scale) << 4))
        channels.append(a_ac)
    factors = [_js_round(15 * factor) for ac in channels for factor in ac]
    factors += [0] * (len(factors) & 1)
    hash_bytes += [
        low | (high << 4) for low, high in zip(factors[::2], factors[1::2], strict=True)
    ]
    return bytes(hash_bytes)


def _channel(channel: np.ndarray, nx: int, ny: int) -> tuple[float, list[float], float]:
    """Return the DC term, the AC terms scaled into 0-1, and their scale, of one channel.

    Its terms are those of the triangle cx * ny < nx * (ny - cy), row by row.
    """
    height, width = channel.shape
    terms = _cosines(height, ny) @ channel @ _cosines(width, nx).T / (width * height)
    # NOTE: a term a flat image lacks comes out as rounding noise (1e-17),
    #   which the scale would blow up into arbitrary nibbles; it is 0, so
    #   one image gives one hash everywhere.
    dc, *ac = (term if abs(term) > _NOISE else 0.0 for term in terms[_triangle(nx, ny)].tolist())
    scale = max(map(abs, ac), default=0.0)
    if scale:
        ac = [0.5 + 0.5 / scale * term for term in ac]
    return dc, ac, scale


@functools.cache
def _cosines(length: int, count: int) -> np.ndarray:
    """Return the first ``count`` cosines of a side of ``length`` samples, a row each.

    NOTE: kept, as the sides of a placeholder are few (at most 100 lengths
      by 7 counts).
    """
    cosines = np.cos(np.pi / length * np.outer(np.arange(count), np.arange(length) + 0.5))
    cosines.flags.writeable = False
    return cosines


@functools.cache
def _triangle(nx: int, ny: int) -> np.ndarray:
    """Return which of an ny x nx grid of terms the hash keeps: cx * ny < nx * (ny - cy)."""
    cy, cx = np.indices((ny, nx))
    kept = cx * ny < nx * (ny - cy)
    kept.flags.writeable = False
    return kept
