"""The ThumbHash encoder against Evan Wallace's reference, and the placeholder of an image."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from PIL import Image

from look.imaging import thumbhash

from support import imagegen

# Made by the reference encoder, rgbaToThumbHash of the npm package thumbhash
# 0.1.1 under Node, from the RGBA bytes of the same images.
REFERENCE = {
    'landscape': (
        (100, 56),
        lambda: imagegen.picture((100, 56), seed=3),
        '3WcKPJITeqaAh4aVh3gGkugPhw==',
    ),
    'portrait': (
        (60, 100),
        lambda: imagegen.picture((60, 100), seed=4),
        'WicKJBKFCIdXeYdmd4g1gLEm9g==',
    ),
    'grainy-square': (
        (100, 100),
        lambda: imagegen.grainy_photo((100, 100), seed=5),
        'ofcJLxRhd4eAd4eGeWeHiGeIB0d7f4EJ',
    ),
}


@pytest.mark.parametrize(('size', 'make', 'expected'), REFERENCE.values(), ids=REFERENCE.keys())
def test_hash_is_the_reference_encoders(
    size: tuple[int, int], make: Callable[[], Image.Image], expected: str
) -> None:
    image = make().convert('RGBA')
    assert image.size == size

    assert base64.b64encode(thumbhash.encode(*size, image.tobytes())).decode() == expected


def half_transparent() -> Image.Image:
    image = imagegen.picture((80, 50), seed=6).convert('RGBA')
    image.paste((0, 0, 0, 0), (0, 0, 40, 50))
    return image


# Images some of whose cosine terms are 0: the reference writes their rounding
# noise (1e-17, scaled up) as arbitrary nibbles, this encoder writes 0. The
# header (average colour, scales, aspect ratio, alpha) is the reference's.
FLAT = {
    'solid': (
        lambda: Image.new('RGBA', (32, 32), (200, 40, 90, 255)),
        '2zgDBwB4eYh3iHiIiEh394eCg9CGf3UH',
    ),
    'one-pixel': (
        lambda: Image.new('RGBA', (1, 1), (10, 200, 30, 255)),
        'VIoon14I9wiIh4hwj3CI+AiIgIAI94cP',
    ),
    'half-transparent': (half_transparent, 'WNiFI4hYGj/Bd4eHsF0fi3B6h4h4eIg='),
}


@pytest.mark.parametrize(('make', 'expected'), FLAT.values(), ids=FLAT.keys())
def test_header_of_a_flat_image_is_the_reference_encoders(
    make: Callable[[], Image.Image], expected: str
) -> None:
    image = make()
    reference = base64.b64decode(expected)

    ours = thumbhash.encode(*image.size, image.tobytes())

    assert len(ours) == len(reference)
    header = 6 if reference[2] & 0x80 else 5
    assert ours[:header] == reference[:header]


def average_rgb(hash_bytes: bytes) -> tuple[float, float, float]:
    """Return the average colour of a ThumbHash, 0-1 (the reference's thumbHashToAverageRGBA)."""
    header = hash_bytes[0] | (hash_bytes[1] << 8) | (hash_bytes[2] << 16)
    luma = (header & 63) / 63
    p = ((header >> 6) & 63) / 31.5 - 1
    q = ((header >> 12) & 63) / 31.5 - 1
    blue = luma - 2 / 3 * p
    red = (3 * luma - blue + q) / 2
    return red, red - q, blue


@pytest.mark.parametrize('colour', [(200, 40, 90), (255, 255, 255), (0, 0, 0), (30, 160, 250)])
def test_placeholder_of_a_solid_image_is_its_colour(colour: tuple[int, int, int]) -> None:
    encoded, average = thumbhash.placeholder(Image.new('RGB', (640, 360), colour))

    assert average == '#{:02x}{:02x}{:02x}'.format(*colour)
    decoded = average_rgb(base64.b64decode(encoded))
    # 6 bits of luma, 6 of each colour difference: within 3% of each channel
    assert all(
        abs(min(1, max(0, got)) - want / 255) < 0.03
        for got, want in zip(decoded, colour, strict=True)
    )


@pytest.mark.parametrize(
    ('size', 'landscape', 'short_side_terms'),
    [
        ((640, 360), True, 4),
        ((360, 640), False, 4),
        ((500, 500), False, 7),
        ((4000, 1000), True, 2),
    ],
)
def test_aspect_ratio_is_in_the_header(
    size: tuple[int, int], landscape: bool, short_side_terms: int
) -> None:
    encoded, _ = thumbhash.placeholder(imagegen.picture(size))
    hash_bytes = base64.b64decode(encoded)

    assert bool(hash_bytes[4] & 0x80) == landscape
    assert hash_bytes[3] & 7 == short_side_terms  # luma terms along the shorter side
    assert not hash_bytes[2] & 0x80  # opaque
    assert 17 <= len(hash_bytes) <= 24


def test_alpha_is_encoded_and_averaged_by_opacity() -> None:
    image = Image.new('RGBA', (64, 64), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (32, 0, 64, 64))

    encoded, average = thumbhash.placeholder(image)

    hash_bytes = base64.b64decode(encoded)
    assert hash_bytes[2] & 0x80  # has alpha
    assert 7 <= (hash_bytes[5] & 15) <= 8  # half opaque, in 15ths
    assert average == '#ff0000'  # transparent pixels weigh nothing


def test_a_larger_image_is_scaled_to_fit_first() -> None:
    with pytest.raises(ValueError, match='101x1'):
        thumbhash.encode(101, 1, bytes(404))
    large = imagegen.picture((1000, 560), seed=3).convert('RGBA')

    encoded, _ = thumbhash.placeholder(large)

    small = large.resize((32, 18), Image.Resampling.BOX)
    assert encoded == base64.b64encode(thumbhash.encode(32, 18, small.tobytes())).decode()


def test_numpy_loads_where_a_placeholder_is_made_not_where_look_is_imported() -> None:
    """A web worker imports every floor and the pool's functions; numpy loads in the pool."""
    script = textwrap.dedent(
        """
        import sys
        import look.app, look.imaging.pool, look.imaging.convert, look.imaging.render
        from PIL import Image
        before = 'numpy' in sys.modules
        look.imaging.convert.placeholder(Image.new('RGB', (64, 36), (200, 40, 90)))
        print(before, 'numpy' in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, check=True
    )

    assert result.stdout.split()[:2] == ['False', 'True']
