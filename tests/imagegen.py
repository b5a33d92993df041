"""Seeded test images, generated with Pillow: no binary fixtures in the repository."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw


def picture(size: tuple[int, int] = (640, 360), mode: str = 'RGB', seed: int = 0) -> Image.Image:
    """Return a reproducible picture: a gradient with random rectangles on it.

    Not flat colour, so JPEG sizes and resampling behave as with photos;
    not pure noise, so files stay small.
    """
    rng = random.Random(seed)
    width, height = size
    gradient = Image.linear_gradient('L').resize(size)
    image = Image.merge(
        'RGB',
        (gradient, gradient.rotate(90).resize(size), Image.new('L', size, rng.randrange(256))),
    )
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width // 3 + 2), y0 + rng.randrange(1, height // 3 + 2)
        fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    if mode != 'RGB':
        image = image.convert(mode)
    return image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Return ``image`` encoded as ``fmt`` (a Pillow format name)."""
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def image_bytes(
    fmt: str = 'JPEG',
    size: tuple[int, int] = (640, 360),
    mode: str = 'RGB',
    seed: int = 0,
    **params: object,
) -> bytes:
    """Return a seeded picture of ``size`` in ``mode``, encoded as ``fmt``."""
    return encode(picture(size, mode, seed), fmt, **params)


# -- metadata ------------------------------------------------------------------

ORIENTATION = 0x0112
GPS_IFD = 0x8825
# Strings that must never reach a stored image: they stand for private metadata.
SECRET_CAMERA = 'look-test-camera-4711'
SECRET_COMMENT = b'look-test-comment-4711'


def exif_jpeg(
    size: tuple[int, int] = (640, 360), orientation: int = 6, *, seed: int = 0, corner: bool = True
) -> bytes:
    """Return a JPEG with EXIF orientation, camera model, GPS position and a comment.

    With ``corner``, the stored top-left 64x64 block is pure red, so a test can
    follow where the orientation moves it.
    """
    image = picture(size, seed=seed)
    if corner:
        image.paste((255, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x0110] = SECRET_CAMERA  # Model
    gps = exif.get_ifd(GPS_IFD)
    gps[1] = 'N'  # GPSLatitudeRef
    gps[2] = (52.0, 22.0, 47.0)  # GPSLatitude
    gps[3] = 'E'  # GPSLongitudeRef
    gps[4] = (4.0, 53.0, 31.0)  # GPSLongitude
    return encode(image, 'JPEG', exif=exif.tobytes(), comment=SECRET_COMMENT, quality=95)


# -- a hand-built ICC profile ------------------------------------------------------

# sRGB's colorants adapted to D50, as the PCS wants them (from the sRGB ICC profile).
_SRGB_RED = (0.4361, 0.2225, 0.0139)
_SRGB_GREEN = (0.3851, 0.7169, 0.0971)
_SRGB_BLUE = (0.1431, 0.0606, 0.7141)
_D50 = (0.9642, 1.0, 0.8249)


def _s15f16(*values: float) -> bytes:
    return b''.join(struct.pack('>i', round(value * 65536)) for value in values)


def swapped_primaries_icc() -> bytes:
    """Return an ICC v2 RGB display profile whose red and green primaries are sRGB's swapped.

    A pure red pixel tagged with it is sRGB green: a converter that honours the
    profile turns red into green, one that ignores it leaves it red.
    """
    description = b'look test: sRGB with red and green swapped\x00'
    tags = [
        (
            b'desc',
            b'desc\0\0\0\0'
            + struct.pack('>I', len(description))
            + description
            + bytes(4 + 4 + 2 + 1 + 67),  # no Unicode or ScriptCode description
        ),
        (b'wtpt', b'XYZ \0\0\0\0' + _s15f16(*_D50)),
        (b'rXYZ', b'XYZ \0\0\0\0' + _s15f16(*_SRGB_GREEN)),
        (b'gXYZ', b'XYZ \0\0\0\0' + _s15f16(*_SRGB_RED)),
        (b'bXYZ', b'XYZ \0\0\0\0' + _s15f16(*_SRGB_BLUE)),
        # gamma 2.2 as u8Fixed8; the three channels share one curve
        (b'rTRC', b'curv\0\0\0\0' + struct.pack('>IH', 1, 0x0233) + b'\0\0'),
    ]
    tags += [(b'gTRC', tags[-1][1]), (b'bTRC', tags[-1][1])]

    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table = struct.pack('>I', len(tags))
    data = b''
    for signature, body in tags:
        table += signature + struct.pack('>II', offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack('>I', size)
        + b'\0\0\0\0'  # preferred CMM
        + struct.pack('>I', 0x02100000)  # version 2.1
        + b'mntrRGB XYZ '
        + struct.pack('>6H', 2024, 1, 1, 0, 0, 0)
        + b'acsp'
        + bytes(24)  # platform, flags, manufacturer, model, attributes
        + struct.pack('>I', 0)  # perceptual intent
        + _s15f16(*_D50)
        + bytes(4 + 16 + 28)  # creator, profile id, reserved
    )
    assert len(header) == 128
    return header + table + data


def solid(
    colour: tuple[int, ...], size: tuple[int, int] = (256, 256), mode: str = 'RGB'
) -> Image.Image:
    """Return a flat image: for colour checks, where JPEG keeps flat areas exact."""
    return Image.new(mode, size, colour)


# -- unusual modes -------------------------------------------------------------------


def grey16_png(value: int = 32768, size: tuple[int, int] = (256, 128)) -> bytes:
    """Return a 16-bit greyscale PNG: the left half at ``value``, the right half black."""
    image = Image.new('I;16', size, 0)
    # NOTE: paste() a colour into I;16 is a no-op; paste an image instead.
    image.paste(Image.new('I;16', (size[0] // 2, size[1]), value), (0, 0))
    return encode(image, 'PNG')


def palette_png(size: tuple[int, int] = (256, 128)) -> bytes:
    """Return a palette PNG: index 0 (pure blue) transparent on the left half, index 1 red."""
    image = Image.new('P', size, 1)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, size[0] // 2, size[1]))
    return encode(image, 'PNG', transparency=0)


def rgba_png(size: tuple[int, int] = (256, 128)) -> bytes:
    """Return an RGBA PNG: a fully transparent (black) left half, an opaque red right half."""
    image = Image.new('RGBA', size, (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return encode(image, 'PNG')


def trns_png(depth: int, colour_type: int, rows: list[bytes], width: int, trns: bytes) -> bytes:
    """Return a PNG written byte by byte, with a tRNS chunk: depths Pillow does not write.

    ``rows`` are the raw scanlines (each gets filter byte 0); colour type 0 is
    grey, 2 is RGB.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack('>I', zlib.crc32(kind + data))
        return struct.pack('>I', len(data)) + kind + data + checksum

    header = struct.pack('>IIBBBBB', width, len(rows), depth, colour_type, 0, 0, 0)
    pixels = zlib.compress(b''.join(b'\0' + row for row in rows))
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', header)
        + chunk(b'tRNS', trns)
        + chunk(b'IDAT', pixels)
        + chunk(b'IEND', b'')
    )


def animated_gif(size: tuple[int, int] = (128, 96), frames: int = 3) -> bytes:
    """Return an animated GIF: the first frame red, the next ones green, then blue."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [solid(colours[n % 3], size).convert('P') for n in range(frames)]
    return encode(images[0], 'GIF', save_all=True, append_images=images[1:], duration=100, loop=0)


def cmyk_jpeg(size: tuple[int, int] = (256, 128)) -> bytes:
    """Return a CMYK JPEG: left half cyan+yellow (green), right half magenta+yellow (red)."""
    image = Image.new('CMYK', size, (0, 255, 255, 0))
    image.paste((255, 0, 255, 0), (0, 0, size[0] // 2, size[1]))
    return encode(image, 'JPEG', quality=95)


# -- hostile files ------------------------------------------------------------------


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """Return a tiny PNG whose header claims ``width`` x ``height`` (CRC fixed)."""
    data = bytearray(image_bytes('PNG', size=(8, 8)))
    assert data[12:16] == b'IHDR'
    data[16:24] = struct.pack('>II', width, height)
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def gif_bomb(width: int = 65_535, height: int = 65_535) -> bytes:
    """Return a tiny GIF whose logical screen is ``width`` x ``height``."""
    data = bytearray(image_bytes('GIF', size=(8, 8)))
    data[6:10] = struct.pack('<HH', width, height)
    return bytes(data)


def jpeg_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """Return a tiny JPEG whose start-of-frame claims ``width`` x ``height``."""
    data = bytearray(image_bytes('JPEG', size=(8, 8)))
    sof = data.index(b'\xff\xc0')
    # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """Return the first ``keep`` fraction of ``data``: an upload cut off mid-way."""
    return data[: int(len(data) * keep)]


def random_bytes(length: int = 4096, seed: int = 0) -> bytes:
    """Return seeded noise that is no image format."""
    return random.Random(seed).randbytes(length)


def corrupt_png(size: tuple[int, int] = (640, 360), seed: int = 0) -> bytes:
    """Return a PNG whose compressed pixel data is garbled: the header still reads fine."""
    data = bytearray(image_bytes('PNG', size=size, seed=seed))
    start = data.index(b'IDAT') + 4 + 10
    data[start : start + 50] = random.Random(seed).randbytes(50)
    return bytes(data)
