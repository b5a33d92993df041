"""The checks before decoding: what real encoders write passes, what none writes is refused."""

from __future__ import annotations

import contextlib
import io
import pathlib
import struct
import time
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image

from look.errors import ImageTooComplex, ImageTooLarge, LookError
from look.imaging import preflight
from look.imaging.convert import convert_upload

from support import imagegen
from support.imagegen import encode, image_bytes, picture, solid

MAX_PIXELS = 8192 * 8192
QUALITY = 85


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_upload sets Image.MAX_IMAGE_PIXELS, meant for a pool process; undo it here."""
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)


Check = Callable[[bytes], None]
Convert = Callable[[bytes], tuple[int, int]]


@pytest.fixture
def check(tmp_path: pathlib.Path) -> Check:
    """Return a function that runs the container check on upload bytes."""

    def run(data: bytes) -> None:
        path = tmp_path / 'upload'
        path.write_bytes(data)
        preflight.check_container(str(path), MAX_PIXELS)

    return run


@pytest.fixture
def convert(tmp_path: pathlib.Path) -> Convert:
    """Return a function that converts upload bytes as a pool process does; it returns the size."""

    def run(data: bytes) -> tuple[int, int]:
        path = tmp_path / 'upload'
        path.write_bytes(data)
        return convert_upload(str(path), MAX_PIXELS, QUALITY).size

    return run


# -- what real encoders write passes ---------------------------------------------------

REAL_FILES: dict[str, Callable[[], bytes]] = {
    'jpeg': lambda: image_bytes('JPEG'),
    'jpeg-optimized': lambda: image_bytes('JPEG', optimize=True),
    'jpeg-progressive': lambda: image_bytes('JPEG', progressive=True),  # 10 scans
    'jpeg-progressive-grey': lambda: image_bytes('JPEG', mode='L', progressive=True),  # 6
    # libjpeg's script for four components: 18 scans, the most of any encoder we know.
    'jpeg-progressive-cmyk': lambda: image_bytes('JPEG', mode='CMYK', progressive=True),
    'jpeg-exif-gps-comment': lambda: imagegen.exif_jpeg(orientation=1),
    'jpeg-icc-profile': lambda: image_bytes('JPEG', icc_profile=imagegen.swapped_primaries_icc()),
    'mpo': lambda: encode(picture(seed=1), 'MPO', save_all=True, append_images=[picture(seed=2)]),
    'png': lambda: image_bytes('PNG'),
    'png-16-bit-grey': lambda: imagegen.grey16_png(),
    'png-palette': lambda: imagegen.palette_png(),
    'png-rgba': lambda: imagegen.rgba_png(),
    'apng': lambda: imagegen.animated_png(frames=12),
    'gif': lambda: image_bytes('GIF'),
    'gif-animated': lambda: imagegen.animated_gif(frames=12),
    'gif-long-comment': lambda: image_bytes('GIF', comment=b'look ' * 20_000),  # 393 blocks
    'bmp': lambda: image_bytes('BMP'),
    'bmp-1-bit': lambda: image_bytes('BMP', mode='1'),
    'tiff': lambda: image_bytes('TIFF'),
    'tiff-lzw': lambda: image_bytes('TIFF', compression='tiff_lzw'),
    'tiff-group4': lambda: image_bytes('TIFF', mode='1', compression='group4'),
    'tiff-a-strip-a-row': lambda: image_bytes(
        'TIFF', compression='tiff_deflate', tiffinfo={278: 1}
    ),
    'tiff-two-pages': lambda: encode(picture(), 'TIFF', save_all=True, append_images=[picture()]),
    'bigtiff': lambda: image_bytes('TIFF', big_tiff=True),
    'webp': lambda: image_bytes('WEBP'),
    'webp-lossless': lambda: image_bytes('WEBP', lossless=True),
    'webp-alpha': lambda: image_bytes('WEBP', mode='RGBA'),
    'webp-animated': lambda: encode(
        picture(seed=1), 'WEBP', save_all=True, append_images=[picture(seed=2)] * 3
    ),
    'heic': lambda: imagegen.modern('HEIF'),
    'heic-rotated': lambda: imagegen.rotated_heic(6),
    'avif': lambda: imagegen.modern('AVIF'),
    'jxl': lambda: imagegen.modern('JXL'),
    'jxl-container': lambda: imagegen.modern('JXL', use_container=True),
    'jxl-odd-size': lambda: imagegen.modern('JXL', size=(1001, 7)),
}


@pytest.mark.parametrize('make', REAL_FILES.values(), ids=REAL_FILES.keys())
def test_what_real_encoders_write_passes_and_converts(
    convert: Convert, make: Callable[[], bytes]
) -> None:
    data = make()
    with Image.open(io.BytesIO(data)) as image:
        size = image.size

    assert convert(data) == size


# Blank pictures are the most pixels a byte each encoder writes. Just over the
# floor, so that the pixels-per-byte rule applies to them.
OVER_THE_FLOOR = (2400, 1800)
FLATTEST: dict[str, Callable[[], bytes]] = {
    'jpeg': lambda: encode(solid((255, 255, 255), OVER_THE_FLOOR), 'JPEG'),
    'jpeg-progressive-grey': lambda: encode(
        solid((255,), OVER_THE_FLOOR, 'L'), 'JPEG', progressive=True, optimize=True
    ),
    'png-1-bit': lambda: encode(solid((1,), OVER_THE_FLOOR, '1'), 'PNG', optimize=True),
    'png-rgb': lambda: encode(solid((255, 255, 255), OVER_THE_FLOOR), 'PNG'),
    'gif': lambda: encode(solid((1,), OVER_THE_FLOOR, 'P'), 'GIF'),
    'bmp-1-bit': lambda: encode(solid((1,), OVER_THE_FLOOR, '1'), 'BMP'),
    'tiff-deflate-1-bit': lambda: encode(
        solid((1,), OVER_THE_FLOOR, '1'), 'TIFF', compression='tiff_deflate'
    ),
    'webp-lossy': lambda: encode(solid((255, 255, 255), OVER_THE_FLOOR), 'WEBP'),
    # No lossless WebP of one colour passes (any size is ~40 bytes); flat bars do.
    'webp-lossless-bars': lambda: encode(
        imagegen.bar_chart(OVER_THE_FLOOR), 'WEBP', lossless=True
    ),
}


@pytest.mark.parametrize('make', FLATTEST.values(), ids=FLATTEST.keys())
def test_the_flattest_real_files_have_few_enough_pixels_per_byte(
    make: Callable[[], bytes],
) -> None:
    data = make()

    with Image.open(io.BytesIO(data)) as image:
        assert image.size == OVER_THE_FLOOR
        preflight.check_pixels_per_byte(image.format, image.size, len(data))


# -- JPEG --------------------------------------------------------------------------------


def test_progressive_scans_up_to_the_limit_pass_and_one_more_is_refused(
    check: Check, convert: Convert
) -> None:
    most = preflight.JPEG_MAX_SCANS
    assert convert(imagegen.progressive_scan_bomb((64, 48), most, refinements=1)) == (64, 48)

    with pytest.raises(ImageTooComplex, match='scans'):
        check(imagegen.progressive_scan_bomb((64, 48), most + 1, refinements=1))


# The most pixels look takes, as a JPEG's sides in 8x8 blocks write them.
LARGEST = (8190, 8190)


def test_refinement_passes_up_to_the_budget_pass_and_one_more_is_refused(
    check: Check, convert: Convert
) -> None:
    """At the largest size, where each pass over a million blocks is 40 ms of CPU."""
    budget = preflight.JPEG_MAX_REFINEMENT_PASSES
    at_the_edge = imagegen.progressive_scan_bomb(LARGEST, budget + 2)
    assert convert(at_the_edge) == LARGEST

    with pytest.raises(ImageTooComplex, match=f'over {budget + 1}.0 passes'):
        check(imagegen.progressive_scan_bomb(LARGEST, budget + 3))
    # The count of scans is its own limit: cheap scans up to it, beside the budget.
    check(imagegen.progressive_scan_bomb(LARGEST, preflight.JPEG_MAX_SCANS, refinements=budget))


def cpu_seconds(work: Callable[[], object]) -> float:
    """Return the CPU time of this process (not the machine's other work) that ``work`` took."""
    started = time.process_time()
    work()
    return time.process_time() - started


def test_a_progressive_jpeg_at_the_budget_costs_about_what_a_real_photo_of_its_size_does(
    convert: Convert,
) -> None:
    """A few hundred KB of empty scans must not cost far more than 30 MB of photo.

    Before the budget, 32 refinement scans of 8190x8190 (135 KB) took 1.6 s
    of CPU here, a baseline photo of that size 0.6 s. A baseline photo is
    now kept as made (0.34 s: its scans are decoded at an 8th of the size,
    and nothing encoded); the photo here is progressive, as libjpeg writes
    it (1.16 s kept; the grey bomb is converted, 0.79 s).
    """
    photo = encode(imagegen.grainy_photo(LARGEST, seed=4), 'JPEG', quality=90, progressive=True)
    bomb = imagegen.progressive_scan_bomb(
        LARGEST, preflight.JPEG_MAX_SCANS, refinements=preflight.JPEG_MAX_REFINEMENT_PASSES
    )

    photo_cost = min(cpu_seconds(lambda: convert(photo)) for _ in range(2))
    bomb_cost = min(cpu_seconds(lambda: convert(bomb)) for _ in range(2))

    assert len(bomb) < len(photo) // 50
    assert bomb_cost < 1.5 * photo_cost, (bomb_cost, photo_cost)


PROGRESSIVE: dict[str, dict[str, object]] = {
    'colour 4:2:0': {'mode': 'RGB'},
    'colour 4:2:2': {'mode': 'RGB', 'subsampling': 1},
    'colour 4:4:4': {'mode': 'RGB', 'subsampling': 0},
    'colour, optimized': {'mode': 'RGB', 'optimize': True},
    'grey': {'mode': 'L'},
    'cmyk': {'mode': 'CMYK'},
}


@pytest.mark.parametrize('size', [(640, 360), (4001, 2999), LARGEST], ids=str)
@pytest.mark.parametrize('options', PROGRESSIVE.values(), ids=PROGRESSIVE.keys())
def test_progressive_jpegs_of_libjpeg_turbo_pass_at_every_size(
    check: Check, size: tuple[int, int], options: dict[str, object]
) -> None:
    """libjpeg-turbo's scripts (Pillow's progressive=True) refine over 1.33 to 2 passes."""
    mode = str(options['mode'])
    saved = {name: value for name, value in options.items() if name != 'mode'}
    check(encode(solid((90,) * len(mode), size, mode), 'JPEG', progressive=True, **saved))


def test_a_progressive_jpeg_of_600_empty_scans_is_refused_before_decoding(
    convert: Convert,
) -> None:
    """10000x10000 in 300 KB: libjpeg would pass over all 1.5 million blocks 600 times (~40 s)."""
    bomb = imagegen.progressive_scan_bomb((10_000, 10_000), 600)
    started = time.monotonic()

    with pytest.raises(ImageTooComplex):
        convert(bomb)

    assert time.monotonic() - started < 1


def with_comments(jpeg: bytes, count: int) -> bytes:
    """Return ``jpeg`` with ``count`` one-byte comment segments after its start marker."""
    return jpeg[:2] + b'\xff\xfe\x00\x03x' * count + jpeg[2:]


def test_jpeg_marker_segments_beyond_the_limit_are_refused(check: Check, convert: Convert) -> None:
    """Pillow parses the segments before the first scan in Python, one by one."""
    assert convert(with_comments(image_bytes('JPEG'), 500)) == (640, 360)

    with pytest.raises(ImageTooComplex, match='segments'):
        check(with_comments(image_bytes('JPEG'), preflight.JPEG_MAX_SEGMENTS))


# -- PNG ---------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def with_text_chunks(png: bytes, count: int, at: int = 33) -> bytes:
    """Return ``png`` with ``count`` tEXt chunks at ``at`` (by default, right after IHDR)."""
    return png[:at] + png_chunk(b'tEXt', b'k\0v') * count + png[at:]


def test_png_chunks_beyond_the_limit_are_refused(check: Check, convert: Convert) -> None:
    assert convert(with_text_chunks(image_bytes('PNG'), 1000)) == (640, 360)

    with pytest.raises(ImageTooComplex, match='chunks'):
        check(with_text_chunks(image_bytes('PNG'), preflight.PNG_MAX_CHUNKS))


def test_chunks_of_later_apng_frames_do_not_count(convert: Convert) -> None:
    """Only the first frame is decoded, and Pillow stops reading where the second begins."""
    apng = imagegen.animated_png((128, 96), frames=3)
    end = apng.rindex(b'IEND') - 4

    assert convert(with_text_chunks(apng, preflight.PNG_MAX_CHUNKS, at=end)) == (128, 96)


# -- GIF ---------------------------------------------------------------------------------


def with_comment_blocks(count: int) -> bytes:
    """Return a GIF with a comment of ``count`` one-byte sub-blocks before its image."""
    gif = image_bytes('GIF', (64, 48))
    flags = gif[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return gif[:at] + b'\x21\xfe' + b'\x01x' * count + b'\x00' + gif[at:]


def test_gif_blocks_before_the_first_image_beyond_the_limit_are_refused(
    check: Check, convert: Convert
) -> None:
    assert convert(with_comment_blocks(1000)) == (64, 48)

    with pytest.raises(ImageTooComplex, match='blocks'):
        check(with_comment_blocks(preflight.GIF_MAX_BLOCKS))


# -- TIFF --------------------------------------------------------------------------------


def tiff_with(count_of: int | None = None, tags: int | None = None) -> bytes:
    """Return a TIFF whose tag ``count_of`` claims one value too many, or with ``tags`` tags."""
    data = bytearray(image_bytes('TIFF', (64, 48)))
    assert data[:4] == b'II*\0'
    (directory,) = struct.unpack_from('<I', data, 4)
    (entries,) = struct.unpack_from('<H', data, directory)
    for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
        if struct.unpack_from('<H', data, entry)[0] == count_of:
            struct.pack_into('<I', data, entry + 4, preflight.TIFF_MAX_STRIPS + 1)
    if tags is not None:
        struct.pack_into('<H', data, directory, tags)
    return bytes(data)


@pytest.mark.parametrize(
    ('data', 'match'),
    [
        pytest.param(tiff_with(tags=preflight.TIFF_MAX_TAGS + 1), 'tags', id='tags'),
        pytest.param(tiff_with(count_of=273), 'strips', id='strip-offsets'),
        pytest.param(tiff_with(count_of=279), 'strips', id='strip-byte-counts'),
    ],
)
def test_tiff_tags_and_strips_beyond_the_limits_are_refused(
    check: Check, data: bytes, match: str
) -> None:
    with pytest.raises(ImageTooComplex, match=match):
        check(data)


# -- WebP --------------------------------------------------------------------------------


def test_webp_chunks_beyond_the_limit_are_refused(check: Check, convert: Convert) -> None:
    frames = [solid((n, 0, 0), (32, 24)) for n in range(300)]
    animation = encode(frames[0], 'WEBP', save_all=True, append_images=frames[1:], lossless=True)
    assert convert(animation) == (32, 24)

    junk = b'JUNK' + bytes(4)  # an empty chunk of a kind libwebp does not know
    with pytest.raises(ImageTooComplex, match='chunks'):
        check(image_bytes('WEBP') + junk * preflight.WEBP_MAX_CHUNKS)


@pytest.mark.parametrize('size', [(8193, 8192), (16_384, 16_384)])
def test_a_webp_over_the_pixel_limit_is_refused_before_libwebp_reads_it(
    check: Check, size: tuple[int, int]
) -> None:
    with pytest.raises(ImageTooLarge, match='limit'):
        check(imagegen.blank_lossless_webp(size))


# -- BMP ---------------------------------------------------------------------------------


def test_rle_bmp_is_refused_over_the_floor(check: Check) -> None:
    """Pillow decodes RLE in Python: 140 ns a pixel where it pads a row a byte at a time."""
    check(imagegen.rle_bmp((2048, 2048)))

    with pytest.raises(ImageTooLarge, match='RLE'):
        check(imagegen.rle_bmp((2049, 2048)))


# -- pixels per byte ---------------------------------------------------------------------


def test_a_blank_lossless_webp_passes_up_to_the_floor_and_no_further(convert: Convert) -> None:
    """38 bytes for any size: 2048x2048 costs ~65 ms to convert, 10000x10000 2-5 s."""
    assert convert(imagegen.blank_lossless_webp((2048, 2048))) == (2048, 2048)

    with pytest.raises(ImageTooLarge, match='pixels per byte'):
        convert(imagegen.blank_lossless_webp((2049, 2048)))


def test_a_truncated_png_within_the_pixel_limit_is_refused_before_decoding(
    convert: Convert,
) -> None:
    """64 megapixels claimed in 100 bytes: deflate cannot hold more than 8256 a byte."""
    started = time.monotonic()

    with pytest.raises(ImageTooLarge, match='8256 pixels per byte'):
        convert(imagegen.png_bomb(8000, 8000))

    assert time.monotonic() - started < 1


# -- HEIF, AVIF and JPEG XL: sizes read from the container ---------------------------------

MODERN_BOMBS: dict[str, Callable[[int, int], bytes]] = {
    'heic': lambda width, height: imagegen.isobmff_bomb('HEIF', width, height),
    'avif': lambda width, height: imagegen.isobmff_bomb('AVIF', width, height),
    'jxl': imagegen.jxl_bomb,
}


@pytest.mark.parametrize('bomb', MODERN_BOMBS.values(), ids=MODERN_BOMBS.keys())
def test_a_modern_format_claiming_too_many_pixels_is_refused_by_its_container(
    check: Check, bomb: Callable[[int, int], bytes]
) -> None:
    """libheif, libavif and libjxl decode whole images: their size is read first."""
    with pytest.raises(
        ImageTooLarge, match=f'the limit is {preflight.megapixels(MAX_PIXELS)} megapixels'
    ):
        check(bomb(60_000, 60_000))
    with pytest.raises(ImageTooLarge, match='8193x8192'):
        check(bomb(8193, 8192))
    check(bomb(8192, 8192))  # at the limit: left to the decoder


@pytest.mark.parametrize('bomb', MODERN_BOMBS.values(), ids=MODERN_BOMBS.keys())
def test_a_modern_format_bomb_is_refused_by_convert_and_left_as_it_was(
    tmp_path: pathlib.Path, bomb: Callable[[int, int], bytes]
) -> None:
    data = bomb(60_000, 60_000)
    path = tmp_path / 'upload'
    path.write_bytes(data)

    with pytest.raises(ImageTooLarge):
        convert_upload(str(path), MAX_PIXELS, QUALITY)

    assert path.read_bytes() == data


def isobmff(boxes_before_meta: int, size: tuple[int, int]) -> bytes:
    """Return a HEIF's boxes, its meta after ``boxes_before_meta`` free boxes: no pixels."""

    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', 8 + len(body)) + kind + body

    ispe = box(b'ispe', bytes(4) + struct.pack('>II', *size))
    meta = box(b'meta', bytes(4) + box(b'iprp', box(b'ipco', ispe)))
    return (
        box(b'ftyp', b'heic' + bytes(4) + b'mif1heic')
        + box(b'free', b'') * boxes_before_meta
        + meta
    )


def test_boxes_a_heif_container_may_have_before_its_sizes(check: Check) -> None:
    """Each box is a step of a Python loop: a few dozen are real, 4096 is the bound."""
    last = preflight.ISOBMFF_MAX_BOXES - 2  # ftyp and meta are boxes too

    with pytest.raises(ImageTooLarge):
        check(isobmff(last, (8193, 8192)))  # the sizes are still reached
    with pytest.raises(ImageTooComplex, match='4096 boxes'):
        check(isobmff(last + 1, (64, 64)))


@pytest.mark.parametrize(
    'size', [(1, 1), (8, 8), (256, 256), (257, 3), (640, 360), (1200, 1000), (123, 4567)]
)
def test_jpeg_xl_size_header_is_read_as_libjxl_writes_it(size: tuple[int, int]) -> None:
    """Small sides in eighths, ratios (16:9, 12:10) or 9 to 30 bits each."""
    data = imagegen.modern('JXL', size=size, effort=1)

    assert preflight.jxl_size(data[2:14]) == size


def test_pixels_per_byte_are_counted_on_the_whole_upload() -> None:
    ceiling = preflight.MAX_PIXELS_PER_BYTE['JPEG']
    size = (4000, 3000)
    smallest = -(-4000 * 3000 // ceiling)

    preflight.check_pixels_per_byte('JPEG', size, smallest)
    with pytest.raises(ImageTooLarge, match=f'4000x3000 .* in only {smallest - 1} bytes'):
        preflight.check_pixels_per_byte('JPEG', size, smallest - 1)
    preflight.check_pixels_per_byte('MPO', size, smallest)


# -- fuzzing -----------------------------------------------------------------------------

FUZZ_SEEDS = [
    image_bytes('JPEG', (48, 32)),
    image_bytes('JPEG', (48, 32), progressive=True),
    imagegen.progressive_scan_bomb((48, 32), 12),
    image_bytes('PNG', (48, 32)),
    imagegen.animated_png((48, 32)),
    imagegen.animated_gif((48, 32)),
    image_bytes('BMP', (48, 32)),
    imagegen.rle_bmp((48, 32)),
    image_bytes('TIFF', (48, 32), compression='tiff_lzw'),
    image_bytes('TIFF', (48, 32), big_tiff=True),
    image_bytes('WEBP', (48, 32)),
    image_bytes('WEBP', (48, 32), lossless=True),
]


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=imagegen.mutations(FUZZ_SEEDS))
def test_broken_containers_pass_or_are_refused_never_crash(check: Check, data: bytes) -> None:
    """Whatever the check cannot parse it leaves to Pillow; it raises only look's errors."""
    with contextlib.suppress(LookError):
        check(data)


@pytest.mark.parametrize(
    ('size', 'limit', 'message'),
    [
        (
            (9000, 9000),
            67_108_864,
            'The image is 9000x9000, 81 megapixels; the limit is 67 megapixels.',
        ),
        (
            (2000, 1000),
            1_500_000,
            'The image is 2000x1000, 2 megapixels; the limit is 1.5 megapixels.',
        ),
    ],
)
def test_the_pixel_limit_is_stated_in_megapixels(
    size: tuple[int, int], limit: int, message: str
) -> None:
    with pytest.raises(ImageTooLarge) as refused:
        preflight.check_pixel_count(*size, limit)
    assert str(refused.value) == message
    preflight.check_pixel_count(*size, size[0] * size[1])  # at the limit: taken
