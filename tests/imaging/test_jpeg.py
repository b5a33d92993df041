"""JPEGs kept as they were made: the same pixels, none of the metadata, checked as any other."""

from __future__ import annotations

import base64
import io
import pathlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageCms

from look.errors import CorruptImage
from look.imaging import jpeg, thumbhash
from look.imaging.convert import Converted, convert_upload

from support import imagegen
from support.imagegen import (
    encode,
    jpeg_segments,
    metadata_jpeg,
    picture,
    same_placeholder,
    solid,
)

MAX_PIXELS = 8192 * 8192
QUALITY = 85
SECRETS = (
    imagegen.SECRET_CAMERA.encode(),
    imagegen.SECRET_COMMENT,
    imagegen.SECRET_XMP,
    imagegen.SECRET_IPTC,
    b'look-test-app15',
    b'Exif\0\0',
)
# The segments a stored JPEG may have before its first scan.
JFIF, ADOBE, TABLES = 0xE0, 0xEE, {0xDB, 0xC4, 0xDD}
FRAMES = {0xC0, 0xC1, 0xC2}


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)


Keep = Callable[[bytes], tuple[Converted, bytes]]


@pytest.fixture
def keep(tmp_path: pathlib.Path) -> Keep:
    """Return a function: upload bytes in, (what convert_upload returned, the stored bytes) out."""

    def run(data: bytes) -> tuple[Converted, bytes]:
        path = tmp_path / 'upload'
        path.write_bytes(data)
        converted = convert_upload(str(path), MAX_PIXELS, QUALITY)
        return converted, path.read_bytes()

    return run


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert('RGB').tobytes()


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()


KEPT: dict[str, Callable[[], bytes]] = {
    'every-metadata': lambda: metadata_jpeg(),
    'srgb-profile': lambda: metadata_jpeg(icc_profile=srgb_profile()),
    'progressive': lambda: metadata_jpeg(progressive=True),
    'restart-intervals': lambda: metadata_jpeg(restart_marker_blocks=4),
    'optimized-4-4-4': lambda: metadata_jpeg(optimize=True, subsampling=0),
    'phone-trailer': lambda: metadata_jpeg(trailer=b'look-test-app15 after the end'),
    'mpo': lambda: encode(
        imagegen.grainy_photo(seed=1), 'MPO', save_all=True, append_images=[picture(seed=2)]
    ),
    'odd-size': lambda: metadata_jpeg((641, 359)),
}


@pytest.mark.parametrize('make', KEPT.values(), ids=KEPT.keys())
def test_an_upright_srgb_jpeg_is_kept_with_its_pixels_and_without_metadata(
    keep: Keep, make: Callable[[], bytes]
) -> None:
    upload = make()

    converted, stored = keep(upload)

    with Image.open(io.BytesIO(upload)) as image:
        assert converted.size == image.size
    assert pixels(stored) == pixels(upload)  # not decoded and encoded again
    kinds = [marker for marker, _ in jpeg_segments(stored)]
    assert set(kinds) <= {JFIF, ADOBE, *TABLES, *FRAMES, 0xDA}
    assert all(
        payload.startswith(b'JFIF\0')
        for marker, payload in jpeg_segments(stored)
        if marker == JFIF
    )
    assert not any(secret in stored for secret in SECRETS)
    assert stored.endswith(b'\xff\xd9')
    # Every byte from the first scan on is the upload's, up to its end of image.
    scans = stored[stored.index(b'\xff\xda') :]
    assert scans in upload
    assert converted.thumbhash and converted.color.startswith('#')


def test_the_kept_bytes_are_the_uploads_less_its_metadata_segments(keep: Keep) -> None:
    upload = metadata_jpeg(icc_profile=srgb_profile())

    _, stored = keep(upload)

    segments = jpeg_segments(upload)
    left_out = [(m, p) for m, p in segments if m in range(0xE1, 0xF0) or m == 0xFE]
    assert {marker for marker, _ in left_out} == {0xE1, 0xE2, 0xED, 0xEF, 0xFE}
    removed = sum(4 + len(payload) for _, payload in left_out)
    assert len(stored) == len(upload) - removed


CONVERTED: dict[str, Callable[[], bytes]] = {
    'turned': lambda: imagegen.exif_jpeg(orientation=6),
    'other-profile': lambda: encode(
        solid((255, 0, 0)), 'JPEG', icc_profile=imagegen.swapped_primaries_icc()
    ),
    'cmyk': lambda: imagegen.cmyk_jpeg(),
    'grey': lambda: encode(picture(mode='L'), 'JPEG'),
}


@pytest.mark.parametrize('make', CONVERTED.values(), ids=CONVERTED.keys())
def test_other_jpegs_are_converted_as_before(keep: Keep, make: Callable[[], bytes]) -> None:
    upload = make()

    converted, stored = keep(upload)

    with Image.open(io.BytesIO(stored)) as image:
        assert image.mode == 'RGB'
        assert image.size == converted.size
    assert jpeg_segments(stored)[0][0] == JFIF
    assert stored[stored.index(b'\xff\xda') :] not in upload  # encoded again
    assert not any(secret in stored for secret in SECRETS)
    assert converted.thumbhash


def test_a_profile_other_than_srgb_is_converted(keep: Keep) -> None:
    """Red in a profile whose red is sRGB's green: kept bytes would show it red."""
    _, stored = keep(
        encode(solid((255, 0, 0)), 'JPEG', icc_profile=imagegen.swapped_primaries_icc())
    )

    with Image.open(io.BytesIO(stored)) as image:
        red, green, _ = image.getpixel((128, 128))
    assert green > 200 and red < 50


@pytest.mark.parametrize('keep_fraction', [0.5, 0.9, 0.99])
def test_a_truncated_jpeg_is_refused_as_before(
    tmp_path: pathlib.Path, keep_fraction: float
) -> None:
    data = imagegen.truncated(metadata_jpeg(), keep_fraction)
    path = tmp_path / 'upload'
    path.write_bytes(data)

    with pytest.raises(CorruptImage):
        convert_upload(str(path), MAX_PIXELS, QUALITY)

    assert path.read_bytes() == data


def test_a_jpeg_the_walker_cannot_follow_is_converted_instead(keep: Keep) -> None:
    """Stray bytes between segments: libjpeg skips them with a warning; look re-encodes."""
    upload = metadata_jpeg()
    table = upload.index(b'\xff\xdb')
    upload = upload[:table] + b'junk' + upload[table:]

    converted, stored = keep(upload)

    assert converted.size == (640, 360)
    assert stored[stored.index(b'\xff\xda') :] not in upload


def test_placeholder_of_a_kept_jpeg_is_made_from_its_draft(keep: Keep) -> None:
    """The 1/8 draft a kept JPEG is checked with gives the whole image's placeholder."""
    image = solid((30, 160, 250), (1600, 900))
    image.paste((250, 250, 250), (800, 0, 1600, 900))
    data = encode(image, 'JPEG', quality=95)

    converted, stored = keep(data)

    assert stored[stored.index(b'\xff\xda') :] in data  # kept
    exact = dict(zip(('thumbhash', 'color'), thumbhash.placeholder(image), strict=True))
    assert exact['color'] == '#8ccdfa'
    assert same_placeholder({'thumbhash': converted.thumbhash, 'color': converted.color}, exact)


@pytest.mark.parametrize(
    ('profile', 'is_srgb'),
    [
        pytest.param(srgb_profile, True, id='pillow-srgb'),
        pytest.param(imagegen.swapped_primaries_icc, False, id='swapped-primaries'),
        pytest.param(lambda: b'not a profile' * 20, False, id='garbage'),
        pytest.param(
            lambda: ImageCms.ImageCmsProfile(ImageCms.createProfile('LAB')).tobytes(),
            False,
            id='lab',
        ),
    ],
)
def test_srgb_is_told_by_what_a_profile_does(profile: Callable[[], bytes], is_srgb: bool) -> None:
    assert jpeg.is_srgb(profile()) is is_srgb


def test_strip_metadata_refuses_what_is_no_jpeg() -> None:
    with pytest.raises(ValueError, match='start of image'):
        jpeg.strip_metadata(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(ValueError, match='past the end'):
        jpeg.strip_metadata(b'\xff\xd8\xff\xe1\xff\xff' + bytes(10))
    assert base64.b64encode(jpeg.strip_metadata(b'\xff\xd8\xff\xd9')) == b'/9j/2Q=='
