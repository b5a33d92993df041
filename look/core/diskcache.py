"""A bounded cache of files on local disk: what a host keeps because it was costly to get.

Files are written once under a name, to a temp name first, then renamed,
and read by any process of the host; least recently used files go first
once the files here take more than ``max_bytes``. Originals fetched from an
object store (``look.core.imagestore.originals``) and thumbnails too large
for Redis are kept this way.

Layout of ``directory``::

    <name>              a kept file; its modification time is its last use
    .<random>.tmp       one being written (locked by its writer)
    .trim.lock          flock(2) target: one process trims at a time

A reader holds a shared flock on the file it reads; a trim takes an
exclusive one, without waiting, before it removes a file, so a file is
never removed under a render that was given its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import IO

from look.core.files import fsync_directory
from look.core.spool import SpoolFile, remove_abandoned

log = logging.getLogger(__name__)

# NOTE: a trim goes down to this much below max_bytes, so the next ones are
#   not due at once; and the files may exceed max_bytes by about this much
#   per process until one of them looks.
TRIM_SLACK = 1 / 16
# A kept file's name: no path, never hidden (temp files and the lock are).
_NAME = re.compile(r'[0-9a-z][0-9a-z._-]*\Z')


class DiskCache:
    """Files kept on local disk by name, up to ``max_bytes`` (0 keeps none)."""

    def __init__(self, directory: pathlib.Path, max_bytes: int) -> None:
        self.directory = pathlib.Path(directory)
        self.max_bytes = max_bytes
        # What this process last found here, and has added since: a trim
        # reads the whole directory, so it runs only when these say it may
        # be over, or once every TRIM_SLACK of the size (other processes add too).
        self._found: int | None = None
        self._added = 0

    def open(self) -> None:
        """Create the directory and remove what crashed writers left in it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.directory)

    def path(self, name: str) -> str:
        """Return where the file ``name`` is kept; the name must be one (no path, not hidden)."""
        if not _NAME.match(name):
            raise ValueError(f'not a file name for {self.directory}: {name!r}')
        return os.path.join(self.directory, name)

    # -- reading ----------------------------------------------------------

    def open_file(self, key: str) -> IO[bytes] | None:
        """Open a kept file for reading, or return None if it is not here."""
        if not self.max_bytes:
            return None
        try:
            stream = open(self.path(key), 'rb')  # noqa: SIM115
        except FileNotFoundError:
            return None
        _touch(stream.fileno())
        return stream

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[str | None]:
        """Give the path of a kept file, kept for the block, or None if it is not here."""
        if not self.max_bytes:
            yield None
            return
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None  # being trimmed away right now
                return
            if not _same_file(fd, path):
                yield None  # trimmed between open and lock
                return
            _touch(fd)
            yield path
        finally:
            os.close(fd)

    # -- filling ----------------------------------------------------------

    @contextlib.contextmanager
    def fill(self, key: str, write: Callable[[IO[bytes]], None]) -> Iterator[str]:
        """Write a file with ``write(file)``, keep it, and give its path for the block.

        With no room kept (``max_bytes`` 0) the file is removed after the block.
        """
        final = self.path(key)
        spooled = SpoolFile(self.directory / f'.{os.urandom(12).hex()}.tmp')
        kept = False
        try:
            write(spooled.file)
            spooled.file.flush()
            if not self.max_bytes:
                yield str(spooled.path)
                return
            # NOTE: shared before it has its name, so no trim ever sees it unlocked.
            fcntl.flock(spooled.file.fileno(), fcntl.LOCK_SH)
            os.rename(spooled.path, final)
            kept = True
            self._kept(os.fstat(spooled.file.fileno()).st_size)
            yield final
        finally:
            if kept:
                with contextlib.suppress(OSError):
                    spooled.file.close()
            else:
                spooled.close()

    def put(self, key: str, data: bytes) -> bool:
        """Keep ``data`` under ``key``, durably (a file whose name is seen is whole).

        Return whether it was kept: a disk that refuses the write (full,
        read-only) keeps nothing, and says so in the log.
        """
        if not self.max_bytes:
            return False
        spooled = None
        try:
            spooled = SpoolFile(self.directory / f'.{os.urandom(12).hex()}.tmp')
            spooled.file.write(data)
            spooled.file.flush()
            os.fsync(spooled.file.fileno())
            os.rename(spooled.path, self.path(key))
            fsync_directory(self.directory)
        except OSError as ex:
            log.warning('could not keep %s in %s: %s', key, self.directory, ex)
            if spooled is not None:
                spooled.close()
            return False
        with contextlib.suppress(OSError):
            spooled.file.close()
        self._kept(len(data))
        return True

    def discard(self, key: str) -> None:
        """Forget a kept file (what it holds is deleted)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            os.unlink(self.path(key))

    def discard_starting(self, prefix: str) -> None:
        """Forget every kept file whose name starts with ``prefix`` (an image's, deleted)."""
        for path, _, _ in self._entries():
            if os.path.basename(path).startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    # -- room -------------------------------------------------------------

    def size(self) -> int:
        """Return how many bytes the kept files take."""
        return sum(size for _, _, size in self._entries())

    def _kept(self, size: int) -> None:
        """Note ``size`` more bytes kept here; trim if the files may now be too many."""
        self._added += size
        if (
            self._found is None
            or self._found + self._added > self.max_bytes
            or self._added > self.max_bytes * TRIM_SLACK
        ):
            self.trim()

    def trim(self) -> None:
        """Remove the least recently used files once they take more than ``max_bytes``.

        They go until TRIM_SLACK below it, but never one a render is reading.
        """
        entries = self._entries()
        total = sum(size for _, _, size in entries)
        self._found, self._added = total, 0
        if total <= self.max_bytes:
            return
        goal = self.max_bytes * (1 - TRIM_SLACK)
        lock_fd = os.open(self.directory / '.trim.lock', os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is trimming
            for path, _, size in sorted(entries, key=lambda entry: entry[1]):
                if total <= goal:
                    break
                if _remove_unless_read(path):
                    total -= size
            self._found = total
        finally:
            os.close(lock_fd)

    def _entries(self) -> list[tuple[str, float, int]]:
        found = []
        try:
            scan = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in scan:
            if not entry.name.startswith('.'):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    found.append((entry.path, stat.st_mtime, stat.st_size))
        return found


def _touch(fd: int) -> None:
    """Mark a kept file as used now (its modification time orders the trim)."""
    with contextlib.suppress(OSError):
        os.utime(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _remove_unless_read(path: str) -> bool:
    """Remove a kept file unless a reader holds it; return whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _same_file(fd, path):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)
