"""A placeholder for every image: its ThumbHash and average colour, from a small level of it.

ThumbHash is Evan Wallace's (https://evanw.github.io/thumbhash/, public
domain): a few cosine terms of luminance, two colour differences and alpha,
with the aspect ratio, in about 25 bytes. This is a port of his reference
encoder, ``rgbaToThumbHash`` in the thumbhash package, which a browser
decodes into a blurred image while the real one loads.
"""

from __future__ import annotations

import base64
import functools
import itertools
import math
import operator

from PIL import Image

# The reference encoder takes at most 100x100 pixels: more adds only time.
MAX_SIDE = 100
# NOTE: what a placeholder is made from. Its terms go up to 7 half-cycles
#   across, which 32 samples hold (14 would); the hash is the same in all
#   but a nibble or two as from 100 pixels, for 0.6 ms instead of 6 here.
PLACEHOLDER_SIDE = 32
# Below this, a cosine term is the sums' rounding error, not the image's.
_NOISE = 1e-9


def placeholder(image: Image.Image) -> tuple[str, str]:
    """Return the ThumbHash (standard base64) and the ``#rrggbb`` average colour of ``image``.

    ``image`` may be any size; it is scaled to fit 32x32 first, so the
    caller hands it the smallest level it has decoded (a JPEG's 1/8 draft).
    """
    small = _fit(image, PLACEHOLDER_SIDE)
    rgba = small.convert('RGBA') if small.mode != 'RGBA' else small
    pixels = rgba.tobytes()
    hash_bytes = encode(small.width, small.height, pixels)
    red, green, blue = _average(pixels)
    return base64.b64encode(hash_bytes).decode('ascii'), f'#{red:02x}{green:02x}{blue:02x}'


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


def _average(pixels: bytes) -> tuple[int, int, int]:
    """Return the alpha-weighted mean colour of RGBA pixels, each channel 0-255."""
    alphas = pixels[3::4]
    weight = sum(alphas)
    if not weight:
        return 0, 0, 0
    if weight == 255 * len(alphas):
        # PERF: opaque, each weighted sum is 255 times the plain one, and an
        #   int by int division is correctly rounded: the same quotient
        #   without a product per pixel.
        weight = len(alphas)
        return tuple(  # type: ignore[return-value]
            _js_round(sum(pixels[band::4]) / weight) for band in range(3)
        )
    return tuple(  # type: ignore[return-value]
        _js_round(sum(map(operator.mul, pixels[band::4], alphas)) / weight) for band in range(3)
    )


def _js_round(value: float) -> int:
    """Round as JavaScript's Math.round does (halves up), as the reference encoder rounds."""
    return math.floor(value + 0.5)


def encode(width: int, height: int, rgba: bytes) -> bytes:
    """Return the ThumbHash of ``width`` x ``height`` RGBA pixels (not premultiplied), as bytes.

    NOTE: the reference encoder's sums, over rows (in C, by map) rather
      than pixel by pixel in Python: 1-2 ms for 100x100 instead of ~60.
    """
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ValueError(f'{width}x{height} does not fit in {MAX_SIDE}x{MAX_SIDE}')
    count = width * height
    reds, greens, blues, alphas = (rgba[band::4] for band in range(4))
    total_alpha = sum(alphas) / 255
    has_alpha = total_alpha < count
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs the room
    longest = max(width, height)
    lx = max(1, _js_round(l_limit * width / longest))
    ly = max(1, _js_round(l_limit * height / longest))

    # Each pixel composited atop the average colour, then as L, P (yellow-blue), Q (red-green).
    if has_alpha:
        # The average colour is what transparent pixels are composited on.
        average = [0.0, 0.0, 0.0]
        if total_alpha:
            for band, values in enumerate((reds, greens, blues)):
                average[band] = sum(map(operator.mul, values, alphas)) / 65025 / total_alpha
        opacity = [alpha / 255 for alpha in alphas]
        r, g, b = (
            [avg * (1 - a) + a / 255 * value for value, a in zip(values, opacity, strict=True)]
            for avg, values in zip(average, (reds, greens, blues), strict=True)
        )
        luma = [(x + y + z) / 3 for x, y, z in zip(r, g, b, strict=True)]
        yellow_blue = [(x + y) / 2 - z for x, y, z in zip(r, g, b, strict=True)]
        red_green = [x - y for x, y in zip(r, g, strict=True)]
        l_dc, l_ac, l_scale = _encode_channel(luma, width, height, max(3, lx), max(3, ly))
        p_dc, p_ac, p_scale = _encode_channel(yellow_blue, width, height, 3, 3)
        q_dc, q_ac, q_scale = _encode_channel(red_green, width, height, 3, 3)
    else:
        # PERF: opaque, L, P and Q are sums of R, G and B, and so are their
        #   cosine terms: the bytes' own terms, combined, with no per-pixel
        #   Python (1.2 ms for 100x67 here instead of 5.8).
        nx, ny = max(3, lx), max(3, ly)
        red, green, blue = (
            _terms(values, width, height, nx, ny) for values in (reds, greens, blues)
        )
        l_dc, l_ac, l_scale = _scaled(
            [(x + y + z) / 3 for x, y, z in zip(red, green, blue, strict=True)]
        )
        colour = _triangle(nx, ny, 3, 3)
        red, green, blue = ([terms[i] for i in colour] for terms in (red, green, blue))
        p_dc, p_ac, p_scale = _scaled(
            [(x + y) / 2 - z for x, y, z in zip(red, green, blue, strict=True)]
        )
        q_dc, q_ac, q_scale = _scaled([x - y for x, y in zip(red, green, strict=True)])
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
        opacity_channel = [alpha / 255 for alpha in alphas]
        a_dc, a_ac, a_scale = _encode_channel(opacity_channel, width, height, 5, 5)
        hash_bytes.append(_js_round(15 * a_dc) | (_js_round(15 * a_scale) << 4))
        channels.append(a_ac)
    factors = [_js_round(15 * factor) for ac in channels for factor in ac]
    factors += [0] * (len(factors) & 1)
    hash_bytes += [
        low | (high << 4) for low, high in zip(factors[::2], factors[1::2], strict=True)
    ]
    return bytes(hash_bytes)


def _encode_channel(
    channel: list[float], width: int, height: int, nx: int, ny: int
) -> tuple[float, list[float], float]:
    """Return the DC term, the AC terms scaled into 0-1, and their scale, of one channel."""
    return _scaled(_terms(channel, width, height, nx, ny))


def _triangle(nx: int, ny: int, px: int, py: int) -> list[int]:
    """Return where the terms of a px by py triangle are among those of an nx by ny one."""
    kept = [(cx, cy) for cy in range(ny) for cx in range(nx) if cx * ny < nx * (ny - cy)]
    return [
        kept.index((cx, cy)) for cy in range(py) for cx in range(px) if cx * py < px * (py - cy)
    ]


def _terms(channel: list[float] | bytes, width: int, height: int, nx: int, ny: int) -> list[float]:
    """Return the cosine terms of a channel (bytes are 0-255, scaled to 0-1), DC first.

    Only the terms of the triangle cx * ny < nx * (ny - cy) are made, row by row.
    """
    unit = 1.0
    if isinstance(channel, bytes):
        # PERF: as floats, each product is a float's by a float's, without
        #   int's multiply tried first (the same products: bytes are exact).
        channel, unit = list(map(float, channel)), 1 / 255
    rows = [channel[y * width : (y + 1) * width] for y in range(height)]
    # Each row's sum against each column's cosine, then those against each row's cosine.
    # PERF: map within map, so that no Python runs per row (the sums are as before).
    mul = itertools.repeat(operator.mul)
    row_sums = [
        list(map(sum, map(map, mul, rows, itertools.repeat(column))))
        for column in _cosines(width, nx)
    ]
    area = width * height
    terms = []
    for cy, fy in enumerate(_cosines(height, ny)):
        cx = 0
        while cx * ny < nx * (ny - cy):
            terms.append(sum(map(operator.mul, row_sums[cx], fy)) * unit / area)
            cx += 1
    return terms


@functools.cache
def _cosines(length: int, count: int) -> tuple[tuple[float, ...], ...]:
    """Return the first ``count`` cosines of a side of ``length`` samples, one tuple each.

    NOTE: kept, as the sides of a placeholder are few (at most 100 lengths
      by 7 counts); a 32x18 hash made 888 cosines each time.
    """
    return tuple(
        tuple([math.cos(math.pi / length * k * (i + 0.5)) for i in range(length)])
        for k in range(count)
    )


def _scaled(terms: list[float]) -> tuple[float, list[float], float]:
    """Return the DC term, the AC terms scaled into 0-1, and their scale."""
    # NOTE: a term a flat image lacks comes out as rounding noise (1e-17),
    #   which the scale would blow up into arbitrary nibbles; it is 0, so
    #   one image gives one hash everywhere.
    dc, *ac = (term if abs(term) > _NOISE else 0.0 for term in terms)
    scale = max(map(abs, ac), default=0.0)
    if scale:
        ac = [0.5 + 0.5 / scale * term for term in ac]
    return dc, ac, scale
