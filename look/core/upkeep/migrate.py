"""Move a local store into the shared backends: ``python -m look migrate``.

Every id the local journal ever committed is copied in its order: an image
as its JPEG (put first) and then its row, with its upload time, size and
delete-token hash; a deleted id as a tombstone, so cursors that name it
still work. Ids the index already has are skipped, so a run that was
interrupted is finished by running it again, and a finished one changes
nothing. The local store is only read.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from look.core.imagestore import ANIMATION, JPEG, ImageStore
from look.core.index import StoredImage
from look.core.index.journal import JournalIndex
from look.core.index.postgres import PostgresIndex
from look.errors import ImageExists, ImageNotFound

# Ids moved per index transaction; their JPEGs are put first, several at once.
BATCH = 200
PUTS_AT_ONCE = 8

Entry = tuple[str, StoredImage | None]


@dataclasses.dataclass
class Moved:
    """What a migration did."""

    images: int = 0  # rows of images written
    copied: int = 0  # JPEGs put into the target store
    copied_bytes: int = 0
    present: int = 0  # JPEGs or rows the target had already
    tombstones: int = 0  # rows of deleted ids written
    failed: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Local:
    """A stored JPEG on local disk, handed to a store's put()."""

    path: str
    file: IO[bytes]


def migrate(
    index: JournalIndex,
    images: ImageStore,
    *,
    to_index: PostgresIndex,
    to_images: ImageStore | None,
    report: Callable[[str], None],
) -> Moved:
    """Copy every image and deleted id of a local store into ``to_index`` (and ``to_images``).

    With ``to_images`` None the JPEGs stay where they are (a filesystem
    every host mounts) and only the index moves.
    """
    history = index.history()
    live = sum(1 for _, image in history if image is not None)
    report(f'{live} images and {len(history) - live} deleted ids to move')
    moved = Moved()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PUTS_AT_ONCE) as puts:
        for done, batch in _batches(history):
            known = to_index.known([image_id for image_id, _ in batch])
            todo = [(image_id, image) for image_id, image in batch if image_id not in known]
            moved.present += len(batch) - len(todo)
            if to_images is not None:
                copies = [image for _, image in todo if image is not None]
                outcomes = list(puts.map(lambda image: _copy(images, to_images, image), copies))
                failed = set()
                for image, outcome in zip(copies, outcomes, strict=True):
                    if isinstance(outcome, str):
                        moved.failed.append(f'{image.id}: {outcome}')
                        failed.add(image.id)
                    elif outcome:
                        moved.copied += 1
                        moved.copied_bytes += image.length
                # NOTE: no row for a JPEG that is not in the target store.
                todo = [(image_id, image) for image_id, image in todo if image_id not in failed]
            to_index.import_entries(todo)
            moved.images += sum(1 for _, image in todo if image is not None)
            moved.tombstones += sum(1 for _, image in todo if image is None)
            report(
                f'{done}/{len(history)} ids: {moved.images} images and {moved.tombstones} '
                f'deleted ids written, {moved.copied} JPEGs copied '
                f'({moved.copied_bytes / 1e6:.1f} MB), {moved.present} there already '
                f'[{time.monotonic() - started:.1f} s]'
            )
    to_index.analyze()
    return moved


def _batches(history: Sequence[Entry]) -> Iterator[tuple[int, Sequence[Entry]]]:
    for start in range(0, len(history), BATCH):
        batch = history[start : start + BATCH]
        yield start + len(batch), batch


def _copy(images: ImageStore, to_images: ImageStore, image: StoredImage) -> bool | str:
    """Put one JPEG (and animation) into the target; True if copied, False if there, or why not.

    The animation first, as an upload stores it before its row: a JPEG in
    the target always has its animation beside it.
    """
    copied = False
    kinds = (ANIMATION, JPEG) if image.animated else (JPEG,)
    for kind in kinds:
        try:
            with images.local_path(image.id, kind) as path, open(path, 'rb') as file:
                try:
                    to_images.put(image.id, _Local(path, file), kind)
                except ImageExists:
                    continue  # put by an interrupted run: an object is whole or absent
                copied = True
        except (FileNotFoundError, ImageNotFound):
            what = 'animated WebP' if kind == ANIMATION else 'JPEG'
            return f'its {what} is missing from the local store; run `python -m look check`'
        except Exception as ex:
            return str(ex)
    return copied
