"""Seeded test images, generated with Pillow: no binary fixtures in the repository."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Sequence

from hypothesis import strategies as st
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


def photo(size: tuple[int, int], seed: int = 0, fmt: str = 'JPEG') -> bytes:
    """Return a photograph as a camera writes one: grainy, 2.3 bits a pixel as a q90 JPEG.

    A picture with a tile of seeded noise blended in, as sensor grain is: a
    24-megapixel JPEG is 6.9 MB and takes ~0.2 s of CPU to convert here.
    """
    grain = Image.frombytes('RGB', (256, 256), random.Random(seed).randbytes(256 * 256 * 3))
    noise = Image.new('RGB', size)
    for left in range(0, size[0], grain.width):
        for top in range(0, size[1], grain.height):
            noise.paste(grain, (left, top))
    grainy = Image.blend(picture(size, seed=seed), noise, 0.12)
    return encode(grainy, fmt, **({'quality': 90} if fmt == 'JPEG' else {}))


def grainy_photo(size: tuple[int, int] = (640, 360), seed: int = 0) -> Image.Image:
    """Return ``picture`` with grain all over: it compresses as a photo from a camera does.

    As a JPEG of quality 90, 3.5 bits a pixel: 8190x8190 is 29 MB.
    """
    rng = random.Random(seed)
    grain = Image.frombytes('L', size, rng.randbytes(size[0] * size[1]))
    return Image.blend(picture(size, seed=seed), Image.merge('RGB', (grain,) * 3), 0.2)


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


# The colours of the frames of ``animation_frames``, in turn.
FRAME_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def animation_frames(
    size: tuple[int, int] = (128, 96), frames: int = 3, mode: str = 'RGB'
) -> list[Image.Image]:
    """Return frames of flat colours in turn (red, green, blue), a white square moving across."""
    images = []
    for n in range(frames):
        image = solid(FRAME_COLOURS[n % 3], size).convert(mode)
        left = n * 7 % max(size[0] - 8, 1)
        image.paste((255, 255, 255) + (() if mode == 'RGB' else (255,)), (left, 0, left + 8, 8))
        images.append(image)
    return images


def animation(
    fmt: str,
    size: tuple[int, int] = (128, 96),
    frames: int = 3,
    durations: Sequence[int] | int = 100,
    loop: int = 0,
) -> bytes:
    """Return an animated GIF, WebP or PNG (APNG) of ``animation_frames``.

    ``durations`` in milliseconds, one for all frames or one each.
    """
    images = animation_frames(size, frames)
    if fmt == 'GIF':
        images = [image.convert('P') for image in images]
    params: dict[str, object] = {'lossless': True} if fmt == 'WEBP' else {}
    return encode(
        images[0],
        fmt,
        save_all=True,
        append_images=images[1:],
        duration=list(durations) if not isinstance(durations, int) else durations,
        loop=loop,
        **params,
    )


def moving_picture(size: tuple[int, int] = (480, 270), frames: int = 60) -> bytes:
    """Return an ordinary animated GIF: a seeded picture panning by, 25 frames a second."""
    base = picture(size)
    images = []
    for n in range(frames):
        image = Image.new('RGB', size)
        shift = n * 4 % size[0]
        image.paste(base, (shift - size[0], 0))
        image.paste(base, (shift, 0))
        images.append(image.quantize(256))
    return encode(images[0], 'GIF', save_all=True, append_images=images[1:], duration=40, loop=0)


def frame_bomb_gif(screen: tuple[int, int] = (2000, 2000), frames: int = 20_000) -> bytes:
    """Return a GIF of ``frames`` one-pixel frames on a large screen: 460 KB by default.

    Each frame is decoded onto the whole screen: 80 billion pixels of frames.
    """
    header = b'GIF89a' + struct.pack('<HHBBB', *screen, 0x80, 0, 0) + b'\x00\x00\x00\xff\xff\xff'
    looping = b'\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00'
    # A frame: its timing, a 1x1 image descriptor, then LZW codes clear, 0, end (3 bits each).
    frame = (
        b'\x21\xf9\x04\x00\x02\x00\x00\x00'
        + b'\x2c'
        + struct.pack('<HHHHB', 0, 0, 1, 1, 0)
        + b'\x02\x02\x44\x01\x00'
    )
    return header + looping + frame * frames + b'\x3b'


def cmyk_jpeg(size: tuple[int, int] = (256, 128)) -> bytes:
    """Return a CMYK JPEG: left half cyan+yellow (green), right half magenta+yellow (red)."""
    image = Image.new('CMYK', size, (0, 255, 255, 0))
    image.paste((255, 0, 255, 0), (0, 0, size[0] // 2, size[1]))
    return encode(image, 'JPEG', quality=95)


# -- JPEGs with every kind of metadata ------------------------------------------------

SECRET_XMP = b'look-test-xmp-4711'
SECRET_IPTC = b'look-test-iptc-4711'


def metadata_jpeg(
    size: tuple[int, int] = (640, 360),
    *,
    icc_profile: bytes | None = None,
    trailer: bytes = b'',
    image: Image.Image | None = None,
    **params: object,
) -> bytes:
    """Return an upright JPEG carrying EXIF (with GPS), XMP, IPTC, a comment and an APP15.

    Segments as cameras and editors write them, after Pillow's JFIF: APP1
    EXIF and XMP, APP2 ICC (if given), APP13 Photoshop IPTC, APP15, COM;
    ``trailer`` goes after the end of image, as phones append data there.
    The pixels are ``image``'s, or a grainy photo's of ``size``.
    """
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    exif[0x0110] = SECRET_CAMERA
    exif.get_ifd(GPS_IFD)[1] = 'N'
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + SECRET_XMP + b'</x:xmpmeta>'
    data = encode(
        image if image is not None else grainy_photo(size),
        'JPEG',
        quality=90,
        exif=exif.tobytes(),
        xmp=xmp,
        comment=SECRET_COMMENT,
        **({'icc_profile': icc_profile} if icc_profile else {}),
        **params,
    )
    iptc = b'Photoshop 3.0\x008BIM\x04\x04\x00\x00' + struct.pack('>I', 20) + SECRET_IPTC + b'\x00'
    extra = _jpeg_segment(0xED, iptc) + _jpeg_segment(0xEF, b'look-test-app15')
    sos = data.index(b'\xff\xda')
    # before the tables: Pillow writes its APPn and COM first, as cameras do
    first_table = data.index(b'\xff\xdb')
    return data[:first_table] + extra + data[first_table:sos] + data[sos:] + trailer


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """Return the (marker, payload) of each segment of a JPEG before its first scan."""
    segments = []
    position = 2
    while data[position] == 0xFF:
        marker = data[position + 1]
        (length,) = struct.unpack_from('>H', data, position + 2)
        segments.append((marker, data[position + 4 : position + 2 + length]))
        if marker == 0xDA:
            return segments
        position += 2 + length
    raise AssertionError(f'no marker at byte {position}')


def same_placeholder(first: dict[str, str], second: dict[str, str]) -> bool:
    """Return whether two placeholders are of one picture, made from different decodes of it.

    The same header (average, scales, aspect ratio, alpha), every other
    nibble at most a step apart, and each colour channel within 2 levels:
    a JPEG stored from a PNG, or drafted at 1/8, rounds a little otherwise.
    """
    ours, theirs = (base64.b64decode(p['thumbhash']) for p in (first, second))
    if len(ours) != len(theirs) or ours[:5] != theirs[:5]:
        return False
    nibbles = [
        abs(((a >> shift) & 15) - ((b >> shift) & 15))
        for a, b in zip(ours[5:], theirs[5:], strict=True)
        for shift in (0, 4)
    ]
    colours = zip(*(bytes.fromhex(p['color'][1:]) for p in (first, second)), strict=True)
    return max(nibbles, default=0) <= 1 and all(abs(a - b) <= 2 for a, b in colours)


# -- formats of phones and modern tools ------------------------------------------------


def register_plugins() -> None:
    """Let Pillow in the test process write and read HEIF and JPEG XL, as a pool process can."""
    import pillow_heif
    from pillow_jxl import JpegXLImagePlugin  # noqa: F401 (registers itself)

    pillow_heif.register_heif_opener()


def modern(fmt: str, size: tuple[int, int] = (640, 360), seed: int = 0, **params: object) -> bytes:
    """Return a seeded photo-like picture as HEIF (pillow-heif), AVIF (Pillow) or JXL."""
    register_plugins()
    return encode(grainy_photo(size, seed), fmt, **params)


def rotated_heic(orientation: int, size: tuple[int, int] = (640, 360)) -> bytes:
    """Return a HEIC whose top-left 64x64 is red, turned by ``orientation`` as EXIF numbers them.

    pillow-heif writes the turn as HEIF's own irot and imir boxes, as a phone does.
    """
    register_plugins()
    image = picture(size)
    image.paste((255, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(image, 'HEIF', exif=exif.tobytes(), quality=90)


def isobmff_bomb(fmt: str = 'HEIF', width: int = 60_000, height: int = 60_000) -> bytes:
    """Return a small HEIF or AVIF whose every ``ispe`` box claims ``width`` x ``height``."""
    register_plugins()
    data = bytearray(image_bytes(fmt, size=(64, 64)))
    position = data.find(b'ispe')
    assert position > 0
    while position > 0:
        data[position + 8 : position + 16] = struct.pack('>II', width, height)
        position = data.find(b'ispe', position + 4)
    return bytes(data)


def jxl_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """Return a small JPEG XL codestream whose size header claims ``width`` x ``height``.

    The header is bit-packed, least significant bit first: the original one
    is replaced by one with 30-bit sides, the rest of the stream shifted after it.
    """
    register_plugins()
    data = image_bytes('JXL', size=(8, 8))
    assert data[:2] == b'\xff\x0a'
    bits = int.from_bytes(data[2:], 'little')
    # 8x8 is small (1 bit), one 8-pixel unit high (5 bits), ratio 1:1 (3 bits).
    assert bits & 1 and (bits >> 1) & 31 == 0 and (bits >> 6) & 7 == 1
    rest = bits >> 9
    header = header_bits = 0
    # small 0, selector 3, height - 1 (30 bits), ratio 0, selector 3, width - 1 (30 bits)
    for value, count in ((0, 1), (3, 2), (height - 1, 30), (0, 3), (3, 2), (width - 1, 30)):
        header |= value << header_bits
        header_bits += count
    body = header | (rest << header_bits)
    return b'\xff\x0a' + body.to_bytes((body.bit_length() + 7) // 8, 'little')


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


def animated_png(size: tuple[int, int] = (128, 96), frames: int = 3) -> bytes:
    """Return an APNG: the first frame red, the next ones green, then blue."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [solid(colours[n % 3], size) for n in range(frames)]
    return encode(images[0], 'PNG', save_all=True, append_images=images[1:], duration=100)


# -- images that cost far more than their bytes --------------------------------------


class _BitWriter:
    """Bits of a JPEG scan, most significant first, with 0xFF bytes stuffed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._bits = 0
        self._count = 0

    def write(self, value: int, length: int) -> None:
        self._bits = (self._bits << length) | value
        self._count += length
        while self._count >= 8:
            self._count -= 8
            byte = (self._bits >> self._count) & 0xFF
            self.data += b'\xff\x00' if byte == 0xFF else bytes([byte])
        self._bits &= (1 << self._count) - 1

    def zeros(self, length: int) -> None:
        """Write ``length`` zero bits, a byte at a time where it can."""
        while length and self._count:
            self.write(0, 1)
            length -= 1
        self.data += bytes(length // 8)
        self.write(0, length % 8)

    def end(self) -> bytes:
        if self._count:
            self.write((1 << (8 - self._count)) - 1, 8 - self._count)  # pad with ones
        return bytes(self.data)


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack('>H', len(payload) + 2) + payload


def progressive_scan_bomb(
    size: tuple[int, int] = (10_000, 10_000), scans: int = 600, refinements: int | None = None
) -> bytes:
    """Return a grey progressive JPEG of ``size`` with ``scans`` scans, nearly all empty.

    A DC scan codes every block as grey in one bit; an AC scan and then
    ``refinements`` refinement scans (all the rest, by default) code every
    block as an end-of-band run, a few bytes a scan; the rest are first AC
    scans again. libjpeg still visits each block's 63 coefficients in each
    refinement scan: that is the cost. A first scan skips the run at once.
    """
    width, height = size
    blocks = -(-width // 8) * -(-height // 8)
    dc = _BitWriter()
    dc.zeros(blocks)  # the one DC code, '0': no difference from the block before
    ac = _BitWriter()
    left = blocks
    while left:  # EOBn: a run of 2**n + (n extra bits) blocks, at most 32767
        run = min(left, 32767)
        bits = run.bit_length() - 1
        ac.write(bits, 4)  # codes 0000-1110 stand for EOB0-EOB14
        ac.write(run - (1 << bits), bits)
        left -= run
    empty = ac.end()
    grey = struct.pack('>BHHB', 8, height, width, 1) + b'\x01\x11\x00'
    parts = [
        b'\xff\xd8',
        _jpeg_segment(0xDB, bytes(1) + bytes([1] * 64)),
        _jpeg_segment(0xC2, grey),
        # Huffman tables: DC, symbol 0 in one bit; AC, EOB0-EOB14 in four bits each.
        _jpeg_segment(0xC4, b'\x00' + bytes([1] + [0] * 15) + b'\x00'),
        _jpeg_segment(0xC4, b'\x10' + bytes([0, 0, 0, 15] + [0] * 12) + bytes(range(0, 240, 16))),
        # Scans: component 1, tables 0; first and last coefficient; approximation bits.
        _jpeg_segment(0xDA, b'\x01\x01\x00\x00\x00\x00') + dc.end(),
        _jpeg_segment(0xDA, b'\x01\x01\x00\x01\x3f\x01') + empty,
    ]
    if refinements is None:
        refinements = scans - 2
    parts += [_jpeg_segment(0xDA, b'\x01\x01\x00\x01\x3f\x10') + empty] * refinements
    parts += [_jpeg_segment(0xDA, b'\x01\x01\x00\x01\x3f\x01') + empty] * (scans - 2 - refinements)
    return b''.join([*parts, b'\xff\xd9'])


def blank_lossless_webp(size: tuple[int, int] = (10_000, 10_000)) -> bytes:
    """Return a 38-byte lossless WebP of ``size`` (at most 16384x16384), all one colour.

    libwebp codes a flat picture with one-symbol prefix codes, zero bits a
    pixel: its 8x8 bitstream, with the size changed, is valid at any size.
    """
    data = bytearray(encode(solid((200, 100, 50), (8, 8)), 'WEBP', lossless=True))
    assert data[12:16] == b'VP8L' and data[20] == 0x2F
    (bits,) = struct.unpack_from('<I', data, 21)
    bits = (bits & ~((1 << 28) - 1)) | (size[0] - 1) | ((size[1] - 1) << 14)
    struct.pack_into('<I', data, 21, bits)
    return bytes(data)


def tiled_noise(size: tuple[int, int], tile: int = 16, seed: int = 0) -> Image.Image:
    """Return one ``tile``-pixel square of black and white noise, repeated over ``size``.

    Lossless WebP codes the repeats as copies, a few KB in all; JPEG cannot,
    at about a byte a pixel.
    """
    rng = random.Random(seed)
    square = Image.frombytes(
        'L', (tile, tile), bytes(rng.choice((0, 255)) for _ in range(tile**2))
    )
    row = Image.new('L', (size[0], tile))
    for left in range(0, size[0], tile):
        row.paste(square, (left, 0))
    image = Image.new('L', size)
    for top in range(0, size[1], tile):
        image.paste(row, (0, top))
    return image.convert('RGB')


def bar_chart(size: tuple[int, int] = (640, 360), seed: int = 0) -> Image.Image:
    """Return a bar chart without labels: flat colours, as exported charts and diagrams are."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new('RGB', size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    colours = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88)]
    base, step = height * 9 // 10, width * 8 // 10 // 12
    for bar in range(12):
        left = width // 10 + bar * step
        top = base - rng.randrange(height // 10, height * 7 // 10)
        draw.rectangle((left, top, left + step * 2 // 3, base), fill=colours[bar % 4])
    axes = (width // 10, height // 20, width // 10, base, width * 9 // 10, base)
    draw.line(axes, fill=(0, 0, 0), width=3)
    return image


def rle_bmp(size: tuple[int, int], pixels: bytes = b'\x00\x01') -> bytes:
    """Return an 8-bit RLE BMP of ``size`` whose pixel data is ``pixels`` (by default: the end)."""
    width, height = size
    palette = b''.join(bytes((grey, grey, grey, 0)) for grey in range(256))
    # BITMAPINFOHEADER: size, width, height, planes, bits, compression 1 (RLE8), data size,
    # resolution, colours used, colours important.
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return (
        b'BM' + struct.pack('<IHHI', offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def mutations(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A strategy of ``seeds`` with bytes flipped, inserted, deleted or cut off (for fuzzing)."""

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            mutation = draw(st.sampled_from(['flip', 'insert', 'delete', 'cut']))
            if mutation == 'flip' and data:
                data[at] ^= draw(st.integers(1, 255))
            elif mutation == 'insert':
                data[at:at] = draw(st.binary(min_size=1, max_size=32))
            elif mutation == 'delete':
                del data[at : at + draw(st.integers(1, 32))]
            else:
                del data[at:]
        return bytes(data)

    return mutated()
