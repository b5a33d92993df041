"""Compare the index with the image store, and repair what a crash or damage left.

What can disagree, on any backend:

- *missing*: an index entry whose JPEG is gone (someone removed the file or
  object); repair drops the entry.
- *unlisted*: on the local journal, a JPEG the index has no record of, older
  than a grace time (an upload that crashed before its entry, or an entry
  lost to a damaged journal), and quarantined files (moved aside at
  start-up); repair restores them into the index with their size and upload
  time, since nothing says the user did not want them.
- *failed writes*: on PostgreSQL, which loses no committed row, an object
  no row lists, older than the grace time and than the wait for a write
  still on its way: an upload that failed or whose host died before its row;
  repair removes it.
- *leftovers*: the JPEG of an image the index recorded as deleted (a delete
  whose file removal failed) that is not on the list to remove, and an
  animation's WebP with no JPEG and no row beside it, older than the grace
  time; repair removes them.
- *missing animations*: an image listed as an animation whose WebP is gone;
  reported (its ``.webp`` and animated thumbnails are 404), never repaired:
  only a backup has its frames.
- *without a placeholder*: an image stored before look made placeholders
  (or restored by a check without one); repair makes its placeholder from
  its JPEG. Nothing disagrees: it is described without one until then.

An object on the index's list to remove is *waiting*: look removes it by
itself (look.core.removals), and a repair never restores it. Nothing here
runs on its own except ``quarantine_unlisted`` at the start of a local
store, and that moves files aside, never deletes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from look.core.imagestore import ANIMATION, KeptStore, StoredObject
from look.core.index import KeptIndex, StoredImage, every_image
from look.core.removals import DEFAULT_SETTLE
from look.errors import ImageExists, ImageNotFound

log = logging.getLogger(__name__)

# NOTE: an upload stores its JPEG a moment before its index entry; a JPEG
#   younger than this may be such an upload, not a crash's leftover.
DEFAULT_GRACE_SECONDS = 3600.0

SizeReader = Callable[[str], tuple[int, int]]
# The placeholder (ThumbHash, colour) of a stored JPEG at a path: Pillow's
# work, which the imaging floor does and the command line hands in.
PlaceholderReader = Callable[[str], tuple[str, str]]
# Reads a stored animated WebP: its frames and how long one play lasts (ms).
AnimationReader = Callable[[str], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class _Readers:
    """What a restore reads of a stored object: Pillow's work, handed in."""

    size: SizeReader
    placeholder: PlaceholderReader | None
    animation: AnimationReader | None


@dataclasses.dataclass
class Findings:
    """What a check found; empty lists everywhere mean index and store agree."""

    images: int = 0
    objects: int = 0
    missing: list[StoredImage] = dataclasses.field(default_factory=list)
    unlisted: list[StoredObject] = dataclasses.field(default_factory=list)
    quarantined: list[StoredObject] = dataclasses.field(default_factory=list)
    failed_writes: list[StoredObject] = dataclasses.field(default_factory=list)
    leftovers: list[StoredObject] = dataclasses.field(default_factory=list)
    damage: list[str] = dataclasses.field(default_factory=list)
    missing_animations: list[StoredImage] = dataclasses.field(default_factory=list)
    # On the list to remove: look removes these by itself; nothing to repair.
    waiting: list[StoredObject] = dataclasses.field(default_factory=list)
    # Listed with their JPEG, but no placeholder yet: a repair makes theirs.
    without_placeholder: list[StoredImage] = dataclasses.field(default_factory=list)

    @property
    def sound(self) -> bool:
        """Whether there is nothing to repair."""
        return not (
            self.missing
            or self.unlisted
            or self.quarantined
            or self.failed_writes
            or self.leftovers
            or self.damage
            or self.missing_animations
        )


@dataclasses.dataclass
class Repairs:
    """What a repair did."""

    dropped: int = 0
    restored: int = 0
    removed: int = 0
    failed_writes_removed: int = 0
    placeholders: int = 0
    rewritten: bool = False
    failed: list[str] = dataclasses.field(default_factory=list)


def inspect(
    index: KeptIndex,
    images: KeptStore,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    settle: float = DEFAULT_SETTLE,
) -> Findings:
    """Compare index and image store; nothing is changed.

    An object no row lists is taken for a failed write's only once it is
    older than ``settle`` too, whatever the grace: until then a write or a
    commit of its upload may still be on its way.
    """
    findings = Findings(damage=index.problems())
    # NOTE: objects are listed before the index is read: an upload that
    #   commits in between is then in both, never counted as unlisted.
    objects = list(images.objects())
    animations = list(images.objects(ANIMATION))
    listed = {}
    for image in every_image(index):
        listed[image.id] = image
    awaiting = index.awaiting_removal()
    findings.images = len(listed)
    findings.objects = len(objects)
    on_store = {stored.id for stored in objects}
    findings.missing = [image for image_id, image in listed.items() if image_id not in on_store]
    findings.without_placeholder = [
        image for image in listed.values() if not image.thumbhash and image.id in on_store
    ]
    animated = {stored.id for stored in animations}
    findings.missing_animations = [
        image
        for image_id, image in listed.items()
        if image.animated and image_id in on_store and image_id not in animated
    ]
    now = time.time()
    for stored in sorted(objects, key=_upload_order):
        age = now - stored.modified
        if stored.id in listed:
            continue
        if stored.id in awaiting:
            findings.waiting.append(stored)
        elif index.was_deleted(stored.id):
            findings.leftovers.append(stored)
        elif age < grace or images.in_progress(stored.id):
            continue
        elif not index.keeps_every_row:
            findings.unlisted.append(stored)
        elif age >= settle:
            findings.failed_writes.append(stored)
    # NOTE: an animation whose JPEG is stored goes with it (a delete or a
    #   repair removes both); one without is a leftover once past the grace
    #   time, the most an upload takes from its animation to its row.
    for stored in sorted(animations, key=_upload_order):
        if stored.id in listed or stored.id in on_store:
            continue
        if stored.id in awaiting:
            findings.waiting.append(stored)
        elif now - stored.modified >= grace:
            findings.leftovers.append(stored)
    # NOTE: in upload order, so a repair lists restored images in the order they came.
    findings.quarantined = [
        stored
        for stored in sorted(images.quarantined(), key=_upload_order)
        if stored.id not in awaiting
    ]
    return findings


def _upload_order(stored: StoredObject) -> tuple[float, str]:
    return stored.modified, stored.id


def repair(
    index: KeptIndex,
    images: KeptStore,
    findings: Findings,
    *,
    read_size: SizeReader,
    read_placeholder: PlaceholderReader | None = None,
    read_animation: AnimationReader | None = None,
) -> Repairs:
    """Settle what ``inspect`` found; never delete an image the index may still want.

    With ``read_placeholder``, images without a placeholder get theirs, and
    restored images come back with one.
    """
    repairs = Repairs()
    readers = _Readers(read_size, read_placeholder, read_animation)
    for image in findings.missing:
        try:
            _still_missing(images, image.id)
            index.delete(image.id)
            repairs.dropped += 1
        except ImageNotFound:
            pass  # deleted meanwhile, or its JPEG is back
        except Exception as ex:
            repairs.failed.append(f'{image.id}: {ex}')
    for stored in findings.leftovers:
        try:
            images.delete(stored.id)
            repairs.removed += 1
        except Exception as ex:
            repairs.failed.append(f'{stored.id}: {ex}')
    for stored in findings.failed_writes:
        try:
            if _unlisted(index, stored.id):
                images.delete(stored.id)
                repairs.failed_writes_removed += 1
        except Exception as ex:
            repairs.failed.append(f'{stored.id}: {ex}')
    for stored in findings.unlisted:
        _restore(index, images, stored, readers, repairs, quarantined=False)
    for stored in findings.quarantined:
        _restore(index, images, stored, readers, repairs, quarantined=True)
    if read_placeholder is not None:
        for image in findings.without_placeholder:
            _give_placeholder(index, images, image.id, read_placeholder, repairs)
    for image in findings.missing_animations:
        repairs.failed.append(
            f'{image.id}: its animated WebP is gone, and only a backup has its frames '
            '(its JPEG, the first frame, is served)'
        )
    if findings.damage:
        try:
            index.rewrite()
            repairs.rewritten = True
        except Exception as ex:
            repairs.failed.append(f'the index could not be written again: {ex}')
    return repairs


def _unlisted(index: KeptIndex, image_id: str) -> bool:
    """Whether, as the index says now, no row lists ``image_id`` and it is not on the list."""
    try:
        index.get(image_id)
    except ImageNotFound:
        return not index.was_deleted(image_id) and image_id not in index.awaiting_removal()
    return False


def _still_missing(images: KeptStore, image_id: str) -> None:
    if images.exists(image_id):
        raise ImageNotFound(image_id)


def _restore(
    index: KeptIndex,
    images: KeptStore,
    stored: StoredObject,
    readers: _Readers,
    repairs: Repairs,
    *,
    quarantined: bool,
) -> None:
    """Restore an unlisted JPEG into the index; a WebP beside it makes it an animation."""
    try:
        if quarantined:
            images.restore(stored.id)
        with images.local_path(stored.id) as path:
            size, length = readers.size(path), os.stat(path).st_size
            thumbhash, color = readers.placeholder(path) if readers.placeholder else ('', '')
        frames = duration_ms = 0
        if readers.animation is not None and images.exists(stored.id, ANIMATION):
            with images.local_path(stored.id, ANIMATION) as path:
                frames, duration_ms = readers.animation(path)
        index.add(
            StoredImage(
                stored.id,
                int(stored.modified),
                size,
                length,
                thumbhash=thumbhash,
                color=color,
                frames=frames,
                duration_ms=duration_ms,
            )
        )
        repairs.restored += 1
    except ImageExists:
        pass  # listed meanwhile
    except Exception as ex:
        repairs.failed.append(f'{stored.id}: {ex}')


def _give_placeholder(
    index: KeptIndex,
    images: KeptStore,
    image_id: str,
    read_placeholder: PlaceholderReader,
    repairs: Repairs,
) -> None:
    try:
        with images.local_path(image_id) as path:
            thumbhash, color = read_placeholder(path)
        index.amend(image_id, thumbhash=thumbhash, color=color)
        repairs.placeholders += 1
    except ImageNotFound:
        pass  # deleted meanwhile
    except Exception as ex:
        repairs.failed.append(f'{image_id}: {ex}')


def quarantine_unlisted(index: KeptIndex, images: KeptStore) -> list[str]:
    """Move aside every JPEG the index does not list (a local store's start-up).

    Under the writers' lock, so no upload commits meanwhile; a file an
    upload still holds locked is that upload's, and stays, and so does one
    a delete left (on the list to remove, or of a deleted id), for the
    removal worker or a check to remove, never to be restored. Returns the
    ids moved.
    """
    moved = []
    with index.writes_paused():
        listed = {image.id for image in every_image(index)}
        listed |= index.awaiting_removal()
        for stored in images.objects():
            if (
                stored.id in listed
                or images.in_progress(stored.id)
                or index.was_deleted(stored.id)
            ):
                continue
            images.quarantine(stored.id)
            moved.append(stored.id)
    if moved:
        log.error(
            'the index does not list %d image files; moved them to quarantine '
            '(run `python -m look check` to see them, `--repair` to restore them): %s',
            len(moved),
            ', '.join(moved[:10]) + (' ...' if len(moved) > 10 else ''),
        )
    return moved
