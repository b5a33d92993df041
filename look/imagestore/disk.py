"""JPEGs in a directory on local disk (or a filesystem every host mounts).

Layout of ``root``::

    images/<id>.jpeg       stored images
    quarantine/<id>.jpeg   image files no index line listed at start-up: moved
                           aside, never deleted, until ``check --repair``
                           restores them
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

from look.errors import ImageExists, ImageNotFound, refused_writes
from look.files import entries, fsync_directory
from look.imagestore import Finished, Original, StoredObject
from look.index import is_valid_id
from look.spool import remove_abandoned

_SUFFIX = '.jpeg'
# Below this much free space (or 1% of a smaller disk) the store reports itself full.
LOW_SPACE_BYTES = 64 * 1024 * 1024


def is_locked(path: pathlib.Path) -> bool:
    """Return whether some open file holds the flock of the file at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class DiskImageStore:
    """Images as files: put by hard link, served by sendfile."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.images_dir = self.root / 'images'
        self.quarantine_dir = self.root / 'quarantine'
        self._prefix = f'{self.images_dir}{os.sep}'  # hot path: no pathlib

    def open(self) -> None:
        """Create the images directory (a read-only one is served as it is)."""
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            # Uploads of versions before the spool directory were written here.
            remove_abandoned(self.images_dir)
        except OSError:
            if not self.images_dir.is_dir():
                raise

    def close(self) -> None:
        """Nothing stays open between calls."""

    def path(self, image_id: str) -> pathlib.Path:
        """Return where the JPEG of ``image_id`` lives; the id must be valid."""
        return pathlib.Path(self._file(image_id))

    def _file(self, image_id: str) -> str:
        """Return where the JPEG of ``image_id`` lives, as a string; the id must be valid."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        return f'{self._prefix}{image_id}{_SUFFIX}'

    def put(self, image_id: str, jpeg: Finished) -> None:
        """Link the finished JPEG into place under its id; its data first, then its name.

        The upload keeps its lock on the file (the same inode) until it is
        indexed, which tells a starting worker it is no crashed upload's leftover.
        """
        final = self._file(image_id)  # PERF: a string, no pathlib: 33 000 instructions less
        with refused_writes():
            # NOTE: fsync is per file, whichever process wrote it; this
            #   descriptor was opened before those writes, so their errors
            #   are reported here.
            os.fsync(jpeg.file.fileno())
            try:
                # NOTE: a link, unlike a rename, never replaces an existing image.
                os.link(jpeg.path, final)
            except FileExistsError:
                raise ImageExists(f'An image with the id {image_id} already exists.') from None
            except OSError as ex:
                if ex.errno != errno.EXDEV:
                    raise
                self._copy_into_place(pathlib.Path(jpeg.path), pathlib.Path(final))
            try:
                fsync_directory(self.images_dir)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(final)
                raise

    def _copy_into_place(self, source: pathlib.Path, final: pathlib.Path) -> None:
        """Copy a JPEG from another filesystem under a temp name, then link it into place.

        The copy keeps the modification time (the upload time), as a link would.
        """
        temporary = self.images_dir / f'.{secrets.token_hex(12)}.tmp'
        try:
            with open(source, 'rb') as data, open(temporary, 'xb') as out:
                shutil.copyfileobj(data, out, 1024 * 1024)
                out.flush()
                written = os.fstat(data.fileno())
                os.utime(out.fileno(), ns=(written.st_atime_ns, written.st_mtime_ns))
                os.fsync(out.fileno())
            try:
                os.link(temporary, final)
            except FileExistsError:
                raise ImageExists(f'An image with the id {final.stem} already exists.') from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def open_original(self, image_id: str) -> Original:
        """Open the JPEG of an image for reading, or raise ImageNotFound if it is gone."""
        try:
            stream = open(f'{self._prefix}{image_id}{_SUFFIX}', 'rb')  # noqa: SIM115
        except FileNotFoundError:
            raise ImageNotFound(f'No image has the id {image_id}.') from None
        return Original(stream, os.fstat(stream.fileno()).st_size)

    def local_path(self, image_id: str) -> contextlib.AbstractContextManager[str]:
        """Give the file itself: the pool reads it in place."""
        # PERF: no generator, no pathlib: 4.5 µs less per render (5.3 → 0.8 µs).
        return contextlib.nullcontext(self._file(image_id))

    def exists(self, image_id: str) -> bool:
        """Return whether the image file is there."""
        return self.path(image_id).is_file()

    def delete(self, image_id: str) -> None:
        """Remove the file and make its removal durable."""
        with refused_writes():
            try:
                self.path(image_id).unlink()
            except FileNotFoundError:
                return
            fsync_directory(self.images_dir)

    def objects(self) -> Iterator[StoredObject]:
        """Yield every image file, with its modification time."""
        yield from _jpegs_in(self.images_dir)

    def in_progress(self, image_id: str) -> bool:
        """Return whether an upload still holds the lock on this file."""
        return is_locked(self.path(image_id))

    # -- quarantine -------------------------------------------------------

    def quarantine(self, image_id: str) -> None:
        """Move an image file aside; its modification time (the upload time) is kept."""
        with refused_writes():
            self.quarantine_dir.mkdir(exist_ok=True)
            os.rename(self.path(image_id), self.quarantine_dir / f'{image_id}{_SUFFIX}')
            fsync_directory(self.quarantine_dir)
            fsync_directory(self.images_dir)

    def quarantined(self) -> Iterator[StoredObject]:
        """Yield the image files in quarantine."""
        yield from _jpegs_in(self.quarantine_dir)

    def restore(self, image_id: str) -> None:
        """Move a quarantined image file back into place (never over another)."""
        self.path(image_id)  # validates the id
        source = self.quarantine_dir / f'{image_id}{_SUFFIX}'
        with refused_writes():
            try:
                os.link(source, self.path(image_id))
            except FileExistsError:
                raise ImageExists(f'An image with the id {image_id} already exists.') from None
            fsync_directory(self.images_dir)
            source.unlink()
            fsync_directory(self.quarantine_dir)

    # -- health -----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Report whether images can be read and written, without writing anything."""
        try:
            if not os.path.isdir(self.images_dir):
                raise NotADirectoryError(errno.ENOTDIR, 'not a directory')
            stat = os.statvfs(self.images_dir)
        except OSError as ex:
            return {'status': 'fail', 'detail': f'{self.images_dir}: {ex.strerror or ex}'}
        free = stat.f_bavail * stat.f_frsize
        state: dict[str, Any] = {'status': 'ok', 'free_bytes': free}
        if stat.f_flag & os.ST_RDONLY or not os.access(self.images_dir, os.W_OK):
            state.update(status='read-only', detail='The disk is read-only: serving reads only.')
        elif free < min(LOW_SPACE_BYTES, stat.f_blocks * stat.f_frsize // 100):
            state.update(status='full', detail='The disk is full: uploads are refused (507).')
        quarantined = sum(1 for _ in self.quarantined())
        if quarantined:
            state['quarantined'] = quarantined
            if state['status'] == 'ok':
                state.update(
                    status='quarantine',
                    detail=(
                        f'{quarantined} image files the index did not list are in '
                        f'{self.quarantine_dir}; `python -m look check --repair` restores them.'
                    ),
                )
        return state


def _jpegs_in(directory: pathlib.Path) -> Iterator[StoredObject]:
    for entry in entries(directory):
        name = entry.name
        if name.endswith(_SUFFIX) and is_valid_id(name[: -len(_SUFFIX)]):
            with contextlib.suppress(FileNotFoundError):
                yield StoredObject(name[: -len(_SUFFIX)], entry.stat().st_mtime)
