"""Animations: a GIF, animated WebP or APNG of more than one frame, kept as an animated WebP.

The stored JPEG of an animation is its first frame, as for any image; the
animation itself is a second file, an animated WebP with the same frames,
per-frame durations and loop count, converted to sRGB as the JPEG is (its
transparency kept) and without metadata. Its WebP and AVIF thumbnails are
animated too, each frame resized. These functions run in a pool process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator

from PIL import Image

from look.imaging.formats import ENCODINGS
from look.imaging.preflight import ANIMATION_MAX_FRAMES

log = logging.getLogger(__name__)

# The formats whose files can hold more than one frame, as Pillow names them.
ANIMATED_FORMATS = frozenset({'GIF', 'PNG', 'WEBP'})
# The thumbnail formats that animate; JPEG thumbnails are the first frame.
# NOTE: AVIF too: an AVIF sequence of a 480x270 GIF of 60 frames encodes in
#   0.20 s here (26 ns a pixel of frames, at the speed of still AVIF
#   thumbnails), a quarter of the WebP's 0.71 s, in 15 KB to its 335 KB.
ANIMATED_THUMBNAIL_FORMATS = frozenset({'webp', 'avif'})

# EXIF orientations and the transpositions that turn a frame upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# The flag of an extended WebP header that says some frame is transparent.
_VP8X_ALPHA = 0x10


@dataclasses.dataclass(frozen=True)
class Animation:
    """What the index keeps of an animation: its frames and how long one play lasts."""

    frames: int
    duration_ms: int


def is_animation(image: Image.Image) -> bool:
    """Return whether an opened upload is an animation look keeps as one."""
    if image.format not in ANIMATED_FORMATS:
        return False
    try:
        return bool(getattr(image, 'is_animated', False))
    except Exception:  # a second frame cut off in its header: a still image
        return False


def save_animation(
    image: Image.Image, path: str, to_srgb: Callable[[Image.Image], Image.Image]
) -> Animation | None:
    """Write every frame of the opened animation ``image`` to ``path`` as an animated WebP.

    ``to_srgb`` turns a frame (RGBA) into sRGB. A file cut off mid-way keeps
    the frames before the cut, as a browser shows them; with fewer than two,
    it is no animation (None). The file is removed if anything fails, so a
    refused upload leaves nothing behind.
    """
    orientation = image.getexif().get(0x0112, 1)
    transpose = _UPRIGHT.get(orientation)
    # NOTE: a GIF without a looping extension plays once; WebP says so with 1.
    loop = int(image.info.get('loop', 1)) if image.format == 'GIF' else image.info.get('loop', 0)

    def frames() -> Iterator[tuple[Image.Image, int]]:
        # NOTE: frame by frame to the end, not up to n_frames: Pillow counts
        #   a GIF's frames by reading them all, and a cut-off one stops it.
        for index in range(ANIMATION_MAX_FRAMES):  # preflight refused more
            try:
                image.seek(index)
                frame = to_srgb(image.convert('RGBA'))
            except EOFError:
                return
            except MemoryError:
                raise
            except Exception as ex:  # whatever a decoder says of a cut-off frame
                if index == 0:
                    raise
                log.info('an animation is cut off at frame %d: %s', index + 1, ex)
                return
            if transpose is not None:
                frame = frame.transpose(transpose)
            yield frame, round(image.info.get('duration') or 0)

    try:
        animation = _write_webp(frames(), path, loop)
        if animation.frames < 2:
            os.unlink(path)
            return None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        image.seek(0)
    return animation


def _write_webp(frames: Iterator[tuple[Image.Image, int]], path: str, loop: int) -> Animation:
    """Encode frames, one at a time, into an animated WebP at ``path``."""
    data, animation = encode_webp(frames, loop)
    with open(path, 'wb') as out:
        out.write(data)
    return animation


def encode_webp(frames: Iterator[tuple[Image.Image, int]], loop: int) -> tuple[bytes, Animation]:
    """Return ``(frame, duration_ms)`` pairs encoded as an animated WebP, and what it holds.

    NOTE: Pillow's save_all keeps every appended frame in memory at once
      (100 million pixels of frames would be 400 MB of RGBA); its encoder,
      fed here a frame at a time, keeps only the few it compares.
    """
    from PIL import _webp  # the encoder behind Pillow's own save_all

    params = ENCODINGS['webp']
    encoder = None
    timestamp = count = 0
    transparent = False
    for frame, duration in frames:
        if encoder is None:
            # Transparent black behind the first frame, as browsers show a GIF.
            encoder = _webp.WebPAnimEncoder(frame.size, 0, loop, False, 3, 5, False, False)
        encoder.add(frame.getim(), timestamp, False, params['quality'], 100, params['method'])
        transparent = transparent or (
            frame.mode == 'RGBA' and frame.getchannel('A').getextrema()[0] < 255
        )
        timestamp += duration
        count += 1
    if encoder is None:
        raise ValueError('an animation has frames')
    encoder.add(None, timestamp, False, params['quality'], 100, 0)
    data = encoder.assemble(b'', b'', b'')
    if data is None:
        raise OSError('the WebP encoder returned nothing')
    data = bytearray(data)
    if transparent and data[12:16] == b'VP8X':
        # NOTE: libwebp leaves out of its frames what the transparent canvas
        #   shows anyway, and then its header's alpha flag, so decoders that
        #   go by the flag (Pillow) drop the transparency: it is set here.
        data[20] |= _VP8X_ALPHA
    return bytes(data), Animation(count, timestamp)


def encode_avif(frames: Iterator[tuple[Image.Image, int]]) -> bytes:
    """Return ``(frame, duration_ms)`` pairs encoded as an AVIF image sequence.

    NOTE: as encode_webp, a frame at a time; Pillow's own save_all reads
      every frame twice and keeps them all.
    """
    from PIL import _avif

    params = ENCODINGS['avif']
    encoder = None
    for frame, duration in frames:
        if encoder is None:
            encoder = _avif.AvifEncoder(
                frame.size,
                params['subsampling'],
                params['quality'],
                params['speed'],
                params['max_threads'],
                'auto',
                'full',
                0,
                0,
                False,
                True,
                b'',
                b'',
                1,
                b'',
                None,
            )
        encoder.add(frame.tobytes('raw', frame.mode), duration, frame.size, frame.mode, False)
    if encoder is None:
        raise ValueError('an animation has frames')
    data = encoder.finish()
    if data is None:
        raise OSError('the AVIF encoder returned nothing')
    return bytes(data)


def render_animation(source: str, size: tuple[int, int], format: str) -> bytes:
    """Return the stored animated WebP at ``source`` with every frame resized to ``size``.

    As ``format``, WebP or AVIF, with the same frames and durations.
    """
    Image.MAX_IMAGE_PIXELS = None  # stored animations passed the limits of their day
    with Image.open(source, formats=('WEBP',)) as image:
        loop = image.info.get('loop', 0)

        def frames() -> Iterator[tuple[Image.Image, int]]:
            for index in range(image.n_frames):
                image.seek(index)
                frame = image.convert('RGBA')
                # NOTE: reduce() first (a box filter, in C) to near the size, as
                #   thumbnail() does, then Lanczos the rest of the way.
                factor = min(frame.width // size[0], frame.height // size[1]) // 2
                if factor > 1:
                    frame = frame.reduce(factor)
                yield (
                    frame.resize(size, Image.Resampling.LANCZOS),
                    round(image.info.get('duration') or 0),
                )

        if format == 'webp':
            return encode_webp(frames(), loop)[0]
        if format == 'avif':
            return encode_avif(frames())
    raise ValueError(f'{format!r} thumbnails are not animated')


def stored_animation(path: str) -> tuple[int, int]:
    """Return the frames of a stored animated WebP and how long one play lasts, in ms.

    For a check's restore of an animation the index no longer lists.
    """
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path, formats=('WEBP',)) as image:
        duration = 0
        for index in range(image.n_frames):
            image.seek(index)
            image.load()  # a frame's duration is known once it is decoded
            duration += round(image.info.get('duration') or 0)
        return image.n_frames, duration
