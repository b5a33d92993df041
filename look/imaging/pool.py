"""Pillow work on untrusted images, run in a process pool, and the object that owns it.

The top-level functions here run in pool processes: they take file paths
(not pickled image bytes), so a decoder crash or a memory blow-up kills a
disposable pool process, never the web worker.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import math
import multiprocessing
import os
import pathlib
import resource
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from PIL import Image

from look.core.lazy import PerProcess
from look.errors import (
    ThumbnailerBusy,
    ThumbnailerUnavailable,
)
from look.imaging.animation import ANIMATED_THUMBNAIL_FORMATS, render_animation
from look.imaging.convert import Converted, convert_upload
from look.imaging.formats import THUMBNAIL_FORMATS
from look.imaging.preflight import DEFAULT_MAX_ANIMATION_PIXELS, may_be_animated
from look.imaging.render import render_thumbnail

log = logging.getLogger(__name__)

# Freed image blocks a pool process keeps for the next image (Pillow's
# PILLOW_BLOCKS_MAX, which wins when set). Without them, a 960x540 render that
# crops or resizes maps fresh memory for its second image: ~1000 page faults
# and 1.7x the CPU.
IMAGE_BLOCKS_CACHED = 4
# glibc's malloc returns a freed buffer larger than its mmap threshold to the
# kernel at once, and so a heap whose free top is over its trim threshold:
# the next image faults its pages in afresh. Both thresholds start low and
# rise only once such a buffer is freed, so a pool process's history set the
# cost: a 960x540 JPEG XL took 32 ms of CPU in a fresh process (5 200 page
# faults) and 16 ms in one that had rendered other formats first. Set, they
# stay: buffers below 16 MiB are kept for the next image (Pillow's image
# blocks, 16 MiB, are still mapped and unmapped, bar those it keeps itself),
# and up to 32 MiB of free heap.
MALLOC_MMAP_THRESHOLD = 16 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
# NOTE: what a task costs grows with its size: a render with the pixels it
#   makes (decoding is drafted down near them), a conversion with the bytes
#   of the upload. Each kind of task also costs about this much besides.
RENDER_OVERHEAD_PIXELS = 100_000
UPLOAD_OVERHEAD_BYTES = 64 * 1024
# Seconds per pixel made (renders) or per byte received (uploads) before a
# pool has finished a task of that kind, measured here: a 960x540 render of
# a photo takes 3 ms as JPEG, 16 ms as AVIF, 28 ms as WebP; the conversion of
# a camera JPEG 25-40 ns a byte (0.2 s for 24 megapixels), of a small PNG
# 3 ms; a JPEG XL render 15 ms at 960x540. What tasks take here then
# replaces them.
# NOTE: an animation converts at 0.6-1 us a byte of GIF (a 480x270 GIF of
#   60 frames, 761 KB, in 0.74 s), 5 us for flat colours: 25 times a JPEG's,
#   so its uploads learn a cost of their own ('animation').
FIRST_COSTS = {
    'jpeg': 6e-9,
    'webp': 50e-9,
    'avif': 35e-9,
    'jxl': 30e-9,
    'upload': 40e-9,
    'animation': 1e-6,
}
# How much each finished task moves the estimate of its kind.
COST_WEIGHT = 0.25


# -- run in the pool processes -------------------------------------------------


def memory_limit(max_pixels: int) -> int:
    """Return the address space a pool process may use, in bytes.

    Room for the interpreter and a few full-size copies of the largest image
    allowed: beyond it a decoder gets MemoryError (a 413) instead of waking
    the kernel's OOM killer, which might pick a web worker.
    """
    return 1024 * 1024 * 1024 + 24 * max_pixels


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed buffers for the next image, unless the operator set it.

    Elsewhere (musl, macOS) malloc is left as it is.
    """
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    for setting in ('mmap_threshold', 'trim_threshold'):
        if f'glibc.malloc.{setting}' in tunables or f'MALLOC_{setting.upper()}_' in os.environ:
            return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)


def _init_pool_process(parent_pid: int, address_space: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the web worker
    # decides when the pool stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or address_space < hard:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, hard))
    if 'PILLOW_BLOCKS_MAX' not in os.environ:  # Pillow applied it at import
        Image.core.set_blocks_max(IMAGE_BLOCKS_CACHED)
    keep_freed_memory()
    # NOTE: before numpy loads (on the first placeholder): a pool process has
    #   a core's share, and a placeholder's products are too small to split.
    os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # A web worker killed with SIGKILL cannot shut its pool down; its pool
    # processes notice they were orphaned and leave.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


# -- in the web worker ---------------------------------------------------------

_thumbnailers: weakref.WeakSet[Thumbnailer] = weakref.WeakSet()


class Observer(Protocol):
    """What a thumbnailer reports as it works (look.web.metrics counts it)."""

    def render_done(self, format: str, seconds: float) -> None:
        """A render finished."""

    def task_refused(self, reason: str) -> None:
        """A task was answered 503: ``busy``, ``timeout``, ``crashed`` or ``restarted``."""

    def pool_restarted(self) -> None:
        """The pool was rebuilt after a crash or an overrun."""

    def tasks_changed(self, delta: int) -> None:
        """Tasks in flight went up or down by ``delta``."""


class _Unobserved:
    """The observer of a thumbnailer nobody watches."""

    def render_done(self, format: str, seconds: float) -> None:
        pass

    def task_refused(self, reason: str) -> None:
        pass

    def pool_restarted(self) -> None:
        pass

    def tasks_changed(self, delta: int) -> None:
        pass


class Backlog:
    """The work queued on a pool, in seconds, from what each kind of task took lately.

    A task is admitted when the work ahead of it is expected to be done within
    ``max_wait`` seconds, so a burst of small tasks queues, and a queue of
    large ones turns the next task away with the time it would have waited.
    """

    def __init__(self, *, processes: int, max_wait: float) -> None:
        self.processes = processes
        self.max_wait = max_wait
        self.queued = 0.0  # expected seconds of the tasks admitted and not done
        self.costs = dict(FIRST_COSTS)  # seconds per unit, by kind

    def expected_wait(self) -> float:
        """Return how long a task admitted now is expected to wait for a process."""
        return self.queued / max(self.processes, 1)

    def admit(self, kind: str, units: float) -> float:
        """Count a task in and return its expected seconds; raise ThumbnailerBusy if it must wait.

        The caller holds the thumbnailer's lock.
        """
        wait = self.expected_wait()
        if wait > self.max_wait:
            raise ThumbnailerBusy(
                f'The image processes here have about {wait:.1f}s of work queued, more than '
                f'the {self.max_wait:g}s a request may wait; try again in {retry_after(wait)}s.',
                retry_after=retry_after(wait),
            )
        expected = self.costs[kind] * units
        self.queued += expected
        return expected

    def done(self, expected: float) -> None:
        """Count a task out (the caller holds the lock)."""
        self.queued = max(0.0, self.queued - expected)

    def learn(self, kind: str, units: float, seconds: float) -> None:
        """Move the cost of ``kind`` towards what a task of ``units`` just took."""
        cost = self.costs[kind]
        self.costs[kind] = cost + COST_WEIGHT * (seconds / units - cost)


def retry_after(seconds: float) -> int:
    """Return whole seconds to wait, at least one, rounded up."""
    return max(1, math.ceil(seconds))


def render_units(size: tuple[int, int], frames: int = 1) -> int:
    """Return what a render of ``size`` weighs in the backlog (each frame of an animation)."""
    return max(frames, 1) * size[0] * size[1] + RENDER_OVERHEAD_PIXELS


def upload_units(length: int) -> int:
    """Return what the conversion of an upload of ``length`` bytes weighs in the backlog."""
    return length + UPLOAD_OVERHEAD_BYTES


def _timed(function: Callable[..., object], *args: object) -> tuple[float, object]:
    """Run ``function`` in a pool process; return how long it took there, and its result."""
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


class Thumbnailer:
    """Owns the process pool of one web worker; created lazily after the fork."""

    def __init__(
        self,
        *,
        processes: int,
        max_pixels: int,
        quality: int,
        render_timeout: float,
        max_animation_pixels: int = DEFAULT_MAX_ANIMATION_PIXELS,
        max_queue_seconds: float = 2.0,
        # NOTE: a process start costs ~0.2 s of CPU; recycling every 500 tasks
        #   added ~0.35 ms to every small render. 10 000 still bounds Pillow's
        #   memory growth over days.
        max_tasks_per_child: int = 10_000,
        observer: Observer | None = None,
        write_back: bool = False,
    ) -> None:
        """``write_back``: uploads are made durable in place on this disk (convert_upload)."""
        self.processes = processes
        self.observer: Observer = observer if observer is not None else _Unobserved()
        self.max_pixels = max_pixels
        self.max_animation_pixels = max_animation_pixels
        self.quality = quality
        self.render_timeout = render_timeout
        self.max_tasks_per_child = max_tasks_per_child
        self.write_back = write_back
        self.backlog = Backlog(processes=processes, max_wait=max_queue_seconds)
        self._pool = PerProcess(self._new_pool)
        self._lock = threading.Lock()
        self._in_flight = 0
        # This pool's tasks not done yet, in the order the pool takes them.
        self._unfinished: dict[concurrent.futures.Future[object], None] = {}
        _thumbnailers.add(self)

    def convert_upload(
        self, path: pathlib.Path, animation_path: pathlib.Path | None = None
    ) -> Converted:
        """Replace an uploaded file with the JPEG to store; return what the index keeps of it.

        With an ``animation_path``, an animation is written there too.
        """
        # PERF: its size and head through one descriptor, without a file
        #   object: a stat and the objects of open() fewer per upload.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            units = upload_units(os.fstat(fd).st_size)
            head = os.pread(fd, 64, 0) if animation_path is not None else b''
        finally:
            os.close(fd)
        kind = 'animation' if head and may_be_animated(head) else 'upload'
        converted: Converted = self._run(
            convert_upload,
            str(path),
            self.max_pixels,
            self.quality,
            None if animation_path is None else str(animation_path),
            self.max_animation_pixels,
            self.write_back,
            kind=(kind, units),
        )
        return converted

    def render(self, source: str, size: tuple[int, int], format: str, frames: int = 0) -> bytes:
        """Render a thumbnail of a stored image as ``format`` (one of THUMBNAIL_FORMATS).

        ``source`` is the stored JPEG, or for ``frames`` > 1 in a format that
        animates, the stored animated WebP.
        """
        if format not in THUMBNAIL_FORMATS:
            raise ValueError(f'no encoder for {format!r} thumbnails')
        started = time.perf_counter()
        if frames > 1 and format in ANIMATED_THUMBNAIL_FORMATS:
            task: tuple[object, ...] = (render_animation, str(source), size, format)
        else:
            task, frames = (render_thumbnail, str(source), size, format, self.quality), 1
        data: bytes = self._run(*task, kind=(format, render_units(size, frames)))
        self.observer.render_done(format, time.perf_counter() - started)
        return data

    def check(self, timeout: float = 5.0) -> str | None:
        """Return None if the pool runs a task now, else why not.

        A busy pool counts as healthy: a health check should not wait
        behind renders or add to them.
        """
        if self._in_flight >= self.processes:
            return None
        try:
            self._run(os.getpid, timeout=timeout)
        except ThumbnailerUnavailable as ex:
            return ex.description
        except OSError as ex:
            return f'the pool could not start: {ex}'
        return None

    def start(self) -> None:
        """Start the pool's processes now rather than on the first request."""
        # A ProcessPoolExecutor spawns its processes on submit(), not before.
        pool = self._executor()
        concurrent.futures.wait([pool.submit(os.getpid) for _ in range(self.processes)])

    def resize(self, processes: int) -> None:
        """Make the next pool ``processes`` large: one running now keeps its size."""
        with self._lock:
            self.processes = processes
            self.backlog.processes = processes

    def close(self) -> None:
        """Stop the pool and its processes."""
        pool = self._pool.take()
        if pool is not None:
            _stop(pool)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            return self._pool.get()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        """Make this process's pool (the caller holds the lock)."""
        self._unfinished = {}
        # NOTE: 'spawn' because max_tasks_per_child needs it, and it
        #   keeps the web worker's sockets and locks out of the pool.
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context('spawn'),
            initializer=_init_pool_process,
            initargs=(os.getpid(), memory_limit(self.max_pixels)),
            max_tasks_per_child=self.max_tasks_per_child,
        )

    def _submit(
        self,
        function: Callable[..., object],
        args: tuple[object, ...],
        kind: tuple[str, float] | None,
    ) -> tuple[
        concurrent.futures.ProcessPoolExecutor,
        concurrent.futures.Future[object],
        dict[concurrent.futures.Future[object], None],
        float,
    ]:
        """Admit a task of ``kind`` and submit it; return its pool, future, unfinished, expected.

        A task without a kind is always admitted; ThumbnailerBusy if it must wait too long.
        """
        # NOTE: submitted and recorded under one lock, so _unfinished keeps
        #   the order in which the pool takes its tasks. PERF: admitted and
        #   counted in under that lock too, not a lock of their own.
        broken = None
        with self._lock:
            expected = 0.0
            if kind is not None:
                try:
                    expected = self.backlog.admit(*kind)
                except ThumbnailerBusy:
                    self.observer.task_refused('busy')
                    raise
            self._in_flight += 1
            try:
                pool = self._pool.get()
                try:
                    future = pool.submit(function, *args)
                except BrokenProcessPool:
                    broken = pool
                    self._pool.drop(pool)
                    pool = self._pool.get()
                    future = pool.submit(function, *args)
            except BaseException:
                self._in_flight -= 1
                self.backlog.done(expected)
                raise
            unfinished = self._unfinished
            unfinished[future] = None
        if broken is not None:
            _stop(broken)
        return pool, future, unfinished, expected

    def _discard(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        self._pool.drop(pool)
        self.observer.pool_restarted()
        _stop(pool)

    def _run(  # type: ignore[no-untyped-def]
        self,
        function,
        *args,
        kind: tuple[str, float] | None = None,
        timeout: float | None = None,
    ):
        """Run ``function(*args)`` in the pool and return its result.

        A task of a ``kind`` (its name and units) waits only where the
        backlog admits it (ThumbnailerBusy otherwise), and what it took
        teaches the backlog; one without (a health check) always runs.
        """
        limit = timeout or self.render_timeout
        pool, future, unfinished, expected = self._submit(_timed, (function, *args), kind)
        self.observer.tasks_changed(1)
        seconds = None
        try:
            try:
                seconds, result = self._result(future, unfinished, limit)  # type: ignore[misc]
            except concurrent.futures.CancelledError:
                # Still queued when another request's overrun restarted the pool.
                self.observer.task_refused('restarted')
                raise ThumbnailerUnavailable(
                    'The image processes were restarted; try again.'
                ) from None
            except BrokenProcessPool:
                log.error('an image process died; restarting the pool')
                self.observer.task_refused('crashed')
                self._discard(pool)
                raise ThumbnailerUnavailable(
                    'An image process stopped unexpectedly; try again.'
                ) from None
            except concurrent.futures.TimeoutError:
                log.error('an image took over %gs; restarting the pool', limit)
                self.observer.task_refused('timeout')
                self._discard(pool)
                raise ThumbnailerUnavailable(
                    f'The image took longer than {limit:g}s to process.'
                ) from None
            return result
        finally:
            # PERF: counted out, learnt from and forgotten under one lock,
            #   rather than three and a done callback.
            with self._lock:
                self._in_flight -= 1
                self.backlog.done(expected)
                if kind is not None and seconds is not None:
                    self.backlog.learn(*kind, seconds)
                unfinished.pop(future, None)
            self.observer.tasks_changed(-1)

    def _result(
        self,
        future: concurrent.futures.Future[object],
        unfinished: dict[concurrent.futures.Future[object], None],
        limit: float,
    ) -> object:
        """Return the task's result; raise TimeoutError once it has run ``limit`` seconds.

        Time queued behind other tasks does not count: a burst of uploads
        into a one-process pool is slow, not hung.
        """
        # NOTE: the pool takes tasks in order, so this one runs once fewer
        #   tasks than there are processes are ahead of it. That is checked
        #   every quarter of the limit (ProcessPoolExecutor says "running"
        #   as soon as a task is in its pipe, which can be two tasks early).
        started = None
        while True:
            if started is None and self._ahead(future, unfinished) < self.processes:
                started = time.monotonic()
            timeout = limit / 4 if started is None else started + limit - time.monotonic()
            try:
                return future.result(timeout=max(0.0, timeout))
            except concurrent.futures.TimeoutError:
                if started is not None and time.monotonic() >= started + limit:
                    raise

    def _ahead(
        self,
        future: concurrent.futures.Future[object],
        unfinished: dict[concurrent.futures.Future[object], None],
    ) -> int:
        """Return how many tasks not done yet the pool took before ``future``."""
        # PERF: fewer tasks than processes cannot put one in line: no copy.
        if len(unfinished) <= self.processes:
            return 0
        order = list(unfinished)  # a snapshot: other threads add and remove
        if future not in order:
            return 0
        # A task stays in ``unfinished`` until its own thread takes its result.
        return sum(not task.done() for task in order[: order.index(future)])


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    # NOTE: ProcessPoolExecutor cannot stop a busy process before Python 3.14
    #   (terminate_workers); a hung render has to be killed to be abandoned.
    processes = list((getattr(pool, '_processes', None) or {}).values())
    # The executor's own thread reaps these processes too. Until it is done, a
    # process it has reaped can still look alive, so it is waited for below.
    manager = getattr(pool, '_executor_manager_thread', None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
    if manager is not None:
        manager.join(timeout=2)


def resize_all(processes: int) -> None:
    """Size the next pool of every thumbnailer here (post_fork, for an app made before it)."""
    for thumbnailer in list(_thumbnailers):
        thumbnailer.resize(processes)


def close_all() -> None:
    """Stop every pool in this process (gunicorn's worker_exit hook)."""
    for thumbnailer in list(_thumbnailers):
        thumbnailer.close()


def start_all() -> None:
    """Start every pool in this process (gunicorn's post_worker_init hook)."""
    for thumbnailer in list(_thumbnailers):
        thumbnailer.start()
