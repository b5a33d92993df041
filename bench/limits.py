"""Pillow alone in a process pool: the most image work this machine can do.

Deliberately not look's functions: the fewest Pillow calls for look's bytes
(tests/test_bench.py pins them), so a ratio below 1 is look's overhead, not
other image work. They take file paths, as look does. Two steps are look's
own, as no other code does them: the checks any app taking uploads needs
before decoding (look.imaging.preflight), and the ThumbHash placeholder every
stored image is listed with (look.imaging.thumbhash, a port of the reference).
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from PIL import Image, ImageOps

from bench.rounds import Figure
from look.config import DEFAULT_MAX_PIXELS
from look.imaging import plugins, preflight, thumbhash
from look.imaging.formats import ENCODINGS
from look.imaging.pool import IMAGE_BLOCKS_CACHED, keep_freed_memory

QUALITY = 85  # look's default LOOK_JPEG_QUALITY


class Converted(NamedTuple):
    """An upload converted: its JPEG's path and size, and its placeholder (ThumbHash, colour)."""

    path: str
    size: tuple[int, int]
    placeholder: tuple[str, str]


def render(
    source: str, size: tuple[int, int], format: str = 'jpeg', quality: int = QUALITY
) -> bytes:
    """Return the stored JPEG at ``source`` as a ``size`` thumbnail: draft, resize, encode.

    A draft a row or a column over the size is the decoder rounding up where
    halving rounds down: cropping it gives look's result.
    """
    out = io.BytesIO()
    with Image.open(source) as image:
        image.draft('RGB', size)
        over = (image.width - size[0], image.height - size[1])
        if over == (0, 0):
            thumbnail = image
        elif min(over) >= 0 and max(over) <= 1:
            thumbnail = image.crop((0, 0, *size))
        else:
            thumbnail = image.resize(size, Image.Resampling.LANCZOS)
        # exif=b'': pillow-jxl's writer would copy the JPEG's own (look's render does the same)
        thumbnail.save(
            out, format.upper(), exif=b'', **ENCODINGS.get(format, {'quality': quality})
        )
    return out.getvalue()


def convert(source: str, target_dir: str | None, quality: int = QUALITY) -> Converted:
    """Store an upload as an upright RGB JPEG (``reencode``), with its placeholder.

    The placeholder is made from the decoded image, as look makes it.
    """
    path, rgb = _reencode(source, target_dir, quality)
    return Converted(path, rgb.size, thumbhash.placeholder(rgb))


def reencode(source: str, target_dir: str | None, quality: int = QUALITY) -> Converted:
    """Store an upload as an upright RGB JPEG: check, open, exif_transpose, convert, save.

    The JPEG goes to a new file in ``target_dir``, or over ``source`` itself
    when that is None (as an app converting the file it received would). The
    caller makes it durable (``fsync``), as look's web worker does. No
    placeholder: the limit of a JPEG look keeps as made, which is what look
    did with it before, is held to that work alone (look's side makes its
    placeholder from a 1/8 draft all the same).
    """
    path, rgb = _reencode(source, target_dir, quality)
    return Converted(path, rgb.size, ('', ''))


def _reencode(source: str, target_dir: str | None, quality: int) -> tuple[str, Image.Image]:
    # The checks any app taking uploads needs before decoding: look's own.
    preflight.check_container(source, DEFAULT_MAX_PIXELS)
    with Image.open(source) as image:
        preflight.check_pixels_per_byte(image.format, image.size, os.path.getsize(source))
        # In place and only when needed: no copy that Pillow can do without.
        ImageOps.exif_transpose(image, in_place=True)
        rgb = image if image.mode == 'RGB' else image.convert('RGB')
        rgb.load()
    path = new_path(target_dir) if target_dir else source
    with open(path, 'xb' if target_dir else 'wb') as out:
        rgb.save(out, 'JPEG', quality=quality)
    return path, rgb


def convert_animation(source: str, target_dir: str | None, quality: int = QUALITY) -> Converted:
    """Store an animated GIF as look does: its first frame as a JPEG, its frames as a WebP.

    The WebP goes beside the JPEG (``<jpeg>.webp``), with every frame as
    RGBA, its duration and the loop count, by Pillow's own save_all. The
    placeholder is the first frame's.
    """
    preflight.check_container(source, DEFAULT_MAX_PIXELS)
    preflight.check_animation(source, preflight.DEFAULT_MAX_ANIMATION_PIXELS)
    path = new_path(target_dir) if target_dir else source
    with Image.open(source) as image:
        frames, durations = [], []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(image.convert('RGBA'))
            durations.append(image.info.get('duration', 0))
        loop = image.info.get('loop', 1)
    out = io.BytesIO()
    frames[0].save(
        out,
        'WEBP',
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=loop,
        background=(0, 0, 0, 0),
        **ENCODINGS['webp'],
    )
    rgb = frames[0].convert('RGB')
    with open(path, 'xb' if target_dir else 'wb') as jpeg:
        rgb.save(jpeg, 'JPEG', quality=quality)
    with open(f'{path}.webp', 'wb') as webp:
        webp.write(out.getvalue())
    return Converted(path, rgb.size, thumbhash.placeholder(rgb))


# The Pillow limit of each kind of upload, by name: Pillow alone runs it in
# the benchmark's pool, the bare app in its worker's (POST /converted/{name}).
UPLOADS: dict[str, Callable[[str, str | None], Converted]] = {
    'convert': convert,
    'animation': convert_animation,
}


def fsync(converted: Converted) -> None:
    """Make the JPEG ``convert`` wrote durable, as look does before it answers an upload.

    An animation's WebP beside it too, as look stores both.
    """
    for path in (converted.path, f'{converted.path}.webp'):
        try:
            with open(path, 'rb', buffering=0) as file:
                os.fsync(file.fileno())
        except FileNotFoundError:
            continue


def new_path(directory: str) -> str:
    """Return a name no other process or thread here has used in ``directory``."""
    # NOTE: a new file each time, kept as look keeps each upload. Deleting it
    #   here would cost the next creations: ext4 without a journal skips
    #   inodes freed in the last minute, one by one.
    name = f'{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.jpeg'
    return os.path.join(directory, name)


def _init_process() -> None:
    # Ctrl-C reaches the whole foreground group; the benchmark stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As fast as Pillow can: freed image blocks are kept for the next image
    # (PILLOW_BLOCKS_MAX), so renders do not fault in fresh memory each time.
    Image.core.set_blocks_max(IMAGE_BLOCKS_CACHED)
    keep_freed_memory()  # and freed buffers, as look's pool does
    plugins.register()  # HEIC uploads and JPEG XL thumbnails, as in look's pool


def start_pool(processes: int | None = None) -> concurrent.futures.ProcessPoolExecutor:
    """Start the same kind of pool look uses: spawn, one process per core unless told."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=processes or os.cpu_count() or 1,
        mp_context=multiprocessing.get_context('spawn'),
        initializer=_init_process,
    )


def pool_throughput(
    pool: concurrent.futures.ProcessPoolExecutor,
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    in_flight: int,
    seconds: float,
    finish: Callable[[Any], object] | None = None,
) -> Figure:
    """Keep ``in_flight`` jobs queued for ``seconds``; return finished jobs per second.

    ``finish`` is called here with each job's result while the pool goes on,
    as look's web worker finishes an upload the pool converted.
    """
    pending: set[concurrent.futures.Future[Any]] = set()
    done = submitted = 0
    start = time.perf_counter()
    while True:
        while time.perf_counter() < start + seconds and len(pending) < in_flight:
            pending.add(pool.submit(function, *jobs[submitted % len(jobs)]))
            submitted += 1
        if not pending:
            break
        finished, pending = concurrent.futures.wait(pending, return_when='FIRST_COMPLETED')
        for future in finished:
            result = future.result()  # raise what a job raised
            if finish is not None:
                finish(result)
            done += 1
    return Figure(done / (time.perf_counter() - start), done)
