"""The Pillow work (plain functions, called directly) and the pool that runs it."""

from __future__ import annotations

import concurrent.futures
import gc
import io
import multiprocessing
import os
import pathlib
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat
from PIL.PngImagePlugin import PngInfo

from look import errors
from look.errors import CorruptImage, ImageTooLarge, ThumbnailerUnavailable, UnsupportedImage
from look.imaging import jpeg
from look.imaging import pool as thumbnailer
from look.imaging.convert import convert_upload
from look.imaging.formats import ENCODINGS, THUMBNAIL_FORMATS, encoding_tag
from look.imaging.pool import Thumbnailer
from look.imaging.render import render_thumbnail
from look.imaging.renditions import thumbnail_sizes

from support import imagegen
from support.imagegen import encode, image_bytes, picture, solid
from support.processes import wait_until

MAX_PIXELS = 100_000_000
QUALITY = 85


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_upload sets Image.MAX_IMAGE_PIXELS, meant for a pool process; undo it here."""
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)


Convert = Callable[..., tuple[tuple[int, int], Image.Image]]


@pytest.fixture
def convert(tmp_path: pathlib.Path) -> Convert:
    """Return a function: upload bytes in, (returned size, stored image loaded) out."""

    def run(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[tuple[int, int], Image.Image]:
        path = tmp_path / 'upload'
        path.write_bytes(data)
        try:
            size = convert_upload(str(path), max_pixels, QUALITY).size
        except errors.LookError:
            assert path.read_bytes() == data, 'a refused upload was changed'
            raise
        with Image.open(path) as stored:
            assert stored.format == 'JPEG'
            stored.load()
        assert stored.mode == 'RGB'
        assert stored.size == size
        return size, stored

    return run


def difference(first: Image.Image, second: Image.Image) -> float:
    """Return the mean absolute difference per channel, 0 (same) to 255."""
    diff = ImageChops.difference(first.convert('RGB'), second.convert('RGB'))
    return sum(ImageStat.Stat(diff).mean) / 3


def is_colour(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


RED, GREEN, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (255, 255, 255), (0, 0, 0)


# -- thumbnail_sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ('size', 'min_size', 'expected'),
    [
        ((640, 360), 64, [(320, 180), (160, 90)]),
        ((641, 361), 64, [(320, 180), (160, 90)]),
        ((1001, 999), 100, [(500, 499), (250, 249), (125, 124)]),
        ((128, 128), 64, [(64, 64)]),
        ((127, 128), 64, []),
        ((100, 100), 64, []),
        ((10_000, 100), 64, []),
        ((5, 3), 1, [(2, 1)]),
        ((1, 1), 1, []),
    ],
)
def test_thumbnail_sizes(
    size: tuple[int, int], min_size: int, expected: list[tuple[int, int]]
) -> None:
    assert thumbnail_sizes(size, min_size) == expected


# -- convert_upload: formats ---------------------------------------------------------

FORMATS = [
    pytest.param('JPEG', 'RGB', {'quality': 95}, 4, id='jpeg'),
    pytest.param('JPEG', 'L', {'quality': 95}, 4, id='jpeg-grey'),
    pytest.param('PNG', 'RGB', {}, 3, id='png'),
    pytest.param('PNG', 'L', {}, 3, id='png-grey'),
    pytest.param('PNG', 'P', {}, 20, id='png-palette'),  # dithered
    pytest.param('GIF', 'RGB', {}, 8, id='gif'),
    pytest.param('BMP', 'RGB', {}, 3, id='bmp'),
    pytest.param('TIFF', 'RGB', {}, 3, id='tiff'),
    pytest.param('TIFF', 'RGB', {'compression': 'tiff_lzw'}, 3, id='tiff-lzw'),
    pytest.param('WEBP', 'RGB', {'quality': 95}, 4, id='webp'),
    pytest.param('WEBP', 'RGB', {'lossless': True}, 3, id='webp-lossless'),
]


@pytest.mark.parametrize(('fmt', 'mode', 'params', 'tolerance'), FORMATS)
def test_format_is_stored_as_rgb_jpeg_of_the_same_picture(
    convert: Convert, fmt: str, mode: str, params: dict[str, object], tolerance: float
) -> None:
    original = picture((320, 200), mode, seed=3)

    size, stored = convert(encode(original, fmt, **params))

    assert size == (320, 200)
    assert difference(stored, original) < tolerance


@pytest.mark.parametrize(
    'make',
    [
        pytest.param(lambda: imagegen.grainy_photo((320, 200)), id='upload-larger-than-its-jpeg'),
        pytest.param(lambda: solid(RED, (320, 200)), id='upload-smaller-than-its-jpeg'),
    ],
)
def test_the_stored_file_is_the_jpeg_alone(
    tmp_path: pathlib.Path, make: Callable[[], Image.Image]
) -> None:
    """The JPEG is written over the upload's own file: none of the upload is left after it."""
    original = make()
    path = tmp_path / 'upload'
    path.write_bytes(encode(original, 'PNG'))

    convert_upload(str(path), MAX_PIXELS, QUALITY)

    assert path.read_bytes() == encode(original, 'JPEG', quality=QUALITY)


@pytest.mark.parametrize('write_back', [True, False])
def test_the_jpeg_is_written_out_at_once_only_where_it_is_made_durable_in_place(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, write_back: bool
) -> None:
    """A local store fsyncs the file; an object store's spool file is removed unwritten."""
    advised: list[int] = []
    monkeypatch.setattr(
        os, 'posix_fadvise', lambda fd, offset, length, advice: advised.append(advice)
    )
    uploads = [image_bytes('PNG'), imagegen.metadata_jpeg()]  # converted, and kept as made
    for number, data in enumerate(uploads):
        path = tmp_path / f'upload-{number}'
        path.write_bytes(data)
        convert_upload(str(path), MAX_PIXELS, QUALITY, write_back=write_back)

    assert advised == ([os.POSIX_FADV_DONTNEED] * 2 if write_back else [])


def test_camera_multi_picture_jpeg_keeps_the_first_picture(convert: Convert) -> None:
    """Phones write MPO (JPEG with extra pictures); Pillow reports it as its own format."""
    first, second = picture((320, 200), seed=1), picture((320, 200), seed=2)
    data = encode(first, 'MPO', save_all=True, append_images=[second], quality=95)

    _, stored = convert(data)

    assert difference(stored, first) < 4


def test_multi_page_tiff_keeps_the_first_page(convert: Convert) -> None:
    """The JPEG replaces the upload in its own file: later pages must not be read from it."""
    first, second = picture((320, 200), seed=1), picture((160, 100), seed=2)
    data = encode(first, 'TIFF', save_all=True, append_images=[second])

    size, stored = convert(data)

    assert size == (320, 200)
    assert difference(stored, first) < 3


def test_animated_gif_keeps_the_first_frame(convert: Convert) -> None:
    size, stored = convert(imagegen.animated_gif((128, 96)))

    assert size == (128, 96)
    assert is_colour(stored.getpixel((64, 48)), RED)


def test_rgba_transparency_becomes_white(convert: Convert) -> None:
    _, stored = convert(imagegen.rgba_png((256, 128)))

    assert is_colour(stored.getpixel((32, 64)), WHITE)  # transparent black
    assert is_colour(stored.getpixel((224, 64)), RED)


def test_grey_with_alpha_transparency_becomes_white(convert: Convert) -> None:
    image = Image.new('LA', (128, 64), (0, 0))
    image.paste((0, 255), (64, 0, 128, 64))

    _, stored = convert(encode(image, 'PNG'))

    assert is_colour(stored.getpixel((16, 32)), WHITE)
    assert is_colour(stored.getpixel((112, 32)), BLACK)


def test_palette_transparent_index_becomes_white(convert: Convert) -> None:
    _, stored = convert(imagegen.palette_png((256, 128)))

    assert is_colour(stored.getpixel((32, 64)), WHITE)  # transparent blue
    assert is_colour(stored.getpixel((224, 64)), RED)


@pytest.mark.parametrize(
    ('mode', 'transparent', 'opaque', 'opaque_rgb'),
    [
        pytest.param('RGB', (0, 0, 0), (255, 0, 0), RED, id='rgb'),
        pytest.param('L', 0, 200, (200, 200, 200), id='grey'),
        pytest.param('1', 0, 1, WHITE, id='bilevel'),
        pytest.param('I;16', 1000, 65535, WHITE, id='grey16'),
    ],
)
def test_a_colour_named_transparent_by_trns_becomes_white(
    convert: Convert,
    mode: str,
    transparent: int | tuple[int, ...],
    opaque: int | tuple[int, ...],
    opaque_rgb: tuple[int, int, int],
) -> None:
    """PNGs without alpha can still name one colour transparent: oxipng and pngcrush write them."""
    image = Image.new(mode, (128, 64), transparent)
    image.paste(opaque, (64, 0, 128, 64))

    _, stored = convert(encode(image, 'PNG', transparency=transparent))

    assert is_colour(stored.getpixel((16, 32)), WHITE)
    assert is_colour(stored.getpixel((112, 32)), opaque_rgb)


@pytest.mark.parametrize(
    ('depth', 'colour_type', 'transparent', 'opaque', 'trns'),
    [
        # Each row: 8 pixels of the colour named transparent, then 8 black ones.
        pytest.param(2, 0, b'\x55' * 2, b'\x00' * 2, struct.pack('>H', 1), id='grey-2-bit'),
        pytest.param(4, 0, b'\x55' * 4, b'\x00' * 4, struct.pack('>H', 5), id='grey-4-bit'),
        pytest.param(
            16,
            2,
            struct.pack('>HHH', 0x1234, 0x5678, 0x9ABC) * 8,
            struct.pack('>HHH', 0, 0, 0) * 8,
            struct.pack('>HHH', 0x1234, 0x5678, 0x9ABC),
            id='rgb-16-bit',
        ),
    ],
)
def test_trns_of_a_depth_pillow_rescales_is_matched_at_that_depth(
    convert: Convert, depth: int, colour_type: int, transparent: bytes, opaque: bytes, trns: bytes
) -> None:
    """Pillow decodes 1, 2 and 4-bit grey and 16-bit RGB into 8 bits, but not tRNS with them."""
    rows = [transparent + opaque] * 16
    _, stored = convert(imagegen.trns_png(depth, colour_type, rows, 16, trns))

    assert is_colour(stored.getpixel((2, 8)), WHITE)
    assert is_colour(stored.getpixel((13, 8)), BLACK)


@pytest.mark.parametrize(('value', 'grey'), [(32768, 128), (65535, 255), (256 * 40, 40)])
def test_sixteen_bit_grey_is_scaled_not_clipped(convert: Convert, value: int, grey: int) -> None:
    """A mid-grey 16-bit pixel becomes mid-grey, not white."""
    _, stored = convert(imagegen.grey16_png(value, (256, 128)))

    assert is_colour(stored.getpixel((32, 64)), (grey, grey, grey), tolerance=2)
    assert is_colour(stored.getpixel((224, 64)), BLACK, tolerance=2)


def test_bilevel_image(convert: Convert) -> None:
    image = Image.new('1', (128, 64), 0)
    image.paste(1, (64, 0, 128, 64))

    _, stored = convert(encode(image, 'PNG'))

    assert is_colour(stored.getpixel((16, 32)), BLACK)
    assert is_colour(stored.getpixel((112, 32)), WHITE)


def test_cmyk_jpeg_colours_survive(convert: Convert) -> None:
    _, stored = convert(imagegen.cmyk_jpeg((256, 128)))

    assert is_colour(stored.getpixel((32, 64)), GREEN, tolerance=40)
    assert is_colour(stored.getpixel((224, 64)), RED, tolerance=40)


# -- convert_upload: orientation, colour, metadata ---------------------------------------


@pytest.mark.parametrize(
    ('orientation', 'size', 'red_corner'),
    [
        (1, (640, 360), (32, 32)),  # as stored
        (3, (640, 360), (640 - 32, 360 - 32)),  # rotated 180
        (6, (360, 640), (360 - 32, 32)),  # rotated 90 clockwise: top-left goes top-right
        (8, (360, 640), (32, 640 - 32)),  # rotated 90 anticlockwise: top-left goes bottom-left
    ],
)
def test_exif_orientation_is_applied(
    convert: Convert, orientation: int, size: tuple[int, int], red_corner: tuple[int, int]
) -> None:
    stored_size, stored = convert(imagegen.exif_jpeg((640, 360), orientation))

    assert stored_size == size
    assert is_colour(stored.getpixel(red_corner), RED)
    corners = [(32, 32), (size[0] - 32, 32), (32, size[1] - 32), (size[0] - 32, size[1] - 32)]
    assert [is_colour(stored.getpixel(corner), RED) for corner in corners].count(True) == 1


def test_exif_and_gps_are_not_kept(tmp_path: pathlib.Path, convert: Convert) -> None:
    _, stored = convert(imagegen.exif_jpeg())
    data = (tmp_path / 'upload').read_bytes()

    assert not stored.getexif()
    assert 'exif' not in stored.info
    assert b'Exif\0\0' not in data
    assert imagegen.SECRET_CAMERA.encode() not in data


@pytest.mark.parametrize(
    'upload',
    [
        pytest.param(lambda: imagegen.exif_jpeg(), id='jpeg-com'),
        pytest.param(
            lambda: encode(picture((64, 64)), 'PNG', pnginfo=_png_comment()), id='png-text'
        ),
    ],
)
def test_comments_are_not_kept(
    tmp_path: pathlib.Path, convert: Convert, upload: Callable[[], bytes]
) -> None:
    """Comments are metadata too: an editor or camera may have written anything there."""
    _, stored = convert(upload())

    assert 'comment' not in stored.info
    assert imagegen.SECRET_COMMENT not in (tmp_path / 'upload').read_bytes()


def _png_comment() -> PngInfo:
    info = PngInfo()
    info.add_text('comment', imagegen.SECRET_COMMENT.decode())
    return info


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_icc_profile_is_applied_then_dropped(
    tmp_path: pathlib.Path, convert: Convert, fmt: str
) -> None:
    """Red in a profile whose red is sRGB's green must be stored as green, untagged."""
    data = encode(solid(RED), fmt, icc_profile=imagegen.swapped_primaries_icc())

    _, stored = convert(data)

    assert is_colour(stored.getpixel((128, 128)), GREEN)
    assert 'icc_profile' not in stored.info
    assert b'ICC_PROFILE' not in (tmp_path / 'upload').read_bytes()


@pytest.mark.parametrize(
    ('orientation', 'size', 'red_corner'),
    [
        (3, (640, 360), (640 - 32, 360 - 32)),  # irot 180
        (6, (360, 640), (360 - 32, 32)),  # irot: top-left goes top-right
        (2, (640, 360), (640 - 32, 32)),  # imir: mirrored left to right
    ],
)
def test_heic_rotation_and_mirroring_are_applied(
    convert: Convert, orientation: int, size: tuple[int, int], red_corner: tuple[int, int]
) -> None:
    stored_size, stored = convert(imagegen.rotated_heic(orientation))

    assert stored_size == size
    corners = [(32, 32), (size[0] - 32, 32), (32, size[1] - 32), (size[0] - 32, size[1] - 32)]
    assert [is_colour(stored.getpixel(corner), RED) for corner in corners] == [
        corner == red_corner for corner in corners
    ]


# NOTE: pillow-jxl-plugin's writer embeds no ICC profile, so JPEG XL has no
#   such test; its reader hands libjxl's profile to the same conversion.
@pytest.mark.parametrize('fmt', ['HEIF', 'AVIF'])
def test_modern_format_icc_profile_is_applied_then_dropped(
    tmp_path: pathlib.Path, convert: Convert, fmt: str
) -> None:
    """A HEIC or AVIF in a profile whose red is sRGB's green is stored green."""
    imagegen.register_plugins()
    params = {'quality': 95} if fmt == 'HEIF' else {}
    data = encode(solid(RED), fmt, icc_profile=imagegen.swapped_primaries_icc(), **params)

    _, stored = convert(data)

    assert is_colour(stored.getpixel((128, 128)), GREEN)
    assert b'ICC_PROFILE' not in (tmp_path / 'upload').read_bytes()


@pytest.mark.parametrize('fmt', ['HEIF', 'AVIF', 'JXL'])
def test_modern_formats_are_stored_as_jpeg_with_their_pixels(convert: Convert, fmt: str) -> None:
    imagegen.register_plugins()
    original = picture((640, 360))

    size, stored = convert(encode(original, fmt, quality=95))

    assert size == (640, 360)
    assert difference(stored, original) < 4


def test_srgb_profile_changes_nothing(convert: Convert) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()

    _, stored = convert(encode(solid(RED), 'JPEG', icc_profile=srgb))

    assert is_colour(stored.getpixel((128, 128)), RED)


@pytest.mark.parametrize(
    'data',
    [
        pytest.param(encode(solid(RED), 'PNG', icc_profile=b'not a profile' * 20), id='garbage'),
        pytest.param(
            encode(solid((90,), mode='L'), 'JPEG', icc_profile=imagegen.swapped_primaries_icc()),
            id='rgb-profile-on-grey',
        ),
    ],
)
def test_unusable_icc_profile_is_ignored(convert: Convert, data: bytes) -> None:
    """Broken profiles are common in the wild; the pixels are still worth keeping."""
    _, stored = convert(data)

    assert stored.size == (256, 256)


# -- convert_upload: refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    'data',
    [
        pytest.param(imagegen.png_bomb(), id='png'),
        pytest.param(imagegen.gif_bomb(), id='gif'),
        pytest.param(imagegen.jpeg_bomb(), id='jpeg'),
    ],
)
def test_decompression_bomb_is_refused_before_decoding(convert: Convert, data: bytes) -> None:
    """Billions of pixels claimed by a tiny file: decoding would take gigabytes."""
    assert len(data) < 2000
    started = time.monotonic()

    with pytest.raises(ImageTooLarge):
        convert(data)

    assert time.monotonic() - started < 1


def test_pixel_limit_is_exact(convert: Convert) -> None:
    """Below Pillow's own (doubled) bomb limit, look's check names the limit."""
    convert(image_bytes('PNG', size=(40, 25)), max_pixels=1000)

    with pytest.raises(ImageTooLarge, match=r'the limit is 0\.001 megapixels'):
        convert(image_bytes('PNG', size=(40, 26)), max_pixels=1000)


def test_side_longer_than_jpeg_allows_is_refused(convert: Convert) -> None:
    """Few pixels, but a side no JPEG can have: refused before anything is written."""
    with pytest.raises(ImageTooLarge, match='65500'):
        convert(image_bytes('PNG', size=(70_000, 2)))

    convert(image_bytes('PNG', size=(65_500, 2)))


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WEBP'])
def test_truncated_upload_is_corrupt(convert: Convert, fmt: str) -> None:
    with pytest.raises(CorruptImage):
        convert(imagegen.truncated(image_bytes(fmt)))


def test_garbled_pixel_data_is_corrupt(convert: Convert) -> None:
    with pytest.raises(CorruptImage):
        convert(imagegen.corrupt_png())


@pytest.mark.parametrize(
    'data',
    [
        pytest.param(imagegen.random_bytes(), id='noise'),
        pytest.param(b'Dear diary,\n' * 100, id='text'),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"/>', id='svg'),
        pytest.param(b'', id='empty'),
        pytest.param(image_bytes('PPM', size=(64, 64)), id='ppm'),
        pytest.param(b'P1\n2 2\n0 1 1 0\n', id='pbm-text'),
        pytest.param(image_bytes('TGA', size=(64, 64)), id='tga'),
        pytest.param(image_bytes('PCX', size=(64, 64)), id='pcx'),
        pytest.param(image_bytes('ICO', size=(64, 64)), id='ico'),
        # NOTE: decoding EPS runs Ghostscript on the upload when it is installed.
        pytest.param(b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n', id='eps'),
    ],
)
def test_only_the_advertised_formats_are_read(convert: Convert, data: bytes) -> None:
    """Anything but the formats the 415 message names is refused: other decoders stay shut."""
    with pytest.raises(UnsupportedImage):
        convert(data)


@pytest.mark.parametrize(
    'error_class',
    [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.LookError)
    ],
)
def test_errors_survive_the_pool_boundary(error_class: type[errors.LookError]) -> None:
    error = error_class('The image is 3x3.', retry_after=4)

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is error_class
    assert copy.description == str(copy) == 'The image is 3x3.'
    assert (copy.title, copy.retry_after) == (error.title, 4)


# -- render_thumbnail --------------------------------------------------------------


@pytest.fixture
def stored_jpeg(tmp_path: pathlib.Path) -> pathlib.Path:
    """A stored image as convert_upload writes it."""
    path = tmp_path / 'stored.jpeg'
    path.write_bytes(image_bytes('PNG', size=(640, 360), seed=5))
    convert_upload(str(path), MAX_PIXELS, QUALITY)
    return path


@pytest.mark.parametrize('size', [(320, 180), (160, 90), (80, 45), (100, 50), (640, 360)])
def test_render_thumbnail_is_a_jpeg_of_exactly_that_size(
    stored_jpeg: pathlib.Path, size: tuple[int, int]
) -> None:
    data = render_thumbnail(str(stored_jpeg), size, 'jpeg', QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.format == 'JPEG'
        assert thumbnail.mode == 'RGB'
        assert thumbnail.size == size
        expected = picture((640, 360), seed=5).resize(size, Image.Resampling.LANCZOS)
        assert difference(thumbnail, expected) < 10


def test_renders_ignore_the_pixel_limit_left_by_the_last_conversion(
    tmp_path: pathlib.Path, stored_jpeg: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOOK_MAX_PIXELS lowered since an image was stored: its thumbnails still render."""
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)  # restored after
    upload = tmp_path / 'upload.png'
    upload.write_bytes(image_bytes('PNG', size=(64, 64)))
    with pytest.raises(ImageTooLarge):
        convert_upload(str(upload), 1000, QUALITY)  # leaves Pillow's limit at 1000 pixels

    data = render_thumbnail(str(stored_jpeg), (320, 180), 'jpeg', QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.size == (320, 180)


@pytest.mark.parametrize('size', [(320, 180), (160, 90), (80, 45)])
def test_a_thumbnail_of_odd_sides_leaves_out_what_halving_does(
    tmp_path: pathlib.Path, size: tuple[int, int]
) -> None:
    """Halving 641x361 drops its last column and row; decoding at 1/2, 1/4 or 1/8 keeps them.

    Red there must not be squeezed into the thumbnail's edges.
    """
    grey = solid((128, 128, 128), (641, 361))
    grey.paste((255, 0, 0), (640, 0, 641, 361))
    grey.paste((255, 0, 0), (0, 360, 641, 361))
    path = tmp_path / 'odd.jpeg'
    path.write_bytes(encode(grey, 'PNG'))
    convert_upload(str(path), MAX_PIXELS, QUALITY)

    data = render_thumbnail(str(path), size, 'jpeg', QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.size == size
        width, height = size
        edges = [thumbnail.getpixel((width - 1, y)) for y in range(height)]
        edges += [thumbnail.getpixel((x, height - 1)) for x in range(width)]
    assert max(red - green for red, green, _blue in edges) < 20


# -- WebP and AVIF ------------------------------------------------------------------

PILLOW_NAMES = {'jpeg': 'JPEG', 'webp': 'WEBP', 'avif': 'AVIF', 'jxl': 'JXL'}


@pytest.mark.parametrize('size', [(320, 180), (100, 50)])
@pytest.mark.parametrize('fmt', THUMBNAIL_FORMATS)
def test_every_format_renders_rgb_of_exactly_that_size_without_metadata(
    tmp_path: pathlib.Path, fmt: str, size: tuple[int, int]
) -> None:
    """Even from a stored JPEG that has metadata, which convert_upload never writes."""
    exif = Image.Exif()
    exif[0x0110] = imagegen.SECRET_CAMERA  # Model
    path = tmp_path / 'stored.jpeg'
    path.write_bytes(
        encode(
            picture(seed=5),
            'JPEG',
            quality=QUALITY,
            icc_profile=imagegen.swapped_primaries_icc(),
            exif=exif,
            comment=imagegen.SECRET_COMMENT,
            xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>',
        )
    )

    data = render_thumbnail(str(path), size, fmt, QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.format == PILLOW_NAMES[fmt]
        assert thumbnail.mode == 'RGB'
        assert thumbnail.size == size
        info = dict(thumbnail.info)
    if fmt == 'jxl':
        # A bare codestream, no boxes: no room for EXIF or XMP. libjxl hands
        # its colour encoding (sRGB, no profile) over as an ICC profile.
        assert data[:2] == b'\xff\x0a'
        assert jpeg.is_srgb(info.pop('icc_profile'))
    assert not {'exif', 'icc_profile', 'xmp', 'comment'} & info.keys()
    assert imagegen.SECRET_CAMERA.encode() not in data
    assert imagegen.SECRET_COMMENT not in data


def test_a_webp_thumbnail_is_a_bare_vp8_image(stored_jpeg: pathlib.Path) -> None:
    """No VP8X header, so no room for a profile, EXIF or XMP: sRGB by default."""
    data = render_thumbnail(str(stored_jpeg), (320, 180), 'webp', QUALITY)

    assert data[:4] == b'RIFF'
    assert data[8:16] == b'WEBPVP8 '
    assert 20 + struct.unpack('<I', data[16:20])[0] + data[16] % 2 == len(data)  # one chunk


def test_an_avif_thumbnail_says_srgb_in_its_nclx_box_and_nothing_else(
    stored_jpeg: pathlib.Path,
) -> None:
    """BT.709 primaries, sRGB transfer, BT.601 matrix (JPEG's), full range: no profile."""
    data = render_thumbnail(str(stored_jpeg), (320, 180), 'avif', QUALITY)

    header = data[: data.index(b'mdat')]  # the boxes before the coded image
    assert header.count(b'colr') == 1
    colr = header.index(b'colr')
    assert header[colr + 4 : colr + 8] == b'nclx'
    assert struct.unpack('>HHHB', header[colr + 8 : colr + 15]) == (1, 13, 6, 0x80)
    assert b'Exif' not in header
    assert b'mime' not in header  # XMP's item type


# NOTE: the picture is flat colour and gradients, which JPEG XL at q85 codes
#   in 0.78 of the JPEG's bytes (0.67 on photographs, AVIF 0.63).
@pytest.mark.parametrize(('fmt', 'ratio'), [('webp', 0.75), ('avif', 0.75), ('jxl', 0.8)])
def test_webp_avif_and_jxl_keep_the_jpegs_colours_in_fewer_bytes(
    stored_jpeg: pathlib.Path, fmt: str, ratio: float
) -> None:
    jpeg = render_thumbnail(str(stored_jpeg), (320, 180), 'jpeg', QUALITY)

    data = render_thumbnail(str(stored_jpeg), (320, 180), fmt, QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail, Image.open(io.BytesIO(jpeg)) as reference:
        assert difference(thumbnail, reference) < 4
    assert len(data) < ratio * len(jpeg)


@pytest.mark.parametrize('fmt', THUMBNAIL_FORMATS)
def test_every_format_keeps_saturated_colours_and_skin(tmp_path: pathlib.Path, fmt: str) -> None:
    """A YCbCr matrix or range other than the one the file names would shift these."""
    colours = [(200, 30, 40), (30, 160, 60), (40, 60, 200), (224, 172, 140)]
    patches = solid((0, 0, 0), (640, 360))
    for n, colour in enumerate(colours):
        patches.paste(colour, (160 * n, 0, 160 * (n + 1), 360))
    path = tmp_path / 'stored.jpeg'
    path.write_bytes(encode(patches, 'PNG'))
    convert_upload(str(path), MAX_PIXELS, QUALITY)

    data = render_thumbnail(str(path), (320, 180), fmt, QUALITY)

    with Image.open(io.BytesIO(data)) as thumbnail:
        centres = [thumbnail.getpixel((80 * n + 40, 90)) for n in range(len(colours))]
    for centre, colour in zip(centres, colours, strict=True):
        assert is_colour(centre, colour, tolerance=4), (centre, colour)


def test_encoding_tags_name_the_settings() -> None:
    """The JPEG's is the one ETags have always carried."""
    assert encoding_tag('jpeg', 85) == 'q85'
    assert encoding_tag('jpeg', 60) == 'q60'
    assert encoding_tag('webp', 85) == 'webp-q85-m4'
    assert encoding_tag('avif', 85) == 'avif-q70-s9-420-t1'
    assert encoding_tag('jxl', 85) == 'jxl-q85-e3-t1'


@pytest.mark.parametrize(
    ('fmt', 'key', 'value'),
    [
        ('webp', 'quality', 75),
        ('webp', 'method', 3),
        ('avif', 'quality', 60),
        ('avif', 'speed', 7),
        ('avif', 'subsampling', '4:4:4'),
        ('jxl', 'quality', 80),
        ('jxl', 'effort', 4),
    ],
)
def test_an_encoding_tag_changes_with_any_setting_that_changes_the_bytes(
    stored_jpeg: pathlib.Path, monkeypatch: pytest.MonkeyPatch, fmt: str, key: str, value: object
) -> None:
    before = (
        encoding_tag(fmt, QUALITY),
        render_thumbnail(str(stored_jpeg), (160, 90), fmt, QUALITY),
    )

    monkeypatch.setitem(ENCODINGS, fmt, {**ENCODINGS[fmt], key: value})

    after = (
        encoding_tag(fmt, QUALITY),
        render_thumbnail(str(stored_jpeg), (160, 90), fmt, QUALITY),
    )
    assert before[0] != after[0]
    assert before[1] != after[1]


def test_avif_threads_are_part_of_the_tag(
    stored_jpeg: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At speed 8 and below, libaom codes the rows apart when it has more than one."""
    renders = {}
    for threads in (1, 2):
        settings = {**ENCODINGS['avif'], 'speed': 8, 'max_threads': threads}
        monkeypatch.setitem(ENCODINGS, 'avif', settings)
        tag = encoding_tag('avif', QUALITY)
        renders[tag] = render_thumbnail(str(stored_jpeg), (320, 180), 'avif', QUALITY)

    assert len(set(renders.values())) == len(renders) == 2


def test_an_unknown_format_is_refused(stored_jpeg: pathlib.Path) -> None:
    with pytest.raises(ValueError, match='gif'):
        render_thumbnail(str(stored_jpeg), (160, 90), 'gif', QUALITY)
    with pytest.raises(ValueError, match='gif'):
        encoding_tag('gif', QUALITY)


# -- the Thumbnailer and its pool ------------------------------------------------------


def is_running(pid: int) -> bool:
    """Return whether ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def pool_pids() -> set[int]:
    return {process.pid for process in multiprocessing.active_children() if process.pid}


MakeThumbnailer = Callable[..., Thumbnailer]


@pytest.fixture
def make_thumbnailer() -> MakeThumbnailer:
    def make(**overrides: object) -> Thumbnailer:
        settings: dict[str, object] = {
            'processes': 1,
            'max_pixels': MAX_PIXELS,
            'quality': QUALITY,
            'render_timeout': 20.0,
        }
        settings.update(overrides)
        return Thumbnailer(**settings)  # type: ignore[arg-type]

    return make


@pytest.fixture
def in_background() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        yield executor


def test_pool_renders_and_converts(
    tmp_path: pathlib.Path, stored_jpeg: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    worker = make_thumbnailer()
    upload = tmp_path / 'u'
    upload.write_bytes(image_bytes('WEBP', size=(300, 200)))

    assert worker.convert_upload(upload).size == (300, 200)
    with Image.open(upload) as stored:
        assert (stored.format, stored.size) == ('JPEG', (300, 200))
    with Image.open(io.BytesIO(worker.render(stored_jpeg, (160, 90), 'jpeg'))) as thumbnail:
        assert thumbnail.size == (160, 90)


def test_domain_errors_cross_the_pool(
    tmp_path: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    worker = make_thumbnailer()
    upload = tmp_path / 'u'
    upload.write_bytes(b'just text')

    with pytest.raises(UnsupportedImage, match='JPEG, PNG'):
        worker.convert_upload(upload)


def test_pool_starts_lazily_and_close_leaves_no_process(
    stored_jpeg: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    before = pool_pids()
    worker = make_thumbnailer(processes=2)
    assert pool_pids() == before  # no work at construction

    worker.render(stored_jpeg, (160, 90), 'jpeg')
    started = pool_pids() - before
    assert started

    worker.close()

    assert not any(is_running(pid) for pid in started)
    # Processes of earlier tests may have ended meanwhile; none of this pool remains.
    assert not pool_pids() - before
    worker.render(stored_jpeg, (160, 90), 'jpeg')  # and it starts again on demand


def page_faults(pid: int) -> int:
    """Return the minor page faults ``pid`` has taken so far."""
    stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    return int(stat.rsplit(')', 1)[1].split()[7])


def faults_per_render(
    worker: Thumbnailer, sources: list[pathlib.Path], renders: int = 20, format: str = 'jpeg'
) -> float:
    """Render 960x540s of ``sources`` in a one-process pool; return its page faults per render."""
    before = pool_pids()
    for source in sources:  # start the process, import, allocate for the first time
        worker.render(source, (960, 540), format)
    (pid,) = pool_pids() - before
    start = page_faults(pid)
    for n in range(renders):
        worker.render(sources[n % len(sources)], (960, 540), format)
    return (page_faults(pid) - start) / renders


@pytest.fixture
def stored_photos(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    """Four different 1921x1081 images as look stores them: a 960x540 crops the decoded 961x541."""
    paths = []
    for seed in range(4):
        path = tmp_path / f'stored-{seed}.jpeg'
        path.write_bytes(image_bytes('JPEG', size=(1921, 1081), seed=seed, quality=90))
        convert_upload(str(path), MAX_PIXELS, QUALITY)
        paths.append(path)
    return paths


def test_renders_reuse_image_memory_instead_of_faulting_in_fresh_pages(
    stored_photos: list[pathlib.Path], make_thumbnailer: MakeThumbnailer
) -> None:
    """A 960x540 crop holds two 2 MiB images: mapped afresh, they cost ~1000 page faults."""
    worker = make_thumbnailer()
    try:
        assert faults_per_render(worker, stored_photos) < 50
    finally:
        worker.close()


def test_pillow_blocks_max_set_by_the_operator_wins(
    make_thumbnailer: MakeThumbnailer, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_thumbnailer()
    try:
        assert worker._run(Image.core.get_blocks_max) == thumbnailer.IMAGE_BLOCKS_CACHED
    finally:
        worker.close()
    monkeypatch.setenv('PILLOW_BLOCKS_MAX', '0')  # keep no freed block: Pillow's default
    worker = make_thumbnailer()
    try:
        assert worker._run(Image.core.get_blocks_max) == 0
    finally:
        worker.close()


def test_a_fresh_pool_process_keeps_the_encoders_freed_memory_for_the_next_image(
    stored_photos: list[pathlib.Path], make_thumbnailer: MakeThumbnailer
) -> None:
    """libjxl's buffers, mapped afresh for each 960x540 JPEG XL, cost ~5 000 page faults."""
    worker = make_thumbnailer()
    try:
        assert faults_per_render(worker, stored_photos, renders=8, format='jxl') < 50
    finally:
        worker.close()


def test_malloc_thresholds_set_by_the_operator_win(
    stored_photos: list[pathlib.Path],
    make_thumbnailer: MakeThumbnailer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', str(128 * 1024))  # glibc's first threshold
    worker = make_thumbnailer()
    try:
        assert faults_per_render(worker, stored_photos, renders=8, format='jxl') > 1000
    finally:
        worker.close()


def test_start_all_starts_the_pools_and_close_all_stops_them(
    make_thumbnailer: MakeThumbnailer,
) -> None:
    """gunicorn's post_worker_init starts every pool, so no request waits for a spawn."""
    thumbnailer.close_all()
    gc.collect()  # thumbnailers of earlier tests would be started too
    before = pool_pids()
    workers = [make_thumbnailer(processes=2), make_thumbnailer(processes=1)]

    thumbnailer.start_all()
    started = pool_pids() - before
    # start_all() returns once every process has answered.
    own = {pid for worker in workers for pid in worker._executor()._processes}
    assert len(own) == sum(worker.processes for worker in workers)
    assert own <= started

    thumbnailer.close_all()

    assert not any(is_running(pid) for pid in started)


def test_killed_pool_process_fails_one_render_then_recovers(
    stored_jpeg: pathlib.Path,
    make_thumbnailer: MakeThumbnailer,
    in_background: concurrent.futures.ThreadPoolExecutor,
) -> None:
    worker = make_thumbnailer()
    worker.render(stored_jpeg, (160, 90), 'jpeg')
    (victim,) = pool_pids()
    busy = in_background.submit(worker._run, time.sleep, 30)
    time.sleep(0.3)

    os.kill(victim, signal.SIGKILL)

    with pytest.raises(ThumbnailerUnavailable):
        busy.result(timeout=10)
    with Image.open(io.BytesIO(worker.render(stored_jpeg, (160, 90), 'jpeg'))) as thumbnail:
        assert thumbnail.size == (160, 90)
    assert victim not in pool_pids()


def test_pool_process_killed_while_idle_costs_at_most_one_render(
    stored_jpeg: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    worker = make_thumbnailer()
    worker.render(stored_jpeg, (160, 90), 'jpeg')
    (victim,) = pool_pids()

    os.kill(victim, signal.SIGKILL)

    failures = 0
    for _ in range(2):
        try:
            worker.render(stored_jpeg, (160, 90), 'jpeg')
            break
        except ThumbnailerUnavailable:
            failures += 1
    assert failures <= 1
    worker.render(stored_jpeg, (160, 90), 'jpeg')


def test_render_over_the_timeout_is_abandoned_and_its_process_killed(
    stored_jpeg: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    worker = make_thumbnailer()
    # NOTE: the first render starts the process and imports the renderer, which
    #   on a loaded machine can take longer than the limit under test.
    worker.render(stored_jpeg, (160, 90), 'jpeg')
    worker.render_timeout = 0.5
    (hung,) = pool_pids()
    started = time.monotonic()

    with pytest.raises(ThumbnailerUnavailable, match=r'0\.5s'):
        worker._run(time.sleep, 30)

    assert time.monotonic() - started < 5
    assert not is_running(hung)
    with Image.open(io.BytesIO(worker.render(stored_jpeg, (160, 90), 'jpeg'))) as thumbnail:
        assert thumbnail.size == (160, 90)


def test_time_queued_behind_other_work_does_not_count_toward_the_limit(
    make_thumbnailer: MakeThumbnailer,
) -> None:
    """Four uploads of 0.4 s each into one process take 1.6 s; none of them overran 1 s."""
    worker = make_thumbnailer(render_timeout=1.0)
    worker.start()

    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        tasks = [clients.submit(worker._run, time.sleep, 0.4) for _ in range(4)]
        for task in tasks:
            task.result(timeout=10)


def test_tasks_queued_when_an_overrun_restarts_the_pool_are_told_to_retry(
    make_thumbnailer: MakeThumbnailer,
) -> None:
    """The overrun kills the pool; what was queued behind it is cancelled, not a 500."""
    worker = make_thumbnailer(render_timeout=0.5)
    worker.start()

    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        hung = clients.submit(worker._run, time.sleep, 30)
        assert wait_until(lambda: len(worker._unfinished) == 1, 5.0)  # first in line
        queued = [clients.submit(worker._run, time.sleep, 0.1) for _ in range(3)]
        for task in [hung, *queued]:
            with pytest.raises(ThumbnailerUnavailable):
                task.result(timeout=10)


def test_a_task_is_refused_at_once_when_the_work_ahead_would_outlast_the_bound(
    tmp_path: pathlib.Path,
    stored_jpeg: pathlib.Path,
    make_thumbnailer: MakeThumbnailer,
    in_background: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """A queue without bound would turn a burst into timeouts for everyone."""
    worker = make_thumbnailer(max_queue_seconds=1.0)
    worker.start()
    # A render expected to take 3 s (as if renders of its kind took that lately).
    worker.backlog.costs['webp'] = 3.0 / thumbnailer.render_units((160, 90))
    release = tmp_path / 'release'
    kind = ('webp', thumbnailer.render_units((160, 90)))
    busy = in_background.submit(worker._run, _wait_for_file, str(release), kind=kind)
    assert wait_until(lambda: worker._in_flight == 1, 5)
    upload = tmp_path / 'u'
    upload.write_bytes(image_bytes('PNG', size=(64, 64)))

    try:
        started = time.monotonic()
        with pytest.raises(errors.ThumbnailerBusy) as refused:
            worker.render(stored_jpeg, (160, 90), 'jpeg')
        # Uploads wait in the same queue: beyond it, they are refused alike.
        with pytest.raises(errors.ThumbnailerBusy, match=r'about 3\.0s of work queued'):
            worker.convert_upload(upload)
        assert time.monotonic() - started < 0.5
    finally:
        release.touch()
    assert refused.value.retry_after == 3  # when the work ahead is expected to be done
    assert upload.read_bytes() == image_bytes('PNG', size=(64, 64))
    busy.result(timeout=10)
    # Once it is done, the next task is admitted.
    assert worker.backlog.queued == pytest.approx(0.0)
    worker.render(stored_jpeg, (160, 90), 'jpeg')


def test_a_burst_of_small_tasks_queues_however_many_there_are(
    tmp_path: pathlib.Path, stored_jpeg: pathlib.Path, make_thumbnailer: MakeThumbnailer
) -> None:
    """One process, a page of 24 renders and 8 uploads at once: all are done, none refused.

    However many they are, small tasks are a fraction of a second of work.
    """
    worker = make_thumbnailer(processes=1)
    worker.start()
    release = tmp_path / 'release'
    uploads = []
    for seed in range(8):
        uploads.append(tmp_path / f'upload-{seed}')
        uploads[-1].write_bytes(image_bytes('PNG', size=(64, 48), seed=seed))
    with concurrent.futures.ThreadPoolExecutor(33) as clients:
        # The only process waits for the file, so everything after it waits in line.
        first = clients.submit(worker._run, _wait_for_file, str(release))
        renders = [
            clients.submit(worker.render, stored_jpeg, (160, 90), 'jpeg') for _ in range(24)
        ]
        converted = [clients.submit(worker.convert_upload, path) for path in uploads]
        try:
            assert wait_until(lambda: worker._in_flight == 33, 10)
        finally:
            release.touch()
        first.result(timeout=10)
        assert all(len(future.result(timeout=10)) > 0 for future in renders)
        assert [future.result(timeout=10).size for future in converted] == [(64, 48)] * 8


def test_the_backlog_learns_what_each_kind_of_task_costs() -> None:
    """Each finished task moves its kind's cost; a larger task weighs more."""
    backlog = thumbnailer.Backlog(processes=2, max_wait=1.0)
    first = backlog.costs['upload']
    units = thumbnailer.upload_units(1_000_000)

    for _ in range(20):
        backlog.learn('upload', units, 0.5)  # uploads of 1 MB took 0.5 s lately

    assert backlog.costs['upload'] == pytest.approx(0.5 / units, rel=0.01)
    assert backlog.costs['upload'] > first
    assert backlog.costs['jpeg'] == thumbnailer.FIRST_COSTS['jpeg']  # other kinds keep theirs
    small = backlog.admit('upload', thumbnailer.upload_units(10_000))
    large = backlog.admit('upload', units)
    assert large == pytest.approx(0.5, rel=0.01) and small < large / 10
    # Two processes share the work ahead.
    assert backlog.expected_wait() == pytest.approx((small + large) / 2)
    for _ in range(3):
        backlog.admit('upload', units)
    with pytest.raises(errors.ThumbnailerBusy) as refused:
        backlog.admit('upload', units)  # just over 2 s of work ahead, over two processes
    assert refused.value.retry_after == 2
    backlog.done(large)
    backlog.admit('upload', units)  # room again


def test_a_pool_with_more_processes_admits_more_work(make_thumbnailer: MakeThumbnailer) -> None:
    """The expected wait is the work ahead shared by the processes; resize follows the pool."""
    worker = make_thumbnailer(processes=1, max_queue_seconds=1.0)
    worker.backlog.queued = 1.5
    assert worker.backlog.expected_wait() == 1.5

    worker.resize(3)

    assert worker.backlog.expected_wait() == 0.5
    worker.backlog.admit('jpeg', thumbnailer.render_units((160, 90)))


def _wait_for_file(path: str) -> None:
    wait_until(lambda: os.path.exists(path), 20, interval=0.01)


def test_pool_processes_leave_when_their_web_worker_is_killed(tmp_path: pathlib.Path) -> None:
    """A SIGKILLed gunicorn worker cannot close its pool; the pool must notice by itself."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from look.imaging.pool import Thumbnailer
        if __name__ == '__main__':
            worker = Thumbnailer(processes=1, max_pixels=1000, quality=85, render_timeout=20)
            print(worker._run(os.getpid), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    path = tmp_path / 'worker.py'
    path.write_text(script)

    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    orphan = int(result.stdout)

    deadline = time.monotonic() + 5
    while is_running(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(orphan)
