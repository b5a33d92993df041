"""The upload spool: local temporary files that hold a body until it is an image.

Every upload is streamed into a spool file, converted there by the pool into
the JPEG to store, and handed to the image store. A spool file is locked
while its upload lives, which tells start-up clean-up in other workers that
it is in use; files left by a crash are removed once old and unlocked. A
spool file is never an image a user was told is stored: the image store
keeps its own copy (or link) of the JPEG.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import secrets
import time

from look.core.files import entries

log = logging.getLogger(__name__)

TEMP_SUFFIX = '.tmp'
# NOTE: a temp file younger than this is never removed at start-up, even if
#   unlocked: it may belong to a worker that has created it but not yet locked it.
TEMP_GRACE_SECONDS = 60.0


class SpoolFile:
    """A locked temporary file; ``close()`` removes its name and lets go of it."""

    def __init__(self, path: pathlib.Path, *, create: bool = True) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.file = os.fdopen(fd, 'r+b')

    def close(self) -> None:
        """Remove the temporary name and let go of the file (and its lock).

        A stored image lives on under its own name; otherwise what the file
        held is being thrown away, so a failing flush is too.
        """
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.file.close()


class Spool:
    """A directory of spool files on local disk."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)

    def open(self) -> None:
        """Create the directory and remove what crashed uploads left in it.

        On a read-only disk there is nothing to do: uploads are refused (507).
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as ex:
            if ex.errno != errno.EROFS:
                raise
            log.warning('no spool at %s (%s): uploads are refused', self.directory, ex)
            return
        remove_abandoned(self.directory)

    def create(self) -> SpoolFile:
        """Create a new locked spool file (and the directory again, if it went)."""
        path = self.directory / f'.{secrets.token_hex(12)}{TEMP_SUFFIX}'
        try:
            return SpoolFile(path)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            return SpoolFile(path)

    def companion(self, upload: SpoolFile) -> pathlib.Path:
        """Return where the pool may write a second file of an upload (an animation).

        Named as spool files are, so a crash's leftover is removed as theirs are.
        """
        return upload.path.with_name(f'{upload.path.stem}-animation{TEMP_SUFFIX}')

    def adopt(self, path: pathlib.Path) -> SpoolFile:
        """Lock a file the pool wrote at a ``companion`` path, as a spool file of its own."""
        return SpoolFile(path, create=False)


def remove_abandoned(directory: pathlib.Path) -> None:
    """Remove temporary files in ``directory`` that are old and that nobody holds locked."""
    now = time.time()
    for entry in entries(directory):
        name = entry.name
        if not (name.startswith('.') and name.endswith(TEMP_SUFFIX)):
            continue
        path = pathlib.Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if now - os.fstat(fd).st_mtime < TEMP_GRACE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            log.info('removing abandoned temporary file %s', path)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as ex:
                # NOTE: a clean-up that cannot be done (a read-only disk)
                #   never stops a start.
                log.warning('could not remove abandoned temporary file %s: %s', path, ex)
        finally:
            os.close(fd)
