"""The index: which images exist, in upload order, and what serving them needs.

Two implementations keep the same promises behind this interface: the
JSON-lines journal on local disk (``look.core.index.journal``, the default) and
PostgreSQL (``look.core.index.postgres``), which many look hosts can share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
from collections.abc import Iterator
from typing import Protocol

# The most characters an image's alt text may have.
MAX_ALT_LENGTH = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class StoredImage:
    """One committed image: its id, upload time (Unix seconds) and pixel size.

    ``length`` is the stored JPEG's size in bytes (0 where an older index did
    not record it); ``token_hash`` the SHA-256 (hex) of its delete token, or
    '' for an image that has none. Neither is ever shown to a client.

    What people and look say of it besides: ``alt``, the words that say what
    it shows ('' for none); ``thumbhash`` and ``color``, a placeholder to paint
    while it loads (a standard-base64 ThumbHash and ``#rrggbb``; '' until
    computed); ``frames`` and ``duration_ms``, for an animation (0 for a
    still image). Only ``alt`` and the placeholder change after the upload
    (``Index.amend``).
    """

    id: str
    modified: int
    size: tuple[int, int]
    length: int = 0
    token_hash: str = ''
    alt: str = ''
    thumbhash: str = ''
    color: str = ''
    frames: int = 0
    duration_ms: int = 0

    @property
    def animated(self) -> bool:
        """Whether the image is an animation of more than one frame."""
        return self.frames > 1

    @property
    def modified_http(self) -> str:
        """The upload time as an HTTP date, as Last-Modified and the JSON give it."""
        return _http_date(self.modified)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    # Formatting is most of the cost of a download's headers; images repeat.
    return email.utils.formatdate(seconds, usegmt=True)


class Index(Protocol):
    """Add, get, page and delete images, as every host and worker sees them.

    An add is seen everywhere at once. A delete is seen at once by the
    process that made it and by the journal's other workers; PostgreSQL's
    other processes and hosts see it as its notification arrives, and
    never later than ``look.core.index.postgres.ROW_MAX_AGE`` seconds.
    """

    def open(self) -> None:
        """Create or bring up to date what the index keeps (safe in many processes at once)."""

    def close(self) -> None:
        """Let go of files or connections."""

    def add(self, image: StoredImage) -> None:
        """Record ``image`` durably; raise ImageExists if its id is taken."""

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound.

        May answer from rows it read before (a row changes only by a delete
        or an amend, which every host hears of), so an image deleted or
        amended elsewhere a moment ago may still be returned as it was, within
        the bound the class states; an unknown id is always looked up.
        """

    def page(
        self, *, after: str | None = None, limit: int, newest_first: bool = False
    ) -> list[StoredImage]:
        """Return up to ``limit`` images in upload order, starting after the id ``after``.

        ``after`` may name an image deleted since: the page starts where it
        was. An id the index never held raises ImageNotFound.
        """

    def amend(
        self,
        image_id: str,
        *,
        alt: str | None = None,
        thumbhash: str | None = None,
        color: str | None = None,
    ) -> StoredImage:
        """Change what may change of an image (None leaves it) and return it; ImageNotFound.

        Every host and worker sees the change as it sees a delete (see ``get``).
        """

    def delete(self, image_id: str) -> StoredImage:
        """Forget an image and return it, or raise ImageNotFound.

        Every process that keeps rows drops this one (see ``get``). The
        index remembers that the id was deleted (``was_deleted``), so a
        check can tell a delete's leftover object from an image to restore.
        """

    def was_deleted(self, image_id: str) -> bool:
        """Return whether this id was listed once and has been deleted since."""

    def count(self) -> int:
        """Return how many images there are."""

    def problems(self) -> list[str]:
        """Return the damage found in the index (for /health and the log); empty when sound."""

    def check(self) -> str | None:
        """Return None if the index answers now, else why not."""


class IndexUpkeep(Protocol):
    """What a check and repair needs of an index besides serving (``look check``)."""

    def rewrite(self) -> None:
        """Write the index again without its damaged records (where it can have any)."""

    def writes_paused(self) -> contextlib.AbstractContextManager[None]:
        """Hold back commits for a block where it can (a check compares index and images)."""


class KeptIndex(Index, IndexUpkeep, Protocol):
    """An index that serves and can be checked: both implementations are."""


def every_image(index: Index, *, page_size: int = 1000) -> Iterator[StoredImage]:
    """Yield every image in upload order, a page at a time."""
    after = None
    while True:
        page = index.page(after=after, limit=page_size)
        yield from page
        if len(page) < page_size:
            return
        after = page[-1].id
