"""The removal worker on a real directory: what failed writes leave, removed when it is safe.

A store whose puts land but go unanswered stands in for an object store
behind a stalled network, and an index whose commits go unanswered for a
database whose connection dropped during a commit. The shared backends,
the stalls and the outages themselves are in tests/e2e/test_outages.py.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from look.config import Config, settings_table
from look.core.imagestore import ANIMATION, Finished, PutInDoubt
from look.core.imagestore.disk import DiskImageStore
from look.core.imagestore.originals import OriginalsCache
from look.core.imagestore.s3 import S3ImageStore
from look.core.index import Backlog, CommitInDoubt, StoredImage
from look.core.index.journal import JournalIndex
from look.core.library import Library
from look.core.removals import DEFAULT_SETTLE, THREAD_NAME, Timing
from look.core.spool import Spool
from look.core.upkeep import check

from support.imagegen import animation, image_bytes
from support.processes import wait_until

JPEG = image_bytes('JPEG', size=(8, 6))
WEBP = animation('WEBP', (8, 6), frames=3)
QUICK = Timing(settle=0.5, poll=0.05, first_pause=0.02, most_pause=0.1)


class LandingLate(DiskImageStore):
    """A store whose puts are stored but never answered, as behind a network that stalled."""

    def put(self, image_id: str, jpeg: Finished, kind: str = 'jpeg') -> None:
        super().put(image_id, jpeg, kind)
        raise PutInDoubt('The image store does not answer now; try again shortly.')


class AnimationLandingLate(DiskImageStore):
    """A store whose puts of animations are stored but never answered."""

    def put(self, image_id: str, jpeg: Finished, kind: str = 'jpeg') -> None:
        super().put(image_id, jpeg, kind)
        if kind == ANIMATION:
            raise PutInDoubt('The image store does not answer now; try again shortly.')


class RefusingAnimations(DiskImageStore):
    """A store that refuses to put animations: a full disk, say."""

    def put(self, image_id: str, jpeg: Finished, kind: str = 'jpeg') -> None:
        if kind == ANIMATION:
            raise OSError(28, 'No space left on device')
        super().put(image_id, jpeg, kind)


class LosingAnswers(JournalIndex):
    """An index whose commits go unanswered, made (``committed``) or not: no one can tell."""

    committed = False

    def add(self, image: StoredImage) -> None:
        if self.committed:
            super().add(image)
        raise CommitInDoubt('The index database does not answer now; try again shortly.')


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def spool(root: pathlib.Path) -> Spool:
    spool = Spool(root / 'spool')
    spool.open()
    return spool


@pytest.fixture
def libraries() -> Iterator[list[Library]]:
    made: list[Library] = []
    yield made
    for library in made:
        library.close()


def open_library(
    libraries: list[Library],
    root: pathlib.Path,
    *,
    index: type[JournalIndex] = JournalIndex,
    images: type[DiskImageStore] = DiskImageStore,
) -> Library:
    library = Library(index(root), images(root), timing=QUICK)
    library.open()
    libraries.append(library)
    return library


def upload(library: Library, spool: Spool) -> str:
    """Add an image as an upload does; return its id, whatever the upload answered."""
    image_id = str(uuid.uuid4())
    jpeg = spool.create()
    try:
        jpeg.file.write(JPEG)
        jpeg.file.flush()
        library.add(StoredImage(image_id, int(time.time()), (8, 6), len(JPEG)), jpeg)
    finally:
        jpeg.close()
    return image_id


def upload_animation(library: Library, spool: Spool) -> str:
    """Add an animation as an upload does, its WebP beside its JPEG; return its id."""
    image_id = str(uuid.uuid4())
    first, frames = spool.create(), spool.create()
    try:
        first.file.write(JPEG)
        first.file.flush()
        frames.file.write(WEBP)
        frames.file.flush()
        image = StoredImage(
            image_id, int(time.time()), (8, 6), len(JPEG), frames=3, duration_ms=300
        )
        library.add(image, first, frames)
    finally:
        first.close()
        frames.close()
    return image_id


def jpeg(root: pathlib.Path, image_id: str) -> pathlib.Path:
    return root / 'images' / f'{image_id}.jpeg'


def removers() -> list[threading.Thread]:
    """Return the removal workers' threads running in this process."""
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


def test_the_worker_starts_with_the_first_use_and_stops_with_close(
    libraries: list[Library], root: pathlib.Path
) -> None:
    others = set(removers())  # of libraries other tests left open
    library = open_library(libraries, root)
    assert set(removers()) == others  # nothing at import or at open

    library.page(limit=10)

    (started,) = set(removers()) - others
    library.close()
    assert not started.is_alive()


def test_an_upload_answered_503_loses_its_late_object_after_the_wait_never_before(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    library = open_library(libraries, root, images=LandingLate)
    started = time.monotonic()

    with pytest.raises(PutInDoubt):
        image_id = upload(library, spool)
    (image_id,) = library.index.awaiting_removal()

    assert jpeg(root, image_id).exists()  # the write landed after all
    assert library.page(limit=10) == []
    findings = check.inspect(library.index, library.images, grace=0)
    assert ([each.id for each in findings.waiting], findings.unlisted) == ([image_id], [])
    assert wait_until(lambda: not jpeg(root, image_id).exists(), 5, 0.01)
    assert time.monotonic() - started >= QUICK.settle
    assert wait_until(lambda: library.removal_backlog() == Backlog(0, None), 1)


def test_a_commit_without_an_answer_keeps_the_object_of_a_row_that_committed(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    index = LosingAnswers(root)
    index.committed = True
    library = Library(index, DiskImageStore(root), timing=QUICK)
    library.open()
    libraries.append(library)

    with pytest.raises(CommitInDoubt):
        upload(library, spool)

    (image,) = library.page(limit=10)
    time.sleep(2 * QUICK.settle)
    assert jpeg(root, image.id).read_bytes() == JPEG
    assert library.index.awaiting_removal() == set()


def test_a_commit_without_an_answer_that_did_not_commit_loses_its_object_after_the_wait(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    library = open_library(libraries, root, index=LosingAnswers)

    with pytest.raises(CommitInDoubt):
        upload(library, spool)

    (image_id,) = library.index.awaiting_removal()
    assert jpeg(root, image_id).exists()  # a row may yet commit: not at once
    assert wait_until(lambda: not jpeg(root, image_id).exists(), 5, 0.01)
    assert wait_until(lambda: library.index.awaiting_removal() == set(), 1)


def test_an_object_that_comes_back_after_its_removal_stays_listed_until_it_is_gone(
    libraries: list[Library],
    root: pathlib.Path,
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Confirmed by asking the store: a write that lands after the delete is not taken for gone."""
    library = open_library(libraries, root, images=LandingLate)
    with pytest.raises(PutInDoubt):
        upload(library, spool)
    (image_id,) = library.index.awaiting_removal()
    kept = jpeg(root, image_id).read_bytes()
    landings = [2]
    remove = library.images.delete

    def delete(image_id: str) -> None:
        remove(image_id)
        if landings[0]:
            landings[0] -= 1
            jpeg(root, image_id).write_bytes(kept)  # a held write lands just after

    monkeypatch.setattr(library.images, 'delete', delete)

    assert wait_until(lambda: not landings[0] and not jpeg(root, image_id).exists(), 5, 0.01)
    assert wait_until(lambda: library.index.awaiting_removal() == set(), 1)


def test_the_wait_for_a_failed_upload_is_well_over_what_a_put_takes(
    tmp_path: pathlib.Path,
) -> None:
    """And the README's table states the figure look computes."""
    store = S3ImageStore(
        's3://bucket', options={}, originals=OriginalsCache(tmp_path / 'originals', 0)
    )

    assert store.put_gives_up_within == 11
    assert 2.5 * store.put_gives_up_within < DEFAULT_SETTLE
    assert Config(environ={}).remove_failed_uploads_after == DEFAULT_SETTLE
    row = next(line for line in settings_table().splitlines() if 'FAILED_UPLOADS' in line)
    assert f'`{DEFAULT_SETTLE:g}`' in row
    assert f'within {store.put_gives_up_within:g} s' in row


def test_a_delete_on_a_read_only_disk_stays_listed_and_health_counts_it(
    libraries: list[Library], root: pathlib.Path, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = open_library(libraries, root)
    image_id = upload(library, spool)

    def refuse(*args: Any) -> None:
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(library.images, 'delete', refuse)
    library.delete(image_id)

    time.sleep(5 * QUICK.most_pause)
    backlog = library.removal_backlog()
    assert backlog.waiting == 1
    assert backlog.oldest_seconds is not None and backlog.oldest_seconds >= 4 * QUICK.most_pause
    assert jpeg(root, image_id).exists()


def test_an_animation_answered_503_loses_both_objects_after_the_wait(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    library = open_library(libraries, root, images=AnimationLandingLate)

    with pytest.raises(PutInDoubt):
        upload_animation(library, spool)
    (image_id,) = library.index.awaiting_removal()

    assert jpeg(root, image_id).exists() and (root / 'images' / f'{image_id}.webp').exists()
    assert library.page(limit=10) == []
    assert wait_until(lambda: os.listdir(root / 'images') == [], 5, 0.01)
    assert wait_until(lambda: library.removal_backlog() == Backlog(0, None), 1)


def test_an_animation_the_store_refuses_takes_its_jpeg_back_at_once(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    library = open_library(libraries, root, images=RefusingAnimations)

    with pytest.raises(OSError):
        upload_animation(library, spool)

    assert os.listdir(root / 'images') == []
    assert library.page(limit=10) == []
    assert library.index.awaiting_removal() == set()


def test_a_deleted_animation_loses_both_objects(
    libraries: list[Library], root: pathlib.Path, spool: Spool
) -> None:
    library = open_library(libraries, root)
    image_id = upload_animation(library, spool)
    assert sorted(os.listdir(root / 'images')) == [f'{image_id}.jpeg', f'{image_id}.webp']

    library.delete(image_id)

    assert os.listdir(root / 'images') == []
    assert library.removal_backlog() == Backlog(0, None)
