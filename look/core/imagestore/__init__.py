"""The image store: where the finished JPEGs are kept, and the animated WebPs of animations.

Two implementations keep the same promises behind this interface: a
directory on local disk (``look.core.imagestore.disk``, the default) and an
S3-compatible object store (``look.core.imagestore.s3``), which many look hosts
can share.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import IO, Any, Protocol

from look.errors import BackendUnavailable

# The objects an image has, named by their suffix: its JPEG, and for an
# animation its animated WebP besides (look.imaging.animation).
JPEG = 'jpeg'
ANIMATION = 'webp'
KINDS = (JPEG, ANIMATION)
MEDIA_TYPES = {JPEG: 'image/jpeg', ANIMATION: 'image/webp'}


@dataclasses.dataclass(slots=True)
class Original:
    """A stored JPEG opened for reading: a stream with ``read()`` and ``close()``, and its size.

    A local file is a real file object, so gunicorn can send it with sendfile().
    """

    stream: IO[bytes]
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class StoredObject:
    """One JPEG the store holds, as a check sees it: its id and when it was written (Unix)."""

    id: str
    modified: float


class PutInDoubt(BackendUnavailable):
    """A put was sent and got no answer: its object may be stored, now or when the write lands."""


class Finished(Protocol):
    """A finished JPEG on local disk, ready to be stored: its path and its open file."""

    @property
    def path(self) -> Any: ...

    @property
    def file(self) -> IO[bytes]: ...


class ImageStore(Protocol):
    """Put, open, hand to the pool, and delete the objects of an image.

    Each call names the ``kind`` of object it means (``JPEG`` by default);
    a delete removes every object of the image.
    """

    def open(self) -> None:
        """Create or check what the store needs (safe in many processes at once)."""

    def close(self) -> None:
        """Let go of files or connections."""

    def put(self, image_id: str, jpeg: Finished, kind: str = JPEG) -> None:
        """Store the finished file under ``image_id``, durably; never replace one.

        A put that fails after it may have stored something raises
        PutInDoubt; any other failure stored nothing.
        """

    def open_original(self, image_id: str, kind: str = JPEG) -> Original:
        """Open the JPEG (or other ``kind``) of ``image_id``, or raise ImageNotFound."""

    def local_path(
        self, image_id: str, kind: str = JPEG
    ) -> contextlib.AbstractContextManager[str]:
        """Give a local file of the object for the block, for the pool to read (ImageNotFound)."""

    def exists(self, image_id: str, kind: str = JPEG) -> bool:
        """Return whether the store holds the JPEG (or other ``kind``) of ``image_id`` now."""

    def delete(self, image_id: str) -> None:
        """Remove every object of ``image_id``; one already gone is not an error."""

    def state(self) -> dict[str, Any]:
        """Return the store's health: ``status`` ok, read-only, full or fail, and facts."""


class StoreUpkeep(Protocol):
    """What a check and repair needs of an image store besides serving (``look check``)."""

    def objects(self, kind: str = JPEG) -> Iterator[StoredObject]:
        """Yield every JPEG (or object of another ``kind``) the store holds, in no order."""

    def quarantine(self, image_id: str) -> None:
        """Move a JPEG (and its animation) aside, where it is kept, not served, until restored."""

    def quarantined(self) -> Iterator[StoredObject]:
        """Yield the JPEGs in quarantine."""

    def restore(self, image_id: str) -> None:
        """Move a quarantined JPEG (and its animation) back into place (never over another)."""

    def in_progress(self, image_id: str) -> bool:
        """Return whether an upload is still committing this JPEG (so it is nobody's leftover)."""


class KeptStore(ImageStore, StoreUpkeep, Protocol):
    """An image store that serves and can be checked: both implementations are."""
