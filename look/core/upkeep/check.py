"""Compare the index with the image store, and repair what a crash or damage left.

What can disagree, on any backend:

- *missing*: an index entry whose JPEG is gone (someone removed the file or
  object); repair drops the entry.
- *unlisted*: a JPEG the index has no record of, older than a grace time (an
  upload that crashed before its entry, or an entry lost to a damaged
  journal), and quarantined files (moved aside at start-up); repair restores
  them into the index with their size and upload time, since nothing says
  the user did not want them.
- *leftovers*: the JPEG of an image the index recorded as deleted (a delete
  whose file removal failed); repair removes it.

Nothing here runs on its own except ``quarantine_unlisted`` at the start of
a local store, and that moves files aside, never deletes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from look.core.imagestore import KeptStore, StoredObject
from look.core.index import KeptIndex, StoredImage, every_image
from look.errors import ImageExists, ImageNotFound

log = logging.getLogger(__name__)

# NOTE: an upload stores its JPEG a moment before its index entry; a JPEG
#   younger than this may be such an upload, not a crash's leftover.
DEFAULT_GRACE_SECONDS = 3600.0

SizeReader = Callable[[str], tuple[int, int]]


@dataclasses.dataclass
class Findings:
    """What a check found; empty lists everywhere mean index and store agree."""

    images: int = 0
    objects: int = 0
    missing: list[StoredImage] = dataclasses.field(default_factory=list)
    unlisted: list[StoredObject] = dataclasses.field(default_factory=list)
    quarantined: list[StoredObject] = dataclasses.field(default_factory=list)
    leftovers: list[StoredObject] = dataclasses.field(default_factory=list)
    damage: list[str] = dataclasses.field(default_factory=list)

    @property
    def sound(self) -> bool:
        """Whether there is nothing to repair."""
        return not (
            self.missing or self.unlisted or self.quarantined or self.leftovers or self.damage
        )


@dataclasses.dataclass
class Repairs:
    """What a repair did."""

    dropped: int = 0
    restored: int = 0
    removed: int = 0
    rewritten: bool = False
    failed: list[str] = dataclasses.field(default_factory=list)


def inspect(
    index: KeptIndex, images: KeptStore, *, grace: float = DEFAULT_GRACE_SECONDS
) -> Findings:
    """Compare index and image store; nothing is changed."""
    findings = Findings(damage=index.problems())
    # NOTE: objects are listed before the index is read: an upload that
    #   commits in between is then in both, never counted as unlisted.
    objects = list(images.objects())
    listed = {}
    for image in every_image(index):
        listed[image.id] = image
    findings.images = len(listed)
    findings.objects = len(objects)
    on_store = {stored.id for stored in objects}
    findings.missing = [image for image_id, image in listed.items() if image_id not in on_store]
    now = time.time()
    for stored in sorted(objects, key=_upload_order):
        if stored.id in listed:
            continue
        if index.was_deleted(stored.id):
            findings.leftovers.append(stored)
        elif now - stored.modified >= grace and not images.in_progress(stored.id):
            findings.unlisted.append(stored)
    # NOTE: in upload order, so a repair lists restored images in the order they came.
    findings.quarantined = sorted(images.quarantined(), key=_upload_order)
    return findings


def _upload_order(stored: StoredObject) -> tuple[float, str]:
    return stored.modified, stored.id


def repair(
    index: KeptIndex, images: KeptStore, findings: Findings, *, read_size: SizeReader
) -> Repairs:
    """Settle what ``inspect`` found; never delete an image the index may still want."""
    repairs = Repairs()
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
    for stored in findings.unlisted:
        _restore(index, images, stored, read_size, repairs, from_quarantine=False)
    for stored in findings.quarantined:
        _restore(index, images, stored, read_size, repairs, from_quarantine=True)
    if findings.damage:
        try:
            index.rewrite()
            repairs.rewritten = True
        except Exception as ex:
            repairs.failed.append(f'the index could not be written again: {ex}')
    return repairs


def _still_missing(images: KeptStore, image_id: str) -> None:
    if images.exists(image_id):
        raise ImageNotFound(image_id)


def _restore(
    index: KeptIndex,
    images: KeptStore,
    stored: StoredObject,
    read_size: SizeReader,
    repairs: Repairs,
    *,
    from_quarantine: bool,
) -> None:
    try:
        if from_quarantine:
            images.restore(stored.id)
        with images.local_path(stored.id) as path:
            size, length = read_size(path), os.stat(path).st_size
        index.add(StoredImage(stored.id, int(stored.modified), size, length))
        repairs.restored += 1
    except ImageExists:
        pass  # listed meanwhile
    except Exception as ex:
        repairs.failed.append(f'{stored.id}: {ex}')


def quarantine_unlisted(index: KeptIndex, images: KeptStore) -> list[str]:
    """Move aside every JPEG the index does not list (a local store's start-up).

    Under the writers' lock, so no upload commits meanwhile; a file an
    upload still holds locked is that upload's, and stays. Returns the ids moved.
    """
    moved = []
    with index.writes_paused():
        listed = {image.id for image in every_image(index)}
        for stored in images.objects():
            if stored.id in listed or images.in_progress(stored.id):
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
