"""Animations: kept as an animated WebP at upload, counted before decoding, rendered animated."""

from __future__ import annotations

import io
import pathlib

import pytest
from PIL import Image

from look.errors import ImageTooComplex, ImageTooLarge
from look.imaging import convert as convert_module
from look.imaging.animation import render_animation
from look.imaging.convert import Converted, convert_upload
from look.imaging.pool import Thumbnailer, render_units
from look.imaging.preflight import (
    ANIMATION_MAX_FRAMES,
    DEFAULT_MAX_ANIMATION_PIXELS,
    check_animation,
)

from support import imagegen
from support.imagegen import FRAME_COLOURS, animation, encode, solid

MAX_PIXELS = 100_000_000
QUALITY = 85
DURATIONS = [50, 100, 150, 200]
FORMATS = ['GIF', 'WEBP', 'PNG']


@pytest.fixture(autouse=True)
def _restore_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_upload sets Image.MAX_IMAGE_PIXELS, meant for a pool process; undo it here."""
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', Image.MAX_IMAGE_PIXELS)


def convert(
    tmp_path: pathlib.Path, data: bytes, max_animation_pixels: int = DEFAULT_MAX_ANIMATION_PIXELS
) -> tuple[Converted, pathlib.Path, pathlib.Path]:
    """Convert an upload as the pool does; return what it returned, the JPEG and the WebP path."""
    upload, kept = tmp_path / 'upload', tmp_path / 'upload-animation'
    upload.write_bytes(data)
    converted = convert_upload(
        str(upload), MAX_PIXELS, QUALITY, str(kept), max_animation_pixels=max_animation_pixels
    )
    return converted, upload, kept


def frames_of(data: bytes) -> list[tuple[Image.Image, int]]:
    """Return every frame of an animated image (RGBA) with its duration."""
    with Image.open(io.BytesIO(data)) as image:
        result = []
        for index in range(getattr(image, 'n_frames', 1)):
            image.seek(index)
            result.append((image.convert('RGBA'), image.info.get('duration')))
    return result


def near(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


@pytest.mark.parametrize('fmt', FORMATS)
def test_an_animation_is_kept_as_an_animated_webp_with_its_frames_durations_and_loops(
    tmp_path: pathlib.Path, fmt: str
) -> None:
    data = animation(fmt, (128, 96), frames=4, durations=DURATIONS, loop=3)

    converted, jpeg, kept = convert(tmp_path, data)

    assert (converted.size, converted.frames, converted.duration_ms) == ((128, 96), 4, 500)
    with Image.open(kept) as webp:
        assert webp.format == 'WEBP'
        assert webp.n_frames == 4
        assert webp.info['loop'] == 3
        assert webp.size == (128, 96)
    frames = frames_of(kept.read_bytes())
    assert [duration for _, duration in frames] == DURATIONS
    for number, (frame, _) in enumerate(frames):
        assert near(frame.getpixel((64, 60)), (*FRAME_COLOURS[number % 3], 255))
    # The square moves 7 pixels a frame: each frame is its own, not the first again.
    assert near(frames[2][0].getpixel((17, 3)), (255, 255, 255, 255))
    assert near(frames[0][0].getpixel((17, 3)), (255, 0, 0, 255))
    # The JPEG is the first frame, as before.
    with Image.open(jpeg) as first:
        assert first.format == 'JPEG'
        assert near(first.getpixel((64, 60)), FRAME_COLOURS[0])


def test_a_gif_without_a_looping_extension_plays_once(tmp_path: pathlib.Path) -> None:
    frames = [image.convert('P') for image in imagegen.animation_frames(frames=2)]
    data = encode(frames[0], 'GIF', save_all=True, append_images=frames[1:], duration=100)
    assert b'NETSCAPE' not in data

    _, _, kept = convert(tmp_path, data)

    with Image.open(kept) as webp:
        assert webp.info['loop'] == 1


@pytest.mark.parametrize('fmt', FORMATS)
def test_a_one_frame_image_of_an_animated_format_is_still(
    tmp_path: pathlib.Path, fmt: str
) -> None:
    data = animation(fmt, frames=1) if fmt != 'WEBP' else encode(solid((255, 0, 0)), 'WEBP')

    converted, jpeg, kept = convert(tmp_path, data)

    assert (converted.frames, converted.duration_ms) == (0, 0)
    assert not kept.exists()
    assert jpeg.read_bytes()[:3] == b'\xff\xd8\xff'


def test_transparency_is_kept_and_metadata_is_not(tmp_path: pathlib.Path) -> None:
    frames = imagegen.animation_frames(frames=3, mode='RGBA')
    for frame in frames:  # a sticker: the lower half transparent
        frame.paste((0, 0, 0, 0), (0, 48, 128, 96))
    exif = Image.Exif()
    exif[0x010F] = 'SecretCam'
    data = encode(
        frames[0],
        'WEBP',
        save_all=True,
        append_images=frames[1:],
        duration=100,
        lossless=True,
        exif=exif.tobytes(),
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SecretXMP</x:xmpmeta>',
        icc_profile=imagegen.swapped_primaries_icc(),
    )
    assert b'SecretCam' in data and b'SecretXMP' in data

    _, _, kept = convert(tmp_path, data)

    stored = kept.read_bytes()
    for chunk in (b'EXIF', b'XMP ', b'ICCP', b'SecretCam', b'SecretXMP'):
        assert chunk not in stored
    for frame, _ in frames_of(stored):
        assert frame.getpixel((64, 80))[3] == 0
        assert frame.getpixel((64, 10))[3] == 255


def test_frames_are_converted_to_srgb_as_the_jpeg_is(tmp_path: pathlib.Path) -> None:
    frames = [solid((255, 0, 0), (64, 64)), solid((255, 0, 0), (64, 64))]
    frames[1].paste((0, 0, 255), (0, 0, 8, 8))
    data = encode(
        frames[0],
        'PNG',
        save_all=True,
        append_images=frames[1:],
        duration=100,
        icc_profile=imagegen.swapped_primaries_icc(),
    )

    _, jpeg, kept = convert(tmp_path, data)

    with Image.open(jpeg) as first:
        converted = first.getpixel((32, 32))
    assert not near(converted, (255, 0, 0)), 'the profile was not applied to the JPEG'
    for frame, _ in frames_of(kept.read_bytes()):
        assert near(frame.getpixel((32, 32)), (*converted, 255))


@pytest.mark.parametrize('orientation', [6, 8])
def test_frames_are_turned_upright_as_the_jpeg_is(
    tmp_path: pathlib.Path, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    frames = imagegen.animation_frames((128, 96), frames=2)
    data = encode(
        frames[0],
        'WEBP',
        save_all=True,
        append_images=frames[1:],
        duration=100,
        lossless=True,
        exif=exif.tobytes(),
    )

    converted, jpeg, kept = convert(tmp_path, data)

    assert converted.size == (96, 128)
    with Image.open(kept) as webp:
        assert webp.size == (96, 128)
    with Image.open(jpeg) as first:
        jpeg_corner = first.convert('RGB').getpixel((3, 3) if orientation == 8 else (92, 3))
    webp_corner = frames_of(kept.read_bytes())[0][0]
    assert near(webp_corner.getpixel((3, 3) if orientation == 8 else (92, 3)), (*jpeg_corner, 255))


# -- the budget of frames x pixels, from the container ------------------------------


@pytest.mark.parametrize('fmt', FORMATS)
def test_the_budget_admits_an_animation_at_it_and_refuses_one_over_it(
    tmp_path: pathlib.Path, fmt: str
) -> None:
    data = animation(fmt, (100, 100), frames=10)
    path = tmp_path / 'upload'
    path.write_bytes(data)

    assert check_animation(str(path), 100_000) == 10
    with pytest.raises(ImageTooLarge, match='10 or more frames of 100x100'):
        check_animation(str(path), 99_999)

    converted, _, kept = convert(tmp_path, data, max_animation_pixels=100_000)
    assert converted.frames == 10
    assert kept.exists()
    refused = tmp_path / 'refused'
    refused.mkdir()
    with pytest.raises(ImageTooLarge):
        convert(refused, data, max_animation_pixels=99_999)
    assert (refused / 'upload').read_bytes() == data, 'a refused upload was changed'
    assert not (refused / 'upload-animation').exists()


def test_a_gif_of_twenty_thousand_one_pixel_frames_is_refused_before_decoding(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = imagegen.frame_bomb_gif()
    assert 450_000 < len(data) < 470_000

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError('the frames were opened')

    monkeypatch.setattr(convert_module.Image, 'open', no_decoding)
    with pytest.raises(ImageTooLarge, match='of 2000x2000'):
        convert(tmp_path, data)
    assert not (tmp_path / 'upload-animation').exists()


def test_an_ordinary_animated_gif_is_within_the_default_budget(tmp_path: pathlib.Path) -> None:
    data = imagegen.moving_picture((480, 270), frames=60)

    converted, _, kept = convert(tmp_path, data)

    assert (converted.frames, converted.duration_ms) == (60, 2400)
    with Image.open(kept) as webp:
        assert webp.n_frames == 60


def test_frames_past_the_most_are_refused_whatever_their_size(tmp_path: pathlib.Path) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(imagegen.frame_bomb_gif((1, 1), ANIMATION_MAX_FRAMES))
    assert check_animation(str(path), DEFAULT_MAX_ANIMATION_PIXELS) == ANIMATION_MAX_FRAMES

    path.write_bytes(imagegen.frame_bomb_gif((1, 1), ANIMATION_MAX_FRAMES + 1))
    with pytest.raises(ImageTooLarge, match=f'more than {ANIMATION_MAX_FRAMES} frames'):
        check_animation(str(path), DEFAULT_MAX_ANIMATION_PIXELS)


def test_a_gif_cut_into_tiny_blocks_is_refused_within_bounded_work(tmp_path: pathlib.Path) -> None:
    one_frame = imagegen.frame_bomb_gif((8, 8), frames=1)
    data_start = one_frame.index(b'\x02\x02\x44\x01\x00')
    # 200 000 sub-blocks of one byte each: 400 KB in which Pillow finds one frame.
    sliced = one_frame[: data_start + 1] + b'\x01\x00' * 200_000 + b'\x00' + one_frame[-1:]
    path = tmp_path / 'upload'
    path.write_bytes(sliced)

    with pytest.raises(ImageTooComplex, match='blocks'):
        check_animation(str(path), DEFAULT_MAX_ANIMATION_PIXELS)


def test_a_still_image_or_another_format_has_one_frame(tmp_path: pathlib.Path) -> None:
    path = tmp_path / 'upload'
    for data in (
        imagegen.image_bytes('JPEG'),
        imagegen.image_bytes('PNG'),
        imagegen.image_bytes('GIF'),
        imagegen.image_bytes('WEBP'),
    ):
        path.write_bytes(data)
        assert check_animation(str(path), 1) == 1


def test_an_apng_that_claims_more_frames_than_the_budget_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    data = bytearray(animation('PNG', (100, 100), frames=2))
    actl = data.index(b'acTL')
    data[actl + 4 : actl + 8] = (1_000_000).to_bytes(4, 'big')  # the CRC is not checked here
    path = tmp_path / 'upload'
    path.write_bytes(bytes(data))

    with pytest.raises(ImageTooLarge):
        check_animation(str(path), DEFAULT_MAX_ANIMATION_PIXELS)


def test_counting_frames_stops_at_the_budget(tmp_path: pathlib.Path) -> None:
    path = tmp_path / 'upload'
    path.write_bytes(imagegen.frame_bomb_gif((2000, 2000), frames=20_000))

    # 25 frames of 2000x2000 are the budget: the walk stops at the 26th, not the 20 000th.
    with pytest.raises(ImageTooLarge, match='has 26 or more frames'):
        check_animation(str(path), 100_000_000)


# -- animated thumbnails ---------------------------------------------------------------


@pytest.mark.parametrize('format', ['webp', 'avif'])
def test_a_thumbnail_of_an_animation_has_every_frame_resized(
    tmp_path: pathlib.Path, format: str
) -> None:
    data = animation('GIF', (128, 96), frames=4, durations=DURATIONS, loop=0)
    _, _, kept = convert(tmp_path, data)

    thumbnail = render_animation(str(kept), (64, 48), format)

    frames = frames_of(thumbnail)
    assert len(frames) == 4
    assert [duration for _, duration in frames] == DURATIONS
    for number, (frame, _) in enumerate(frames):
        assert frame.size == (64, 48)
        assert near(frame.getpixel((32, 40)), (*FRAME_COLOURS[number % 3], 255), tolerance=40)
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.format == format.upper()


def test_an_animated_render_weighs_its_frames_in_the_backlog() -> None:
    still = render_units((480, 270))
    assert render_units((480, 270), frames=60) - still == 59 * 480 * 270
    assert render_units((480, 270), frames=0) == still


def test_the_pool_admits_an_animated_render_by_its_frames(tmp_path: pathlib.Path) -> None:
    """The backlog is told what each render weighs: an animation's every frame."""
    _, jpeg, kept = convert(tmp_path, animation('GIF', (128, 96), frames=4))
    thumbnailer = Thumbnailer(
        processes=1, max_pixels=MAX_PIXELS, quality=QUALITY, render_timeout=20
    )
    admitted: list[tuple[str, float]] = []
    admit = thumbnailer.backlog.admit

    def recording(kind: str, units: float) -> float:
        admitted.append((kind, units))
        return admit(kind, units)

    thumbnailer.backlog.admit = recording  # type: ignore[method-assign]
    try:
        animated = thumbnailer.render(str(kept), (64, 48), 'webp', frames=4)
        first = thumbnailer.render(str(jpeg), (64, 48), 'jpeg', frames=4)
    finally:
        thumbnailer.close()

    assert len(frames_of(animated)) == 4 and len(frames_of(first)) == 1
    assert admitted == [('webp', render_units((64, 48), 4)), ('jpeg', render_units((64, 48)))]
    assert render_units((64, 48), 4) - render_units((64, 48)) == 3 * 64 * 48


def test_the_pool_admits_an_upload_that_may_animate_at_the_cost_of_animations(
    tmp_path: pathlib.Path,
) -> None:
    """An animated GIF costs 25 times a JPEG a byte: its uploads learn their own cost."""
    thumbnailer = Thumbnailer(
        processes=1, max_pixels=MAX_PIXELS, quality=QUALITY, render_timeout=20
    )
    admitted: list[str] = []
    admit = thumbnailer.backlog.admit

    def recording(kind: str, units: float) -> float:
        admitted.append(kind)
        return admit(kind, units)

    thumbnailer.backlog.admit = recording  # type: ignore[method-assign]
    uploads = {
        'gif': animation('GIF', frames=3),
        'apng': animation('PNG', frames=3),
        'webp': animation('WEBP', frames=3),
        'png': imagegen.image_bytes('PNG'),
        'jpeg': imagegen.image_bytes('JPEG'),
        'still-webp': imagegen.image_bytes('WEBP'),
    }
    try:
        for name, data in uploads.items():
            path = tmp_path / name
            path.write_bytes(data)
            thumbnailer.convert_upload(path, tmp_path / f'{name}.webp')
    finally:
        thumbnailer.close()

    assert admitted == ['animation'] * 3 + ['upload'] * 3


def test_a_gif_cut_off_mid_way_keeps_the_frames_before_the_cut(tmp_path: pathlib.Path) -> None:
    """As a browser shows a GIF whose download stopped: the frames that arrived."""
    whole = imagegen.moving_picture((160, 90), frames=10)

    converted, _, kept = convert(tmp_path, imagegen.truncated(whole, 0.7))

    assert 2 <= converted.frames < 10
    assert converted.duration_ms == 40 * converted.frames
    with Image.open(kept) as webp:
        assert webp.n_frames == converted.frames


def test_a_gif_cut_off_in_its_second_frame_is_a_still_image(tmp_path: pathlib.Path) -> None:
    whole = imagegen.moving_picture((160, 90), frames=2)
    second = whole.rindex(b'\x2c\x00\x00\x00\x00')  # the second image descriptor

    converted, jpeg, kept = convert(tmp_path, whole[: second + 40])

    assert (converted.frames, converted.duration_ms) == (0, 0)
    assert not kept.exists()
    assert jpeg.read_bytes()[:3] == b'\xff\xd8\xff'
