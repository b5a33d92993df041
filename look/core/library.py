"""The library: the index and the image store, kept in step.

The one rule: an index entry never names a JPEG that is not stored. So an
upload stores its JPEG before its entry, and a delete removes the entry
before the JPEG. A crash between the two steps can leave a JPEG with no
entry, never the other way round; ``look.core.upkeep.check`` finds and repairs those.
"""

from __future__ import annotations

import contextlib
import logging
import os

from look.core.imagestore import Finished, KeptStore, Original
from look.core.index import KeptIndex, StoredImage
from look.errors import BackendUnreachable, ImageExists, ImageNotFound

log = logging.getLogger(__name__)


class Library:
    """Images as resources see them: add, get, page, open and delete."""

    def __init__(self, index: KeptIndex, images: KeptStore) -> None:
        # NOTE: resources use the serving half of each; look check and the
        #   start-up quarantine use the upkeep half too.
        self.index = index
        self.images = images

    def open(self) -> None:
        """Open the image store, then the index."""
        self.images.open()
        self.index.open()

    def close(self) -> None:
        """Close both."""
        self.index.close()
        self.images.close()

    def add(self, image: StoredImage, jpeg: Finished) -> None:
        """Store the finished JPEG, then its index entry; a failure leaves neither.

        The JPEG keeps the upload time as its modification time, so a check
        that finds it unlisted restores it with the time its entry had.
        """
        os.utime(jpeg.file.fileno(), (image.modified, image.modified))
        self.images.put(image.id, jpeg)
        try:
            self.index.add(image)
        except ImageExists:
            # NOTE: the id is listed already and its JPEG was gone (or put
            #   would have refused): the JPEG just put is not that image's.
            with contextlib.suppress(Exception):
                self.images.delete(image.id)
            raise
        except BaseException as ex:
            # NOTE: an entry that could not be taken back stands (for every
            #   worker), and keeps its JPEG; one the index cannot even be
            #   asked about keeps it too, for a check to settle, unless the
            #   index was never reached.
            with contextlib.suppress(Exception):
                if isinstance(ex, BackendUnreachable) or not self._lists(image.id):
                    self.images.delete(image.id)
            raise

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound."""
        return self.index.get(image_id)

    def page(
        self, *, after: str | None = None, limit: int, newest_first: bool = False
    ) -> list[StoredImage]:
        """Return a page of images in upload order (see Index.page)."""
        return self.index.page(after=after, limit=limit, newest_first=newest_first)

    def open_original(self, image: StoredImage) -> Original:
        """Open the JPEG of an image, or raise ImageNotFound if it is gone."""
        return self.images.open_original(image.id)

    def local_path(self, image: StoredImage) -> contextlib.AbstractContextManager[str]:
        """Give a local file of the image's JPEG for the block, for the pool to read."""
        return self.images.local_path(image.id)

    def delete(self, image_id: str) -> StoredImage:
        """Remove the index entry, then the JPEG; return the deleted image.

        Once the entry is gone the image is deleted for everyone: a JPEG that
        cannot be removed now is a leftover that ``check --repair`` removes.
        """
        try:
            image = self.index.delete(image_id)
        except BaseException:
            # A line that failed to sync but could not be taken back stands.
            with contextlib.suppress(Exception):
                if self.index.was_deleted(image_id):
                    self.images.delete(image_id)
            raise
        try:
            self.images.delete(image_id)
        except Exception as ex:
            log.error(
                'image %s is deleted, but its JPEG could not be removed (%s); '
                '`python -m look check --repair` removes it',
                image_id,
                ex,
            )
        return image

    def count(self) -> int:
        """Return how many images there are."""
        return self.index.count()

    def _lists(self, image_id: str) -> bool:
        try:
            self.index.get(image_id)
        except ImageNotFound:
            return False
        return True
