"""Images on disk and the JSON-lines index that every worker process shares.

Layout of ``storage_path``::

    index.jsonl          one JSON object per line: {"op": "add", ...} or {"op": "delete", ...}
    index.lock           flock(2) target; serialises writers across processes
    images/<id>.jpeg     committed images
    images/.<random>.tmp files being written (uploads in progress)

The index is an append-only journal, so adding an image costs the same at
50 000 images as at none, and a crash can at worst leave a half-written last
line, which the next writer or start-up cuts off. Each process keeps an
in-memory view and reads only the bytes appended since its last look, so an
upload taken by one worker is visible to all the others on their next request.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import email.utils
import fcntl
import functools
import json
import logging
import os
import pathlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import IO

from look.errors import ImageNotFound, StorageError, refused_writes

log = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')
_TEMP_SUFFIX = '.tmp'
# NOTE: a temp file younger than this is never removed at start-up, even if
#   unlocked: it may belong to a worker that has created it but not yet locked it.
TEMP_GRACE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class StoredImage:
    """One committed image: its id, upload time (Unix seconds) and pixel size."""

    id: str
    modified: int
    size: tuple[int, int]

    @property
    def modified_http(self) -> str:
        """The upload time as an HTTP date, as Last-Modified and the JSON give it."""
        return _http_date(self.modified)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    # Formatting is most of the cost of a download's headers; images repeat.
    return email.utils.formatdate(seconds, usegmt=True)


class TempFile:
    """A file in the images directory, locked while it is being written.

    The lock tells start-up clean-up in other workers that the file is in use.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.file = os.fdopen(fd, 'r+b')

    def close(self) -> None:
        """Remove the temporary name and let go of the file (and its lock).

        After a commit the file lives on under its image name; otherwise what
        it held is being thrown away, so a failing flush is too.
        """
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.file.close()


def is_valid_id(image_id: str) -> bool:
    """Return whether ``image_id`` is a canonical lowercase UUID string."""
    return bool(_ID_PATTERN.match(image_id))


@contextlib.contextmanager
def _opened(path: pathlib.Path) -> Iterator[int | None]:
    """Open ``path`` read-only for the block; None if it is gone already."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _is_locked(fd: int) -> bool:
    """Return whether another open file holds the lock on ``fd``'s file (a writer is on it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def _added(image: StoredImage) -> dict[str, object]:
    """Return the index record that adds ``image``."""
    return {'op': 'add', 'id': image.id, 'modified': image.modified, 'size': [*image.size]}


def _deleted(image_id: str) -> dict[str, object]:
    """Return the index record that deletes ``image_id``."""
    return {'op': 'delete', 'id': image_id}


def _encoded(record: dict[str, object]) -> bytes:
    """Return ``record`` as one line of the index."""
    return json.dumps(record, separators=(',', ':')).encode() + b'\n'


def _fsync_directory(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Committed JPEGs plus the shared index: add, get, list, delete."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.images_dir = self.root / 'images'
        self.index_path = self.root / 'index.jsonl'
        self.lock_path = self.root / 'index.lock'
        self._images_prefix = f'{self.images_dir}{os.sep}'  # hot path: no pathlib

        # The in-memory view of the index, guarded by _view_lock (gthread workers).
        self._view_lock = threading.Lock()
        self._images: dict[str, StoredImage] = {}
        self._order: list[str] = []  # ids in commit order; may hold deleted ids
        self._order_seq: list[int] = []  # their sequence numbers, ascending
        # NOTE: every id ever committed keeps its number (about 150 bytes an
        #   id), so that a page cursor naming a deleted image still resumes
        #   where it was, in every worker.
        self._seq: dict[str, int] = {}
        self._offset = 0  # bytes of the index already applied to the view
        self._inode: int | None = None

    # -- start-up ---------------------------------------------------------

    def open(self) -> None:
        """Create the directories and bring the index and the disk into agreement.

        Safe to run in every worker at once: all repairs happen under the
        writers' lock, and files other workers are still writing are left alone.
        """
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.index_path.touch(exist_ok=True)
        self.lock_path.touch(exist_ok=True)
        with self._exclusive():
            self._cut_partial_tail()
            self._refresh()
            self._remove_abandoned_files()

    def _remove_abandoned_files(self) -> None:
        with self._view_lock:
            listed = set(self._images)
        on_disk = set()
        now = time.time()
        for entry in os.scandir(self.images_dir):
            name = entry.name
            if name.startswith('.') and name.endswith(_TEMP_SUFFIX):
                self._remove_temp_if_abandoned(pathlib.Path(entry.path), now)
            elif name.endswith('.jpeg') and is_valid_id(name[: -len('.jpeg')]):
                image_id = name[: -len('.jpeg')]
                on_disk.add(image_id)
                if image_id not in listed:
                    self._remove_unlisted_image(pathlib.Path(entry.path))
        for image_id in sorted(listed - on_disk):
            log.warning('index lists %s but its file is missing; dropping it', image_id)
            self._append(_deleted(image_id), undo=None)  # right whatever happens next
        self._refresh()

    @staticmethod
    def _remove_unlisted_image(path: pathlib.Path) -> None:
        # NOTE: an upload links its file into place, then waits for the
        #   writers' lock (which we hold) to write its index line; its lock
        #   on the file says so. An unlocked, unlisted image is an upload that
        #   crashed before its index line: never acknowledged.
        with _opened(path) as fd:
            if fd is None or _is_locked(fd):
                return
            log.warning('removing unlisted image file %s', path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @staticmethod
    def _remove_temp_if_abandoned(path: pathlib.Path, now: float) -> None:
        with _opened(path) as fd:
            if fd is None or now - os.fstat(fd).st_mtime < TEMP_GRACE_SECONDS:
                return
            if _is_locked(fd):
                return  # its writer is alive
            log.info('removing abandoned temporary file %s', path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- reading ----------------------------------------------------------

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound."""
        self._refresh()
        image = self._images.get(image_id)  # _apply lets only valid ids in
        if image is None:
            shown = image_id if is_valid_id(image_id) else repr(image_id)
            raise ImageNotFound(f'No image has the id {shown}.')
        return image

    def open_image(self, image: StoredImage) -> IO[bytes]:
        """Open the JPEG of an image for reading, or raise ImageNotFound if it is gone."""
        try:
            return open(f'{self._images_prefix}{image.id}.jpeg', 'rb')
        except FileNotFoundError:
            # Deleted by another request since the lookup.
            raise ImageNotFound(f'No image has the id {image.id}.') from None

    def path(self, image_id: str) -> pathlib.Path:
        """Return where the JPEG of ``image_id`` lives; the id must be valid."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        return self.images_dir / f'{image_id}.jpeg'

    def list(self, *, after: str | None = None, limit: int | None = None) -> list[StoredImage]:
        """Return images oldest first, starting after the id ``after``."""
        self._refresh()
        if limit is not None and limit <= 0:
            return []
        with self._view_lock:
            start = 0
            if after is not None:
                seq = self._seq.get(after)
                if seq is None:
                    raise ImageNotFound(f'No image has the id {after!r}.')
                start = bisect.bisect_right(self._order_seq, seq)
            found: list[StoredImage] = []
            order = self._order
            for position in range(start, len(order)):
                image = self._images.get(order[position])
                if image is not None:
                    found.append(image)
                    if limit is not None and len(found) >= limit:
                        break
            return found

    def __len__(self) -> int:
        self._refresh()
        return len(self._images)

    def _refresh(self) -> None:
        """Apply whatever other processes have appended to the index since last time."""
        try:
            stat = os.stat(self.index_path)
        except FileNotFoundError:
            return
        with self._view_lock:
            if stat.st_ino != self._inode:
                self._reset_view(stat.st_ino)
            if stat.st_size <= self._offset:
                return
            with open(self.index_path, 'rb') as index:
                index.seek(self._offset)
                data = index.read(stat.st_size - self._offset)
            complete = data.rfind(b'\n') + 1  # a line still being written waits
            for line in data[:complete].splitlines():
                self._apply(line)
            self._offset += complete

    def _reset_view(self, inode: int) -> None:
        self._images.clear()
        self._order.clear()
        self._order_seq.clear()
        self._seq.clear()
        self._offset = 0
        self._inode = inode

    def _apply(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            op, image_id = record['op'], record['id']
            if not is_valid_id(image_id):
                # Lookups trust the view: a path is built from every id in it.
                raise ValueError(f'malformed id {image_id!r}')
            if op == 'add':
                width, height = record['size']
                image = StoredImage(image_id, int(record['modified']), (int(width), int(height)))
                self._place(image_id)
                self._images[image_id] = image
            elif op == 'delete':
                self._images.pop(image_id, None)
            else:
                raise ValueError(f'unknown op {op!r}')
        except (ValueError, KeyError, TypeError, OverflowError) as ex:
            log.error('skipping unreadable index line %r: %s', line[:200], ex)
            return
        # NOTE: deleted ids are skipped while listing; compacted away once
        #   they are the majority, to keep listing fast.
        if len(self._order) > 1024 and len(self._images) < len(self._order) // 2:
            self._compact()

    def _place(self, image_id: str) -> None:
        """Put an added id in the order: at the end, or back where it was if seen before."""
        seq = self._seq.get(image_id)
        if seq is None:
            seq = self._seq[image_id] = len(self._seq)
            self._order.append(image_id)
            self._order_seq.append(seq)
            return
        # Added again after a delete (a failed delete is undone this way).
        at = bisect.bisect_left(self._order_seq, seq)
        if at == len(self._order_seq) or self._order_seq[at] != seq:  # compacted away
            self._order.insert(at, image_id)
            self._order_seq.insert(at, seq)

    def _compact(self) -> None:
        """Drop deleted ids from the order; their numbers keep ``after=`` working for them."""
        kept = [n for n, image_id in enumerate(self._order) if image_id in self._images]
        self._order = [self._order[n] for n in kept]
        self._order_seq = [self._order_seq[n] for n in kept]

    def check_writable(self) -> str | None:
        """Return None if a file can be written beside the images, else why not."""
        try:
            probe = self.temporary()
            try:
                probe.file.write(b'ok')
                probe.file.flush()
                os.fsync(probe.file.fileno())
            finally:
                probe.close()
            with open(self.index_path, 'rb'):
                pass
        except OSError as ex:
            return f'{ex.strerror or ex}'
        return None

    # -- writing ----------------------------------------------------------

    def temporary(self) -> TempFile:
        """Create a locked temporary file beside the images, removed on ``close()``."""
        path = self.images_dir / f'.{secrets.token_hex(12)}{_TEMP_SUFFIX}'
        return TempFile(path)

    def add(self, image_id: str, upload: TempFile, size: tuple[int, int]) -> StoredImage:
        """Commit the finished JPEG in ``upload`` under ``image_id``; index it durably.

        The JPEG's data, its name and its index line reach the disk in that
        order, so a crash can never leave an indexed name without its bytes.

        Only the index line is written under the writers' lock: the file is
        linked into place before it, so uploads do not queue behind each
        other's commits. Until its line is written, the file's lock (held by
        ``upload``) keeps start-up clean-up in other workers away from it.
        ``upload.close()`` removes the temporary name afterwards.
        """
        final_path = self.path(image_id)
        image = StoredImage(image_id, int(time.time()), (int(size[0]), int(size[1])))
        # NOTE: fsync is per file, whichever process wrote it; this descriptor
        #   was opened before those writes, so their errors are reported here.
        os.fsync(upload.file.fileno())
        try:
            # NOTE: a link, unlike a rename, never replaces an existing image.
            os.link(upload.path, final_path)
        except FileExistsError:
            raise StorageError(f'An image with the id {image_id} already exists.') from None
        try:
            _fsync_directory(self.images_dir)
            with self._exclusive():
                self._append(_added(image), undo=_deleted(image_id))
        except BaseException:
            if not self._lists(image_id):  # the line was cut off or undone
                with contextlib.suppress(OSError):
                    final_path.unlink()
            raise
        return image

    def delete(self, image_id: str) -> None:
        """Remove an image from the index, then from the disk."""
        self.path(image_id)  # validates the id before taking the lock
        with self._exclusive():
            self._refresh()
            image = self._images.get(image_id)
            if image is None:
                raise ImageNotFound(f'No image has the id {image_id}.')
            try:
                self._append(_deleted(image_id), undo=_added(image))
            finally:
                # This view reads the index afresh here, so no refresh is owed after.
                if not self._lists(image_id):  # deleted, even if its line failed to sync
                    with contextlib.suppress(FileNotFoundError):
                        self.path(image_id).unlink()
            _fsync_directory(self.images_dir)

    def _lists(self, image_id: str) -> bool:
        """Return whether the index, as every worker reads it now, lists ``image_id``."""
        with contextlib.suppress(OSError):
            self._refresh()
        return image_id in self._images

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # NOTE: opened per use, never inherited across fork: an flock taken on a
        #   file description shared by two processes would exclude neither.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _append(self, record: dict[str, object], *, undo: dict[str, object] | None) -> None:
        """Append one line and fsync it; the caller holds the writers' lock.

        A line that cannot be made durable is taken back. While incomplete it
        is cut off: no reader applies a line before its newline. Once complete,
        other workers may have applied it already, so ``undo`` is appended
        instead (cutting it would leave them reading from the middle of the
        next line), as far as the disk allows; with ``undo`` None it stays.
        """
        line = _encoded(record)
        fd = os.open(self.index_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b'\n':
                self._cut_partial_tail()
                start = os.fstat(fd).st_size
            written = 0
            try:
                with refused_writes():
                    while written < len(line):
                        written += os.write(fd, line[written:])
                    os.fsync(fd)
            except BaseException:
                if written < len(line):
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                elif undo is not None:
                    self._append_undo(fd, start + len(line), undo)
                raise
        finally:
            os.close(fd)

    @staticmethod
    def _append_undo(fd: int, end: int, undo: dict[str, object]) -> None:
        """Append ``undo`` after a line that failed to sync, as far as the disk allows."""
        line = _encoded(undo)
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as ex:
            # NOTE: the line it undoes stands, for every worker; the caller
            #   keeps or removes the image file to match.
            log.error('could not take back an index line with %s: %s', undo, ex)
            if written < len(line):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)

    def _cut_partial_tail(self) -> None:
        """Cut off a line left half-written by a crash; the caller holds the lock."""
        with open(self.index_path, 'r+b') as index:
            size = index.seek(0, os.SEEK_END)
            if size == 0:
                return
            index.seek(size - 1)
            if index.read(1) == b'\n':
                return
            # Walk back to the last complete line.
            end = size
            while end > 0:
                start = max(0, end - 65536)
                index.seek(start)
                chunk = index.read(end - start)
                newline = chunk.rfind(b'\n')
                if newline >= 0:
                    cut = start + newline + 1
                    break
                end = start
            else:
                cut = 0
            log.warning('cutting %d bytes of a half-written index line', size - cut)
            index.truncate(cut)
            index.flush()
            os.fsync(index.fileno())
