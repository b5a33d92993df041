"""Cheap checks of an upload's container, before Pillow decodes a pixel of it.

What an image costs to decode follows more than its pixel count: libjpeg
passes over every block once per progressive scan, Pillow walks PNG chunks,
GIF blocks and TIFF tags in Python, and a few bytes of WebP can stand for
a hundred million pixels. These functions read headers, marker segments
and chunk tables (never pixels) and refuse what no real encoder writes.
They run in the pool process, on the upload's file; what they cannot parse
they leave to Pillow, which answers a broken file with its own error.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Callable, Iterator

from look.errors import ImageTooComplex, ImageTooLarge

# -- what real encoders write --------------------------------------------------

# NOTE: libjpeg-turbo and mozjpeg write 10 progressive scans for colour and
#   6 for grey; libjpeg's script for CMYK has 18, the most of any encoder we
#   know (jpegtran and jpegrescan choose among the same kinds of scan). Each
#   scan is a pass over all of its blocks even when it codes nothing: an
#   empty refinement scan of 10000x10000 took 70 ms here, so 600 of them
#   held a process for 40 s.
JPEG_MAX_SCANS = 32
# NOTE: what a scan that codes nothing costs follows its kind. A first scan
#   of AC coefficients skips a run of empty blocks at once (2.7 ms for the
#   million blocks of 8190x8190 here), a DC scan carries a bit a block at
#   least; but a refinement scan of AC coefficients visits every coefficient
#   of its band in every block of its components (40 ms a million blocks),
#   whatever it codes. So those are counted, as passes over all the image's
#   blocks: a refinement scan of the luma of a 4:2:0 JPEG is 2/3 of a pass.
#   libjpeg-turbo's scripts make 2 passes (grey, CMYK), 1.67 (4:2:0) or 1.33
#   (4:4:4); mozjpeg and jpegrescan refine luma up to three times. At 4
#   passes, a JPEG of 8190x8190 coding nothing converts in 0.7 s of CPU, as
#   a real photo of that size does (0.6 s); at 32 it took 1.6 s.
JPEG_MAX_REFINEMENT_PASSES = 4
# Marker segments (APPn, COM, DQT, DHT...): Pillow parses those before the
# first scan in Python, ~4 us each. Real files have a dozen to a few dozen;
# an ICC profile is split into at most 255 APP2 segments.
JPEG_MAX_SEGMENTS = 1024
# Chunks Pillow reads in Python, 3-6 us each: libpng writes 8 KiB IDATs, so
# a 32 MiB PNG has 4096 of them.
PNG_MAX_CHUNKS = 16_384
# Extension blocks and their sub-blocks before the first image, read by
# Pillow in Python at ~1 us each: comments, looping, frame timing, and XMP,
# whose bytes read as sub-blocks of ~80 each (Photoshop's XMP can run to a
# megabyte: ~12 000 of them).
GIF_MAX_BLOCKS = 65_536
# Top-level chunks, one per frame of an animation: 16 384 frames are nine
# minutes at 30 frames a second.
WEBP_MAX_CHUNKS = 16_384
# Tags of the first directory, parsed one by one in Python: cameras and
# scanners write up to ~100.
TIFF_MAX_TAGS = 1024
# Strips or tiles of the first page: Pillow makes a tile of each strip of an
# uncompressed TIFF (~6 us each). One strip a row of the tallest JPEG side.
TIFF_MAX_STRIPS = 65_536

# Up to this many pixels, an upload may be as small as it likes.
# NOTE: the costliest such image measured, a blank 2048x2048 lossless WebP
#   of 38 bytes, converts in ~70 ms of CPU, as a 4000x3000 JPEG photo does.
PIXELS_PER_BYTE_FLOOR = 2048 * 2048
# NOTE: the most pixels a byte of upload carries in each format (measured
#   on generated 4000x3000 images):
#   - JPEG: one 8x8 block a bit, in a progressive DC scan of one-bit codes
#     with every AC band an end-of-band run; Pillow's blank progressive JPEG
#     has 170, its blank baseline 64, photos 5-60.
#   - PNG and TIFF: deflate codes at most 258 bytes in two bits (1032:1),
#     at eight 1-bit pixels a byte; a blank 1-bit PNG has 7737. CCITT G4 or
#     zstd go beyond it for blank pages only (G4: 9449).
#   - GIF: an LZW code of 12 bits stands for at most 4091 pixels (a
#     two-colour table never cleared); Pillow's blank GIF has 1237.
#   - BMP: 1-bit rows, uncompressed (RLE is bounded on its own, below).
#   - WebP: lossless has no ceiling (a blank canvas of any size is ~40
#     bytes), so it gets PNG's, which no PNG can pass: what is refused here
#     can be sent as PNG. Charts, slides and screenshots reached 150-1100,
#     flat bars without text 5900, blank lossy 560; tiled noise that turns
#     6 KB into a 54 MB JPEG has 10 840.
MAX_PIXELS_PER_BYTE = {
    'JPEG': 64 * 8,
    'MPO': 64 * 8,
    'PNG': 1032 * 8,
    'TIFF': 1032 * 8,
    'WEBP': 1032 * 8,
    'GIF': 4091 * 8 // 12,
    'BMP': 8,
}
# Pillow's format names, as a person writes them.
_FORMAT_NAMES = {'MPO': 'JPEG', 'WEBP': 'WebP'}
# NOTE: Pillow decodes RLE BMPs in Python, at up to 140 ns a pixel (ten
#   times a JPEG): its end-of-line padding goes a byte at a time.
RLE_BMP_MAX_PIXELS = PIXELS_PER_BYTE_FLOOR


def check_pixels_per_byte(image_format: str, size: tuple[int, int], file_size: int) -> None:
    """Refuse an image with more pixels than its upload's bytes can hold in its format."""
    width, height = size
    pixels = width * height
    ceiling = MAX_PIXELS_PER_BYTE.get(image_format)
    if pixels <= PIXELS_PER_BYTE_FLOOR or ceiling is None or pixels <= ceiling * file_size:
        return
    name = _FORMAT_NAMES.get(image_format, image_format)
    raise ImageTooLarge(
        f'The image is {width}x{height} ({pixels} pixels) in only {file_size} bytes; '
        f'a {name} of more than {PIXELS_PER_BYTE_FLOOR} pixels may have at most '
        f'{ceiling} pixels per byte.'
    )


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image of more than ``max_pixels`` pixels."""
    if width * height > max_pixels:
        raise ImageTooLarge(
            f'The image is {width}x{height}, {megapixels(width * height)} megapixels; '
            f'the limit is {megapixels(max_pixels)} megapixels.'
        )


def megapixels(pixels: int) -> str:
    """Return a number of pixels as people read a pixel limit: in megapixels (67, 1.5)."""
    value = pixels / 1_000_000
    return f'{value:.0f}' if value >= 10 else f'{value:.2g}'


def check_container(path: str, max_pixels: int) -> None:
    """Refuse the upload at ``path`` if its container is built as no real encoder builds it."""
    with open(path, 'rb') as file:
        if os.fstat(file.fileno()).st_size < 16:
            return
        # PERF: mapped, so a walk past the pixel data reads only the pages of
        #   the headers it lands on, and a JPEG's scans are searched in C.
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            check = _checker(view[:16])
            if check is not None:
                try:
                    check(view, max_pixels)
                except (IndexError, struct.error):
                    return  # cut off mid-structure: Pillow says how it is broken


Checker = Callable[[mmap.mmap, int], None]


def _checker(head: bytes) -> Checker | None:
    """Return the check for the format ``head`` names, as Pillow would identify it."""
    if head.startswith(b'\xff\xd8\xff'):
        return _check_jpeg
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return _check_png
    if head.startswith((b'GIF87a', b'GIF89a')):
        return _check_gif
    if head.startswith(b'BM'):
        return _check_bmp
    if head.startswith((b'MM\x00*', b'II*\x00', b'MM*\x00', b'II\x00*', b'MM\x00+', b'II+\x00')):
        return _check_tiff
    if head.startswith(b'RIFF') and head[8:12] == b'WEBP':
        return _check_webp
    return _modern_checker(head)


# -- JPEG ----------------------------------------------------------------------

# A marker: 0xFF then a code that is not stuffing (00), a restart (D0-D7)
# or fill (FF). Past a scan, the first match is where its data ends.
MARKER = re.compile(rb'\xff[\x01-\xcf\xd8-\xfe]')
SOS, EOI, TEM, SOI = 0xDA, 0xD9, 0x01, 0xD8
# Start-of-frame markers (not DHT C4, JPG C8 or DAC CC), and the progressive ones.
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_FRAMES = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _check_jpeg(view: mmap.mmap, max_pixels: int) -> None:
    segments = scans = 0
    progressive = False
    # The blocks of each component, by its id; those all refinement scans visit.
    blocks: dict[int, int] = {}
    refined = 0
    position = 2
    while match := MARKER.search(view, position):
        position = match.start()
        marker = view[position + 1]
        if marker == EOI:
            return
        if marker in (TEM, SOI):  # no length follows
            position += 2
            continue
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            raise ImageTooComplex(
                f'The JPEG has more than {JPEG_MAX_SEGMENTS} marker segments; '
                'real ones have a few dozen.'
            )
        segment = position + 4
        if marker in _FRAMES:
            progressive = marker in _PROGRESSIVE_FRAMES
            blocks = _component_blocks(view, segment)
        position += 2 + int.from_bytes(view[position + 2 : position + 4], 'big')
        if marker == SOS:
            # NOTE: in a sequential JPEG each scan brings new components, and
            #   libjpeg refuses a second scan of one at once: only progressive
            #   scans can repeat. The search below is ~1 ns a byte.
            if not progressive:
                return
            scans += 1
            if scans > JPEG_MAX_SCANS:
                raise ImageTooComplex(
                    f'The JPEG has more than {JPEG_MAX_SCANS} progressive scans; '
                    'encoders write at most 18. Save it again as a baseline JPEG.'
                )
            refined += _refined_blocks(view, segment, blocks)
            total = sum(blocks.values())
            if refined > JPEG_MAX_REFINEMENT_PASSES * total:
                raise ImageTooComplex(
                    f"The JPEG's progressive scans refine its coefficients over "
                    f'{refined / total:.1f} passes of all its blocks; encoders make at most 3, '
                    f'and look takes {JPEG_MAX_REFINEMENT_PASSES}. Save it again as a baseline '
                    'JPEG.'
                )


def _component_blocks(view: mmap.mmap, frame: int) -> dict[int, int]:
    """Return the 8x8 blocks of each component a frame header declares, by component id."""
    height, width, count = struct.unpack_from('>HHB', view, frame + 1)
    sampling = [
        (view[entry], view[entry + 1] >> 4, view[entry + 1] & 15)
        for entry in range(frame + 6, frame + 6 + 3 * count, 3)
    ]
    most_h = max((h for _, h, _ in sampling), default=1) or 1
    most_v = max((v for _, _, v in sampling), default=1) or 1
    # NOTE: as libjpeg sizes each component (jdinput.c): its share of the
    #   image's width and height, rounded up, in blocks rounded up.
    return {
        component: _up(_up(width * h, most_h), 8) * _up(_up(height * v, most_v), 8)
        for component, h, v in sampling
    }


def _up(dividend: int, divisor: int) -> int:
    """Divide, rounding up."""
    return -(-dividend // divisor)


def _refined_blocks(view: mmap.mmap, scan: int, blocks: dict[int, int]) -> int:
    """Return the blocks a scan visits if it refines AC coefficients (0 for another scan)."""
    count = view[scan]
    after = scan + 1 + 2 * count
    first, approximation = view[after], view[after + 2]
    if first == 0 or approximation >> 4 == 0:
        return 0  # a DC scan, or a first scan of its band
    return sum(blocks.get(view[entry], 0) for entry in range(scan + 1, after, 2))


# -- PNG -----------------------------------------------------------------------


def _check_png(view: mmap.mmap, max_pixels: int) -> None:
    chunks = 0
    image_data = False
    position = 8
    while position + 8 <= len(view):
        length, kind = struct.unpack_from('>I4s', view, position)
        chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise ImageTooComplex(
                f'The PNG has more than {PNG_MAX_CHUNKS} chunks before its first frame ends.'
            )
        if kind == b'IEND':
            return
        if kind == b'IDAT':
            image_data = True
        elif kind == b'fcTL' and image_data:
            return  # the next frame of an APNG: only the first is decoded
        position += 12 + length


# -- GIF -----------------------------------------------------------------------


def _check_gif(view: mmap.mmap, max_pixels: int) -> None:
    flags = view[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the palette
    blocks = 0
    # Extensions, up to the first image descriptor: only the first frame is decoded.
    while view[position] == 0x21:
        position += 2  # introducer, label
        while True:
            blocks += 1
            if blocks > GIF_MAX_BLOCKS:
                raise ImageTooComplex(
                    f'The GIF has more than {GIF_MAX_BLOCKS} blocks before its first image.'
                )
            length = view[position]
            position += 1 + length
            if not length:
                break


# -- BMP -----------------------------------------------------------------------

_RLE8, _RLE4 = 1, 2


def _check_bmp(view: mmap.mmap, max_pixels: int) -> None:
    (header_size,) = struct.unpack_from('<I', view, 14)
    if header_size < 40:
        return  # the OS/2 header has no compression
    width, height, _planes, _bits, compression = struct.unpack_from('<iiHHI', view, 18)
    pixels = abs(width) * abs(height)
    if compression in (_RLE8, _RLE4) and pixels > RLE_BMP_MAX_PIXELS:
        raise ImageTooLarge(
            f'The BMP is RLE-compressed and {abs(width)}x{abs(height)} ({pixels} pixels); '
            f'RLE BMPs may have at most {RLE_BMP_MAX_PIXELS} pixels. Send it as PNG.'
        )


# -- TIFF ----------------------------------------------------------------------

# StripOffsets, StripByteCounts, TileOffsets, TileByteCounts: one value a strip or tile.
_STRIP_TAGS = frozenset({273, 279, 324, 325})


def _check_tiff(view: mmap.mmap, max_pixels: int) -> None:
    order = '<' if view[:2] == b'II' else '>'
    # As Pillow reads it: the third byte says BigTIFF (64-bit offsets and counts).
    if view[2] == 43:
        (directory,) = struct.unpack_from(order + 'Q', view, 8)
        count_format, entry_format, entry_size = 'Q', 'HHQ', 20
    else:
        (directory,) = struct.unpack_from(order + 'I', view, 4)
        count_format, entry_format, entry_size = 'H', 'HHI', 12
    (tags,) = struct.unpack_from(order + count_format, view, directory)
    if tags > TIFF_MAX_TAGS:
        raise ImageTooComplex(f'The TIFF has more than {TIFF_MAX_TAGS} tags in its first page.')
    first = directory + struct.calcsize(count_format)
    for entry in range(first, first + tags * entry_size, entry_size):
        tag, _type, count = struct.unpack_from(order + entry_format, view, entry)
        if tag in _STRIP_TAGS and count > TIFF_MAX_STRIPS:
            raise ImageTooComplex(
                f'The TIFF has more than {TIFF_MAX_STRIPS} strips or tiles in its first page.'
            )


# -- WebP ----------------------------------------------------------------------


def _check_webp(view: mmap.mmap, max_pixels: int) -> None:
    chunks = 0
    position = 12
    while position + 8 <= len(view):
        kind, length = struct.unpack_from('<4sI', view, position)
        chunks += 1
        if chunks > WEBP_MAX_CHUNKS:
            raise ImageTooComplex(f'The WebP has more than {WEBP_MAX_CHUNKS} chunks.')
        body = position + 8
        size = _webp_size(view, kind, body)
        if size is not None:
            # NOTE: before libwebp sees it: it maps two canvases at once.
            check_pixel_count(*size, max_pixels)
        position = body + length + (length & 1)


def _webp_size(view: mmap.mmap, kind: bytes, body: int) -> tuple[int, int] | None:
    """Return the canvas, frame or bitstream size a chunk declares, if it declares one."""
    if kind == b'VP8X':  # the canvas: 24 bits each, minus one
        return (
            1 + int.from_bytes(view[body + 4 : body + 7], 'little'),
            1 + int.from_bytes(view[body + 7 : body + 10], 'little'),
        )
    if kind == b'ANMF':  # a frame: x and y offsets, then the size
        return (
            1 + int.from_bytes(view[body + 6 : body + 9], 'little'),
            1 + int.from_bytes(view[body + 9 : body + 12], 'little'),
        )
    if kind == b'VP8L' and view[body] == 0x2F:  # lossless: 14 bits each, minus one
        (bits,) = struct.unpack_from('<I', view, body + 1)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b'VP8 ':  # lossy: after the frame tag and start code, 14 bits each
        width, height = struct.unpack_from('<HH', view, body + 6)
        return width & 0x3FFF, height & 0x3FFF
    return None


# -- HEIF, AVIF and JPEG XL -------------------------------------------------------

# NOTE: these decode whole images at once (libheif, libavif, libjxl), at a
#   cost that follows their pixels whatever their bytes: a blank 8000x8000
#   AVIF of 1 KB takes 0.47 s of CPU here, a 4000x3000 photo of 2.4 MB 0.21 s
#   (HEIC 0.45 and 0.42 s, JPEG XL 1.4 and 0.32 s). Real encoders write
#   58 000 pixels a byte of flat colour (AVIF), so no pixels-per-byte ceiling
#   tells a bomb from a flat image: the pixel limit, read from the container
#   below before a decoder sees it, is what bounds them. (pillow-jxl decodes
#   the whole image in Image.open, so this is the only check before it.)


def _modern_checker(head: bytes) -> Checker | None:
    """Return the check of a HEIF, AVIF or JPEG XL upload, by its signature."""
    if head[4:8] == b'ftyp':
        return _check_isobmff
    if head.startswith(_JXL_CODESTREAM):
        return _check_jxl_codestream
    if head.startswith(_JXL_CONTAINER):
        return _check_jxl_container
    return None


# Boxes a HEIF or AVIF file nests its image sizes in: meta > iprp > ipco > ispe.
_PROPERTY_PATH = (b'meta', b'iprp', b'ipco')
# Boxes read before giving up: real files have a dozen at each level.
ISOBMFF_MAX_BOXES = 4096


def _check_isobmff(view: mmap.mmap, max_pixels: int) -> None:
    """Refuse a HEIF or AVIF whose items declare (``ispe``) more pixels than the limit.

    Every item's size counts, the grid of a phone's photo and each of its
    tiles alike: no real file hides a larger image behind a smaller one.
    """
    start, end = 0, len(view)
    for container in _PROPERTY_PATH:
        found = _find_box(view, start, end, container)
        if found is None:
            return  # not a still image file: its decoder says so
        start, end = found
        if container == b'meta':
            start += 4  # a full box: version and flags
    for kind, body, _box_end in _boxes(view, start, end):
        if kind == b'ispe':
            width, height = struct.unpack_from('>II', view, body + 4)
            check_pixel_count(width, height, max_pixels)


def _boxes(view: mmap.mmap, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (type, body start, end) of each ISO BMFF box between ``start`` and ``end``."""
    position = start
    for _ in range(ISOBMFF_MAX_BOXES):
        if position + 8 > end:
            return
        size, kind = struct.unpack_from('>I4s', view, position)
        body = position + 8
        if size == 1:  # a 64-bit size follows the type
            (size,) = struct.unpack_from('>Q', view, body)
            body += 8
        elif size == 0:  # to the end of its container
            size = end - position
        if size < body - position:
            return
        yield kind, body, min(position + size, end)
        position += size
    raise ImageTooComplex(f'The image has more than {ISOBMFF_MAX_BOXES} boxes in one container.')


def _find_box(view: mmap.mmap, start: int, end: int, wanted: bytes) -> tuple[int, int] | None:
    """Return the body and end of the first box of type ``wanted`` in a container."""
    for kind, body, box_end in _boxes(view, start, end):
        if kind == wanted:
            return body, box_end
    return None


_JXL_CODESTREAM = b'\xff\x0a'
_JXL_CONTAINER = b'\x00\x00\x00\x0cJXL \r\n\x87\n'
# The aspect ratios a JPEG XL size header can name instead of a width.
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _check_jxl_container(view: mmap.mmap, max_pixels: int) -> None:
    """Check the size header of a JPEG XL in its ISO BMFF container (``jxlc`` or ``jxlp`` box)."""
    for kind, body, _box_end in _boxes(view, 0, len(view)):
        if kind == b'jxlc':
            return _check_jxl_size(view, body, max_pixels)
        if kind == b'jxlp':  # a part of the codestream, after its index
            return _check_jxl_size(view, body + 4, max_pixels)
    return None


def _check_jxl_codestream(view: mmap.mmap, max_pixels: int) -> None:
    _check_jxl_size(view, 0, max_pixels)


def _check_jxl_size(view: mmap.mmap, codestream: int, max_pixels: int) -> None:
    """Refuse a JPEG XL whose codestream's size header declares more pixels than the limit."""
    if view[codestream : codestream + 2] != _JXL_CODESTREAM:
        return
    check_pixel_count(*jxl_size(view[codestream + 2 : codestream + 14]), max_pixels)


def jxl_size(header: bytes) -> tuple[int, int]:
    """Return the width and height a JPEG XL SizeHeader (the bytes after the signature) names."""
    bits = int.from_bytes(header, 'little')
    position = 0

    def read(count: int) -> int:
        nonlocal position
        value = (bits >> position) & ((1 << count) - 1)
        position += count
        return value

    def side(small: bool) -> int:
        if small:
            return (read(5) + 1) * 8
        return read((9, 13, 18, 30)[read(2)]) + 1

    small = bool(read(1))
    height = side(small)
    ratio = read(3)
    if ratio:
        numerator, denominator = _JXL_RATIOS[ratio]
        return height * numerator // denominator, height
    return side(small), height


# -- animations ----------------------------------------------------------------

# NOTE: frames are counted from the container, before any is decoded: a GIF
#   of 20 000 one-pixel frames on a 2000x2000 screen is 460 KB, and each of
#   its frames is decoded onto the whole screen. The walk stops as soon as
#   the frames are over the budget, and a GIF's walk at a count of blocks
#   that grows with its frames and bytes: real encoders write image data in
#   sub-blocks of 255 bytes, and a few blocks a frame besides.
GIF_BLOCKS_PER_FRAME = 8
GIF_BYTES_PER_BLOCK = 64
# NOTE: 100 million pixels of frames: 100 frames of 1280x720 (a 10 s screen
#   recording at 10 frames a second), 770 of 480x270 (a long reaction GIF),
#   380 of a 512x512 sticker. Ordinary GIFs weigh 5-40 million. Converting
#   one into its animated WebP took 25 ns a pixel of frames here for a
#   screen recording and 95 for photographic noise at every pixel, so the
#   largest admitted takes 2.5-10 s of a pool process: half of
#   LOOK_RENDER_TIMEOUT at worst.
DEFAULT_MAX_ANIMATION_PIXELS = 100_000_000
# Frames, whatever their size: each costs Pillow tens of microseconds in
# Python. As many as WebP's chunks: nine minutes at 30 frames a second.
ANIMATION_MAX_FRAMES = WEBP_MAX_CHUNKS


def may_be_animated(head: bytes) -> bool:
    """Return whether an upload's first 64 bytes say it may be an animation.

    A GIF, a PNG whose acTL comes before its image data (encoders put it
    right after IHDR), a WebP whose header flags an animation.
    """
    if head.startswith((b'GIF87a', b'GIF89a')):
        return True
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return b'acTL' in head
    return head.startswith(b'RIFF') and head[8:16] == b'WEBPVP8X' and bool(head[20] & 0x02)


def check_animation(path: str, max_animation_pixels: int) -> int:
    """Return how many frames the image at ``path`` has, from its container alone.

    Refuse an animation whose frames hold more than ``max_animation_pixels``
    pixels in all, or has more than ANIMATION_MAX_FRAMES frames. A still
    image, or a format that does not animate, has one frame.
    """
    with open(path, 'rb') as file:
        if os.fstat(file.fileno()).st_size < 16:
            return 1
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            head = view[:16]
            if head.startswith((b'GIF87a', b'GIF89a')):
                counter = _gif_frames
            elif head.startswith(b'\x89PNG\r\n\x1a\n'):
                counter = _apng_frames
            elif head.startswith(b'RIFF') and head[8:12] == b'WEBP':
                counter = _webp_frames
            else:
                return 1
            try:
                frames, (width, height) = counter(view, max_animation_pixels)
            except (IndexError, struct.error):
                return 1  # cut off mid-structure: Pillow says how it is broken
    if frames > 1 and frames * width * height > max_animation_pixels:
        raise ImageTooLarge(
            f'The animation has {frames} or more frames of {width}x{height}: over '
            f'{max_animation_pixels} pixels of frames in all, the limit.'
        )
    if frames > ANIMATION_MAX_FRAMES:
        raise ImageTooLarge(
            f'The animation has more than {ANIMATION_MAX_FRAMES} frames (the limit).'
        )
    return frames


def _most_frames(budget: int, size: tuple[int, int]) -> int:
    """Return the frames past which a count can stop: over the budget, or too many."""
    return min(budget // max(size[0] * size[1], 1), ANIMATION_MAX_FRAMES)


def _gif_frames(view: mmap.mmap, budget: int) -> tuple[int, tuple[int, int]]:
    size = struct.unpack_from('<HH', view, 6)
    most = _most_frames(budget, size)
    flags = view[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the palette
    frames = blocks = 0
    while position < len(view) and frames <= most:
        introducer = view[position]
        if introducer == 0x3B:  # the trailer
            break
        if introducer == 0x2C:  # an image descriptor, its palette, the LZW code size
            frames += 1
            packed = view[position + 9]
            position += 11 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
        elif introducer == 0x21:  # an extension: introducer, label
            position += 2
        else:
            position += 1  # Pillow skips a stray byte too
            continue
        while True:
            blocks += 1
            if blocks > (
                GIF_MAX_BLOCKS + GIF_BLOCKS_PER_FRAME * frames + position // GIF_BYTES_PER_BLOCK
            ):
                raise ImageTooComplex(
                    'The GIF is cut into far more blocks than encoders write '
                    f'(a new one every {GIF_BYTES_PER_BLOCK} bytes or more).'
                )
            length = view[position]
            position += 1 + length
            if not length:
                break
    return frames, size


def _apng_frames(view: mmap.mmap, budget: int) -> tuple[int, tuple[int, int]]:
    size = struct.unpack_from('>II', view, 16)
    position = 8
    # Only the chunks before the image data, which _check_png has bounded.
    while position + 8 <= len(view):
        length, kind = struct.unpack_from('>I4s', view, position)
        if kind == b'acTL':
            (frames,) = struct.unpack_from('>I', view, position + 8)
            return frames, size
        if kind in (b'IDAT', b'IEND'):
            break
        position += 12 + length
    return 1, size


def _webp_frames(view: mmap.mmap, budget: int) -> tuple[int, tuple[int, int]]:
    frames = 0
    size = (0, 0)
    most = ANIMATION_MAX_FRAMES
    position = 12
    # Top-level chunks, which _check_webp has bounded; the canvas comes first.
    while position + 8 <= len(view) and frames <= most:
        kind, length = struct.unpack_from('<4sI', view, position)
        if kind == b'VP8X':
            size = _webp_size(view, kind, position + 8) or size
            most = _most_frames(budget, size)
        elif kind == b'ANMF':
            frames += 1
        position += 8 + length + (length & 1)
    return max(frames, 1), size
