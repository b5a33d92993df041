"""A bounded cache of originals on local disk, for a host whose images live elsewhere.

A render reads its original from a local file (the pool is given a path);
with images in an object store, that file is fetched once and kept here,
so the other sizes and formats of the same image, on any worker of this
host, read it without fetching it again. Least recently used files go
first once the files here take more than ``max_bytes``.

Layout of ``directory``::

    <id>.jpeg           a cached original; its modification time is its last use
    .<random>.tmp       one being fetched (locked by its writer)
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
from collections.abc import Callable, Iterator
from typing import IO, Protocol

from look.core.ids import is_valid_id
from look.core.spool import SpoolFile, remove_abandoned

log = logging.getLogger(__name__)

_SUFFIX = '.jpeg'
# NOTE: a trim goes down to this much below max_bytes, so the next ones are
#   not due at once; and the originals may exceed max_bytes by about this
#   much per process until one of them looks.
TRIM_SLACK = 1 / 16


class OriginalsCache:
    """Originals kept on local disk, up to ``max_bytes`` (0 keeps none)."""

    def __init__(self, directory: pathlib.Path, max_bytes: int) -> None:
        self.directory = pathlib.Path(directory)
        self.max_bytes = max_bytes
        # What this process last found here, and has added since: a trim
        # reads the whole directory, so it runs only when these say it may
        # be over, or once every TRIM_SLACK of the size (other processes add too).
        self._found: int | None = None
        self._added = 0

    def open(self) -> None:
        """Create the directory and remove what crashed fetches left in it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.directory)

    def path(self, image_id: str) -> str:
        """Return where the original of ``image_id`` is kept; the id must be valid."""
        if not is_valid_id(image_id):
            raise ValueError(f'not an image id: {image_id!r}')
        return os.path.join(self.directory, f'{image_id}{_SUFFIX}')

    # -- reading ----------------------------------------------------------

    def open_file(self, image_id: str) -> IO[bytes] | None:
        """Open the cached original for reading, or return None if it is not here."""
        if not self.max_bytes:
            return None
        try:
            stream = open(self.path(image_id), 'rb')  # noqa: SIM115
        except FileNotFoundError:
            return None
        _touch(stream.fileno())
        return stream

    @contextlib.contextmanager
    def lease(self, image_id: str) -> Iterator[str | None]:
        """Give the path of the cached original, kept for the block, or None if not here."""
        if not self.max_bytes:
            yield None
            return
        path = self.path(image_id)
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
    def fill(self, image_id: str, write: Callable[[IO[bytes]], None]) -> Iterator[str]:
        """Write an original with ``write(file)``, keep it, and give its path for the block.

        With no room kept (``max_bytes`` 0) the file is removed after the block.
        """
        final = self.path(image_id)
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

    def keeping(self, image_id: str, stream: Readable, length: int) -> Readable:
        """Return ``stream`` as it is read, keeping a copy once it has been read to its end.

        A download that stops early (the client went away) keeps nothing.
        """
        if not self.max_bytes:
            return stream
        try:
            spooled = SpoolFile(self.directory / f'.{os.urandom(12).hex()}.tmp')
        except OSError as ex:
            log.warning('could not keep the original of %s: %s', image_id, ex)
            return stream
        return _Keeping(self, image_id, stream, length, spooled)

    def _keep(self, spooled: SpoolFile, image_id: str) -> None:
        """Give a finished spool file its name in the cache (a fetch that completed)."""
        spooled.file.flush()
        fcntl.flock(spooled.file.fileno(), fcntl.LOCK_SH)
        os.rename(spooled.path, self.path(image_id))
        size = os.fstat(spooled.file.fileno()).st_size
        with contextlib.suppress(OSError):
            spooled.file.close()
        self._kept(size)

    def add(self, image_id: str, source: str | os.PathLike[str]) -> None:
        """Keep a copy of an original that is on this disk already (a new upload): a link."""
        if not self.max_bytes:
            return
        temporary = self.directory / f'.{os.urandom(12).hex()}.tmp'
        try:
            os.link(source, temporary)
            os.rename(temporary, self.path(image_id))
            size = os.stat(self.path(image_id)).st_size
        except OSError as ex:
            log.warning(
                'could not keep the original of %s in %s: %s', image_id, self.directory, ex
            )
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        self._kept(size)

    def discard(self, image_id: str) -> None:
        """Forget the cached original of an image (deleted)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            os.unlink(self.path(image_id))

    # -- room -------------------------------------------------------------

    def size(self) -> int:
        """Return how many bytes the cached originals take."""
        return sum(size for _, _, size in self._entries())

    def _kept(self, size: int) -> None:
        """Note ``size`` more bytes kept here; trim if the originals may now be too many."""
        self._added += size
        if (
            self._found is None
            or self._found + self._added > self.max_bytes
            or self._added > self.max_bytes * TRIM_SLACK
        ):
            self.trim()

    def trim(self) -> None:
        """Remove the least recently used originals once they take more than ``max_bytes``.

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
            if entry.name.endswith(_SUFFIX) and not entry.name.startswith('.'):
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    found.append((entry.path, stat.st_mtime, stat.st_size))
        return found


class Readable(Protocol):
    """What a download is read from: ``read(size)`` and ``close()``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _Keeping:
    """A stream that writes what is read from it to a spool file, kept if read to its end."""

    def __init__(
        self,
        cache: OriginalsCache,
        image_id: str,
        stream: Readable,
        length: int,
        spooled: SpoolFile,
    ) -> None:
        self._cache = cache
        self._image_id = image_id
        self._stream = stream
        self._left = length
        self._spooled: SpoolFile | None = spooled

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        spooled = self._spooled
        if spooled is not None:
            try:
                spooled.file.write(data)
                self._left -= len(data)
                if not data or self._left <= 0:
                    self._spooled = None
                    if self._left == 0:
                        self._cache._keep(spooled, self._image_id)
                    else:
                        spooled.close()
            except OSError as ex:
                # NOTE: the download goes on; only the copy is given up.
                log.warning('could not keep the original of %s: %s', self._image_id, ex)
                self._spooled = None
                spooled.close()
        return data

    def close(self) -> None:
        spooled, self._spooled = self._spooled, None
        if spooled is not None:
            spooled.close()
        self._stream.close()


def _touch(fd: int) -> None:
    """Mark a cached original as used now (its modification time orders the trim)."""
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
    """Remove a cached original unless a render holds it; return whether it was removed."""
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
