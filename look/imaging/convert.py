"""Converting an upload, in a pool process, into the upright sRGB JPEG that look keeps."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings

from PIL import Image, ImageCms, ImageMath, ImageOps, UnidentifiedImageError

from look.errors import (
    CorruptImage,
    ImageTooLarge,
    UnsupportedImage,
)
from look.imaging import animation, jpeg, plugins, preflight
from look.imaging.formats import ACCEPTED_FORMATS, READABLE_FORMATS

log = logging.getLogger(__name__)

_SIXTEEN_BIT_GREY = frozenset({'I', 'I;16', 'I;16L', 'I;16B', 'I;16N'})


_ALPHA_MODES = frozenset({'RGBA', 'LA', 'PA', 'RGBa', 'La'})


_srgb_profile: ImageCms.ImageCmsProfile | None = None


JPEG_MAX_SIDE = 65500  # Pillow's JPEG writer refuses longer sides


@dataclasses.dataclass(frozen=True)
class Converted:
    """What a conversion learnt of an upload, for its ``StoredImage``.

    ``thumbhash`` and ``color`` are its placeholder ('' for none); ``frames``
    and ``duration_ms`` describe an animation (0 for a still image).
    """

    size: tuple[int, int]
    thumbhash: str = ''
    color: str = ''
    frames: int = 0
    duration_ms: int = 0


def convert_upload(
    path: str,
    max_pixels: int,
    quality: int,
    animation_path: str | None = None,
    max_animation_pixels: int = preflight.DEFAULT_MAX_ANIMATION_PIXELS,
    write_back: bool = False,
) -> Converted:
    """Replace the uploaded image file at ``path`` with an upright sRGB JPEG.

    Returns what the index keeps of it. Metadata (EXIF, GPS, comments) is not
    carried over. With an ``animation_path``, an animation of more than one
    frame is written there too, as an animated WebP (look.imaging.animation);
    the JPEG is its first frame. An upload that is refused is left as it
    was. The caller makes the JPEG durable (``Store.add``): an fsync here would hold this process,
    which renders and uploads queue for, idle while the disk catches up.
    With ``write_back`` (where that fsync is of this very file: the local
    store), the kernel is asked to start writing the JPEG out at once.
    """
    # NOTE: Pillow's own bomb check runs in open(); ours below names the limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    Image.init()  # registers every plugin, so ACCEPTED_FORMATS can be looked up
    plugins.register()
    # Before open(): Pillow parses some headers in Python, chunk by chunk.
    preflight.check_container(path, max_pixels)
    if animation_path is not None:
        preflight.check_animation(path, max_animation_pixels)
    animated = None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            image = Image.open(path, formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise UnsupportedImage(
                f'The upload is not an image look can read ({READABLE_FORMATS}).'
            ) from None
        except Image.DecompressionBombError:
            raise ImageTooLarge(
                'The image has more pixels than the limit of '
                f'{preflight.megapixels(max_pixels)} megapixels.'
            ) from None
        except Exception as ex:
            raise CorruptImage(f'The image could not be read: {ex}') from None

        with image:
            width, height = image.size
            preflight.check_pixel_count(width, height, max_pixels)
            if max(width, height) > JPEG_MAX_SIDE:
                raise ImageTooLarge(
                    f'The image is {width}x{height}; a JPEG side can be at most '
                    f'{JPEG_MAX_SIDE} pixels.'
                )
            preflight.check_pixels_per_byte(image.format, image.size, os.path.getsize(path))
            if jpeg.is_kept_as_made(image):
                as_made = _keep_jpeg(path, image, write_back)
                if as_made is not None:
                    return as_made
            _match_trns_to_decoded_depth(image)
            try:
                if animation_path is not None and animation.is_animation(image):
                    # Before the first frame is turned upright in place.
                    animated = _keep_animation(image, animation_path)
                image.load()  # the first frame of an animation
                # In place: no copy of the whole image when it is upright already.
                ImageOps.exif_transpose(image, in_place=True)
                rgb = _to_srgb(image)
            except MemoryError:
                _discard(animation_path if animated else None)
                raise ImageTooLarge('The image is too large to decode.') from None
            except Exception as ex:
                _discard(animation_path if animated else None)
                raise CorruptImage(f'The image could not be decoded: {ex}') from None

    # NOTE: the upload is decoded and closed by now, so its own file can take
    #   the JPEG: one new file per upload, not two. (On ext4 without a
    #   journal, every deleted file slows file creation for a minute or more.)
    # Pillow's JPEG writer copies some of info (the comment) by default.
    rgb.info.clear()
    try:
        encoded = io.BytesIO()
        rgb.save(encoded, 'JPEG', quality=quality)
        _write_over(path, encoded.getbuffer(), write_back)
    except BaseException:
        _discard(animation_path if animated else None)
        raise
    # NOTE: from the decoded image scaled down, not decoded again: 0.25 ms
    #   of CPU for a 640x360 upload.
    hashed, color = placeholder(rgb)
    if animated is None:
        return Converted(rgb.size, thumbhash=hashed, color=color)
    return Converted(
        rgb.size,
        thumbhash=hashed,
        color=color,
        frames=animated.frames,
        duration_ms=animated.duration_ms,
    )


# The scale of the check that a kept JPEG decodes: libjpeg reads every
# coefficient but makes only an 8th of each side's pixels (draft).
_CHECK_SCALE = 8


def _keep_jpeg(path: str, image: Image.Image, write_back: bool) -> Converted | None:
    """Store an upright sRGB JPEG as its own bytes less metadata; None if it must be converted.

    It is still decoded completely, at an 8th of its size (a truncated or
    corrupt one is refused as any other), and its placeholder made from that.
    """
    # The file Pillow has open already: no second open of the upload.
    image.fp.seek(0)
    data = image.fp.read()
    try:
        stripped = jpeg.strip_metadata(data)
    except ValueError as ex:
        # Decodable, maybe, yet not built as the walker expects (bytes
        # between segments, say): converted as any other image.
        log.info('converting a JPEG whose segments could not be walked: %s', ex)
        return None
    width, height = image.size
    try:
        image.draft('RGB', (_up(width, _CHECK_SCALE), _up(height, _CHECK_SCALE)))
        image.load()
    except MemoryError:
        raise ImageTooLarge('The image is too large to decode.') from None
    except Exception as ex:
        raise CorruptImage(f'The image could not be decoded: {ex}') from None
    hashed, color = placeholder(image)
    if stripped != data:
        _write_over(path, stripped, write_back)
    return Converted((width, height), thumbhash=hashed, color=color)


def _write_over(path: str, data: bytes | memoryview, write_back: bool) -> None:
    """Write ``data`` over the file at ``path`` from its start, and cut the file there.

    With ``write_back``, the kernel starts writing it to disk (_start_writeback).

    PERF: not emptied first (O_TRUNC): ext4 would free the upload's blocks
      only to allocate them again (45 µs of CPU and about 0.1 ms of waiting
      for a 90 KB JPEG kept as made).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
        if write_back:
            _start_writeback(fd)
    finally:
        os.close(fd)


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing the file to disk now, without waiting for it.

    PERF: the web worker's fsync (Store.add) then finds the data written or
      on its way, and waits mostly for the inode and the disk's cache: a
      90 KB JPEG's fsync 250-320 → 130-150 µs of waiting here, the CPU the
      same. As PostgreSQL's pg_flush_data: POSIX_FADV_DONTNEED writes dirty
      pages back before it drops clean ones, and pages still on their way
      to the disk are kept (every page of a new JPEG stayed cached here).
    NOTE: only where the file is fsync'd where it is: a JPEG put to an
      object store leaves a spool file that is removed before the kernel
      would write it at all.
    """
    advise = getattr(os, 'posix_fadvise', None)  # not on macOS
    if advise is not None:
        with contextlib.suppress(OSError):  # a file system that takes no advice
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def placeholder(image: Image.Image) -> tuple[str, str]:
    """Return the placeholder (ThumbHash, colour) of a decoded image (look.imaging.thumbhash).

    NOTE: imported here, as the plugins are registered: numpy loads in pool
      processes only, and a web worker, which imports this module to hand
      its functions to the pool, stays 15 MiB smaller.
    """
    from look.imaging import thumbhash

    return thumbhash.placeholder(image)


def _up(dividend: int, divisor: int) -> int:
    """Divide, rounding up."""
    return -(-dividend // divisor)


def _keep_animation(image: Image.Image, path: str) -> animation.Animation | None:
    """Write the animation ``image`` to ``path``, its frames in sRGB as the JPEG's are."""
    icc_profile = image.info.get('icc_profile')

    def to_srgb(frame: Image.Image) -> Image.Image:
        return _apply_icc_profile(frame, icc_profile) if icc_profile else frame

    return animation.save_animation(image, path, to_srgb)


def _discard(path: str | None) -> None:
    """Remove the animation of an upload that is refused after all."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# PNG raw modes that Pillow decodes into 8-bit pixels from other depths.
_LOW_BIT_GREYS = {'1': 1, 'L;2': 2, 'L;4': 4}


def _match_trns_to_decoded_depth(image: Image.Image) -> None:
    """Scale a PNG's tRNS colour to the 8-bit pixels Pillow decodes it into (before load)."""
    transparency = image.info.get('transparency')
    if transparency is None or image.format != 'PNG' or len(image.tile) != 1:
        return
    rawmode = image.tile[0].args
    bits = _LOW_BIT_GREYS.get(rawmode) if isinstance(rawmode, str) else None
    if bits and isinstance(transparency, int):
        image.info['transparency'] = transparency * 255 // (2**bits - 1)
    elif rawmode == 'RGB;16B' and isinstance(transparency, tuple):
        # NOTE: Pillow keeps the high byte of each sample, so a colour that
        #   differs from the transparent one in its low byte only goes too.
        image.info['transparency'] = tuple(value >> 8 for value in transparency)


def _to_srgb(image: Image.Image) -> Image.Image:
    """Return an RGB image in sRGB, alpha flattened onto white."""
    icc_profile = image.info.get('icc_profile')
    # NOTE: besides an alpha channel or a palette, PNG's tRNS can name one
    #   grey level or RGB colour as transparent (PNG optimisers write that).
    transparency = image.info.get('transparency')
    if image.mode in _SIXTEEN_BIT_GREY:
        grey = image.convert('I')
        # Scale 0..65535 down to 0..255 rather than clipping everything to white.
        image = grey.point(lambda value: value * (1 / 256)).convert('L')
        if isinstance(transparency, int):  # a 16-bit level: matched before scaling
            opaque = ImageMath.lambda_eval(lambda v: (v['grey'] != transparency) * 255, grey=grey)
            image.putalpha(opaque.convert('L'))
    elif image.mode == 'P':
        image = image.convert('RGBA' if transparency is not None else 'RGB')
    elif transparency is not None and image.mode in ('1', 'L', 'RGB'):
        image = image.convert('RGBA' if image.mode == 'RGB' else 'LA')  # Pillow reads tRNS
    elif image.mode == '1' or image.mode == 'F':
        image = image.convert('L')
    if image.mode in _ALPHA_MODES:
        image = image.convert('RGBA')

    if icc_profile:
        image = _apply_icc_profile(image, icc_profile)

    if image.mode == 'RGBA':
        background = Image.new('RGB', image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel('A'))
        image = background
    return image if image.mode == 'RGB' else image.convert('RGB')


def _apply_icc_profile(image: Image.Image, icc_profile: bytes) -> Image.Image:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB'))
    try:
        source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(
            image,
            source_profile,
            _srgb_profile,
            outputMode='RGBA' if image.mode == 'RGBA' else 'RGB',
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as ex:
        # A broken or mismatched profile is common in the wild; the pixels are
        # still usable, so fall back to Pillow's plain conversion.
        log.info('ignoring unusable ICC profile: %s', ex)
        return image
