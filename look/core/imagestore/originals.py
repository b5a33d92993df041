"""Originals kept on local disk, for a host whose images live elsewhere.

A render reads its original from a local file (the pool is given a path);
with images in an object store, that file is fetched once and kept here
(a ``DiskCache`` of ``<id>.jpeg`` files, and ``<id>.webp`` of animations),
so the other sizes and formats of
the same image, on any worker of this host, read it without fetching it
again; a download read to its end is kept too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import Protocol

from look.core.diskcache import DiskCache
from look.core.ids import is_valid_id
from look.core.imagestore import JPEG, KINDS
from look.core.spool import SpoolFile

log = logging.getLogger(__name__)


def cache_key(image_id: str, kind: str = JPEG) -> str:
    """Return the key of an image's object in the cache: its id, with the kind if not a JPEG."""
    return image_id if kind == JPEG else f'{image_id}.{kind}'


class OriginalsCache(DiskCache):
    """Originals kept on local disk by ``cache_key``, up to ``max_bytes`` (0 keeps none)."""

    def path(self, key: str) -> str:
        """Return where the original named by ``key`` is kept; its id must be valid."""
        image_id, _, kind = key.partition('.')
        kind = kind or JPEG
        if not is_valid_id(image_id) or kind not in KINDS:
            raise ValueError(f'not an image id: {key!r}')
        return os.path.join(self.directory, f'{image_id}.{kind}')

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
        """Keep a copy of an original that is on this disk already (a new upload): a link.

        ``image_id`` is a ``cache_key``.
        """
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
