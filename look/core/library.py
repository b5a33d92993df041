"""The library: the index and the image store, kept in step.

The one rule: an index entry never names a JPEG that is not stored. So an
upload stores its JPEG before its entry, and a delete removes the entry
before the JPEG. A crash between the two steps can leave a JPEG with no
entry, never the other way round. What a delete or a failed upload leaves
in the store is on the index's list of objects to remove before the answer
goes out, and this process's removal worker (``look.core.removals``)
removes it; ``look.core.upkeep.check`` finds whatever else is left.
"""

from __future__ import annotations

import contextlib
import logging
import os

from look.core.imagestore import ANIMATION, Finished, KeptStore, Original, PutInDoubt
from look.core.index import FAILED_UPLOAD, Backlog, CommitInDoubt, KeptIndex, StoredImage
from look.core.lazy import PerProcess
from look.core.removals import Remover, Timing
from look.errors import BackendUnreachable, ImageExists, ImageNotFound

log = logging.getLogger(__name__)


class Library:
    """Images as resources see them: add, get, page, amend, open and delete."""

    def __init__(
        self, index: KeptIndex, images: KeptStore, *, timing: Timing | None = None
    ) -> None:
        # NOTE: resources use the serving half of each; look check and the
        #   start-up quarantine use the upkeep half too.
        self.index = index
        self.images = images
        self.timing = timing if timing is not None else Timing()
        # NOTE: made by the first upload, delete, list, /health or /metrics
        #   in each process (never at import, never in gunicorn's master).
        self._remover = PerProcess(self._new_remover)

    def open(self) -> None:
        """Open the image store, then the index."""
        self.images.open()
        self.index.open()

    def close(self) -> None:
        """Stop this process's removal worker, then close both."""
        remover = self._remover.take()
        if remover is not None:
            remover.stop()
        self.index.close()
        self.images.close()

    def _new_remover(self) -> Remover:
        return Remover(self.index, self.images, self.timing).start()

    def add(self, image: StoredImage, jpeg: Finished, animation: Finished | None = None) -> None:
        """Store the finished JPEG (and animation), then its index entry; a failure leaves neither.

        Whatever a failure may leave in the store is listed for removal
        before this raises, or removed at once when nothing of it can still
        be on its way; an object whose entry may have committed is kept.
        The JPEG keeps the upload time as its modification time, so a check
        that finds it unlisted restores it with the time its entry had.
        """
        remover = self._remover.get()
        os.utime(jpeg.file.fileno(), (image.modified, image.modified))
        try:
            self.images.put(image.id, jpeg)
        except PutInDoubt:
            self._remove_later(image.id, remover, self.timing.settle)
            raise
        if animation is not None:
            self._put_animation(image, animation, remover)
        try:
            self.index.add(image)
        except ImageExists:
            # NOTE: the id is listed already and its JPEG was gone (or put
            #   would have refused): the JPEG just put is not that image's.
            with contextlib.suppress(Exception):
                self.images.delete(image.id)
            raise
        except BackendUnreachable:
            # NOTE: nothing reached the index, and the put has answered: no
            #   write of either can still land, so the object goes now.
            self._take_back(image.id, remover)
            raise
        except CommitInDoubt:
            # NOTE: the row may yet commit: the object is removed only once
            #   the index says no row lists it, now and again when it is due.
            with contextlib.suppress(Exception):
                if not self._lists(image.id):
                    self._remove_later(image.id, remover, self.timing.settle)
            raise
        except BaseException:
            # NOTE: an entry that could not be taken back stands (for every
            #   worker), and keeps its JPEG; so does one the index cannot be
            #   asked about, for a check to settle.
            with contextlib.suppress(Exception):
                if not self._lists(image.id):
                    self._take_back(image.id, remover)
            raise

    def _put_animation(self, image: StoredImage, animation: Finished, remover: Remover) -> None:
        """Store an animation's WebP beside its JPEG; a failure takes both back."""
        try:
            os.utime(animation.file.fileno(), (image.modified, image.modified))
            self.images.put(image.id, animation, ANIMATION)
        except PutInDoubt:
            self._remove_later(image.id, remover, self.timing.settle)
            raise
        except BaseException:
            # NOTE: nothing of the animation is on its way; the JPEG goes now.
            self._take_back(image.id, remover)
            raise

    def _take_back(self, image_id: str, remover: Remover) -> None:
        """Remove the object of an upload that failed after its put; list it if the store fails."""
        try:
            self.images.delete(image_id)
        except Exception:
            self._remove_later(image_id, remover, 0.0)

    def _remove_later(self, image_id: str, remover: Remover, after: float) -> None:
        """List what a failed upload may have stored, due in ``after`` seconds."""
        try:
            self.index.remove_later(image_id, reason=FAILED_UPLOAD, after=after)
        except Exception as ex:
            log.error(
                'upload %s failed, and what it may have stored could not be listed for '
                'removal (%s); `look check` finds it',
                image_id,
                ex,
            )
            return
        remover.expect(after)

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound."""
        return self.index.get(image_id)

    def page(
        self, *, after: str | None = None, limit: int, newest_first: bool = False
    ) -> list[StoredImage]:
        """Return a page of images in upload order (see Index.page)."""
        self._remover.get()
        return self.index.page(after=after, limit=limit, newest_first=newest_first)

    def amend(
        self,
        image_id: str,
        *,
        alt: str | None = None,
        thumbhash: str | None = None,
        color: str | None = None,
    ) -> StoredImage:
        """Change an image's alt text or placeholder (None leaves it); return it as it is now.

        Only the index changes: the JPEG and its thumbnails stay as they are,
        so no cached rendition goes stale. Every worker and host sees the
        change as it sees a delete (``Index.amend``); ImageNotFound if none.
        """
        return self.index.amend(image_id, alt=alt, thumbhash=thumbhash, color=color)

    def open_original(self, image: StoredImage) -> Original:
        """Open the JPEG of an image, or raise ImageNotFound if it is gone."""
        return self.images.open_original(image.id)

    def open_animation(self, image: StoredImage) -> Original:
        """Open the animated WebP of an animation, or raise ImageNotFound if it has none."""
        if not image.animated:
            raise ImageNotFound(
                f'Image {image.id} is not an animation: it has no .webp; its .jpeg is the image.'
            )
        return self.images.open_original(image.id, ANIMATION)

    def local_path(
        self, image: StoredImage, *, animation: bool = False
    ) -> contextlib.AbstractContextManager[str]:
        """Give a local file of the image's JPEG (or animation) for the block, for the pool."""
        if animation:
            return self.images.local_path(image.id, ANIMATION)
        return self.images.local_path(image.id)

    def delete(self, image_id: str) -> StoredImage:
        """Remove the index entry, then the JPEG; return the deleted image.

        The entry goes with its object listed for removal, in one write: once
        it is gone the image is deleted for everyone, and a JPEG that cannot
        be removed now is removed by a removal worker when the store answers.
        """
        self._remover.get()
        try:
            image = self.index.delete(image_id)
        except BaseException:
            # A line that failed to sync but could not be taken back stands.
            with contextlib.suppress(Exception):
                if self.index.was_deleted(image_id):
                    self._remove_now(image_id)
            raise
        try:
            self._remove_now(image_id)
        except Exception as ex:
            log.warning(
                'image %s is deleted; its JPEG could not be removed now (%s), and is '
                'removed once the store answers',
                image_id,
                ex,
            )
        return image

    def _remove_now(self, image_id: str) -> None:
        """Remove a deleted image's object and drop its entry (the delete answered: it is gone)."""
        self.images.delete(image_id)
        self.index.removal_done(image_id)

    def removal_backlog(self) -> Backlog:
        """Return how many objects wait to be removed, and the oldest's age."""
        self._remover.get()
        return self.index.removal_backlog()

    def count(self) -> int:
        """Return how many images there are."""
        return self.index.count()

    def _lists(self, image_id: str) -> bool:
        try:
            self.index.get(image_id)
        except ImageNotFound:
            return False
        return True
