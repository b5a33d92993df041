"""The Index interface, one set of promises run on every implementation.

The JSON-lines journal on a real directory and PostgreSQL on a schema of the
test's own keep the same promises: what serving needs (add, get, page,
delete, count), what upkeep reads (was_deleted, problems, check), and the
list of objects to remove (listed, claimed, held, postponed, dropped). What
only one of them does (a damaged journal, a dropped connection) is tested
beside it, in tests/core.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from look.core.index import (
    DELETED,
    FAILED_UPLOAD,
    Backlog,
    Index,
    KeptIndex,
    StoredImage,
    every_image,
)
from look.core.index.journal import JournalIndex
from look.core.index.postgres import PostgresIndex
from look.errors import ImageExists, ImageNotFound

from support.postgres import PostgresDatabase
from support.processes import wait_until
from support.storage import MALFORMED_IDS


@pytest.fixture(params=['journal', pytest.param('postgres', marks=pytest.mark.servers)])
def index(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[KeptIndex]:
    """An opened, empty index of each kind."""
    made: KeptIndex
    if request.param == 'journal':
        made = JournalIndex(tmp_path)
    else:
        postgres: PostgresDatabase = request.getfixturevalue('postgres')
        made = PostgresIndex(postgres.create_schema(f't{os.urandom(6).hex()}'))
    made.open()
    yield made
    made.close()


def image(modified: int = 1_700_000_000, size: tuple[int, int] = (640, 360)) -> StoredImage:
    return StoredImage(str(uuid.uuid4()), modified, size, 48_000, 'a' * 64)


def add_images(index: Index, count: int) -> list[StoredImage]:
    images = [image(1_700_000_000 + n) for n in range(count)]
    for each in images:
        index.add(each)
    return images


def test_an_added_image_is_found_as_it_was_added(index: Index) -> None:
    added = image()
    index.add(added)

    assert index.get(added.id) == added
    assert index.count() == 1
    assert index.check() is None
    assert index.problems() == []


def test_an_id_is_added_once(index: Index) -> None:
    added = image()
    index.add(added)

    with pytest.raises(ImageExists):
        index.add(StoredImage(added.id, 1, (1, 1)))
    assert index.get(added.id) == added


@pytest.mark.parametrize('image_id', ['0bdc7749-6de8-47ca-b13e-2fadf051a9cb', *MALFORMED_IDS])
def test_an_id_it_never_held_is_not_found(index: Index, image_id: str) -> None:
    with pytest.raises(ImageNotFound):
        index.get(image_id)
    assert not index.was_deleted(image_id)


def test_pages_come_in_upload_order_either_way_and_resume_after_a_cursor(index: Index) -> None:
    images = add_images(index, 5)
    ids = [each.id for each in images]

    assert [each.id for each in index.page(limit=10)] == ids
    assert [each.id for each in index.page(limit=2)] == ids[:2]
    assert [each.id for each in index.page(after=ids[1], limit=2)] == ids[2:4]
    assert [each.id for each in index.page(limit=10, newest_first=True)] == ids[::-1]
    assert [each.id for each in index.page(after=ids[3], limit=2, newest_first=True)] == [
        ids[2],
        ids[1],
    ]
    assert index.page(after=ids[-1], limit=10) == []
    assert index.page(limit=0) == []
    assert [each.id for each in every_image(index, page_size=2)] == ids


def test_a_cursor_naming_an_image_deleted_since_resumes_where_it_was(index: Index) -> None:
    images = add_images(index, 4)
    index.delete(images[1].id)

    assert [each.id for each in index.page(after=images[1].id, limit=10)] == [
        images[2].id,
        images[3].id,
    ]
    assert [each.id for each in index.page(after=images[1].id, limit=10, newest_first=True)] == [
        images[0].id
    ]


def test_a_cursor_naming_no_image_ever_held_is_refused(index: Index) -> None:
    add_images(index, 2)
    with pytest.raises(ImageNotFound):
        index.page(after=str(uuid.uuid4()), limit=10)


def test_a_delete_forgets_the_image_and_remembers_the_id(index: Index) -> None:
    kept, deleted = add_images(index, 2)

    assert index.delete(deleted.id) == deleted

    with pytest.raises(ImageNotFound):
        index.get(deleted.id)
    with pytest.raises(ImageNotFound):
        index.delete(deleted.id)
    assert index.was_deleted(deleted.id)
    assert not index.was_deleted(kept.id)
    assert index.count() == 1
    assert [each.id for each in index.page(limit=10)] == [kept.id]


def test_an_id_added_again_after_its_delete_is_listed_in_its_old_place(index: Index) -> None:
    """How a delete whose image file could not be removed is taken back."""
    first, middle, last = add_images(index, 3)
    index.delete(middle.id)

    index.add(middle)

    assert index.get(middle.id) == middle
    assert [each.id for each in index.page(limit=10)] == [first.id, middle.id, last.id]
    assert not index.was_deleted(middle.id)


def another(index: Index, tmp_path: pathlib.Path) -> KeptIndex:
    """Open another instance on the same store: another worker, or another host."""
    other: KeptIndex
    if isinstance(index, JournalIndex):
        other = JournalIndex(tmp_path)
    else:
        assert isinstance(index, PostgresIndex)
        other = PostgresIndex(index.url)
    other.open()
    return other


def test_a_second_instance_on_the_same_store_sees_every_change(
    index: Index, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    """Workers and hosts each open their own: an add or a delete by one is seen by the other."""
    other = another(index, tmp_path)
    try:
        added, deleted = add_images(index, 2)
        assert other.get(added.id) == added
        index.delete(deleted.id)
        with pytest.raises(ImageNotFound):
            other.get(deleted.id)
        assert [each.id for each in other.page(limit=10)] == [added.id]
        assert other.was_deleted(deleted.id)
    finally:
        other.close()


def test_what_is_said_of_an_image_is_kept_with_it(index: Index) -> None:
    """Alt text, placeholder and animation come back as the upload gave them."""
    described = dataclasses.replace(
        image(),
        alt='A heron on one leg, <at dusk> & "still"',
        thumbhash='1QcSHQRnh493V4dIh4eXh1h4kJUI',
        color='#5b6d7a',
        frames=12,
        duration_ms=1200,
    )
    index.add(described)

    assert index.get(described.id) == described
    assert index.page(limit=1) == [described]
    assert described.animated and not image().animated


def test_an_amend_changes_alt_text_and_placeholder_for_everyone(
    index: Index, tmp_path: pathlib.Path
) -> None:
    added = image()
    index.add(added)
    other = another(index, tmp_path)
    try:
        assert other.get(added.id) == added  # read once, so it may be kept

        amended = index.amend(added.id, alt='a red door')
        placed = index.amend(
            added.id, thumbhash='YJqGPQw7sFlslqhFafSE+Q6oJ1h2iHB2Rw', color='#8a3b2c'
        )

        assert amended == dataclasses.replace(added, alt='a red door')
        assert placed == dataclasses.replace(
            amended, thumbhash='YJqGPQw7sFlslqhFafSE+Q6oJ1h2iHB2Rw', color='#8a3b2c'
        )
        assert index.get(added.id) == placed
        assert wait_until(lambda: other.get(added.id) == placed, 6.0)
        assert index.amend(added.id) == placed  # nothing asked, nothing changed
        assert index.amend(added.id, alt='') == dataclasses.replace(placed, alt='')
    finally:
        other.close()


# -- the list of objects to remove ------------------------------------------------------


def test_a_delete_lists_its_object_and_a_claim_hands_it_out_once(index: KeptIndex) -> None:
    kept, deleted = add_images(index, 2)
    before = time.time()

    index.delete(deleted.id)

    assert index.awaiting_removal() == {deleted.id}
    backlog = index.removal_backlog()
    assert backlog.waiting == 1
    assert backlog.oldest_seconds is not None and 0 <= backlog.oldest_seconds < 5
    (claimed,) = index.claim_removals(limit=10, hold=60)
    assert (claimed.id, claimed.reason) == (deleted.id, DELETED)
    assert before - 1 <= claimed.listed <= time.time() + 1
    assert index.claim_removals(limit=10, hold=60) == []  # held by its claimant
    assert index.awaiting_removal() == {deleted.id}  # until its object is confirmed gone

    index.removal_done(deleted.id)

    assert index.awaiting_removal() == set()
    assert index.removal_backlog() == Backlog(0, None)
    assert index.get(kept.id) == kept


def test_an_upload_s_object_is_due_only_after_its_wait(index: KeptIndex) -> None:
    image_id = str(uuid.uuid4())

    index.remove_later(image_id, reason=FAILED_UPLOAD, after=0.5)
    index.remove_later(image_id, reason=FAILED_UPLOAD, after=0.0)  # never sooner than listed

    assert index.awaiting_removal() == {image_id}
    assert index.claim_removals(limit=10, hold=60) == []
    time.sleep(0.6)
    assert [(each.id, each.reason) for each in index.claim_removals(limit=10, hold=60)] == [
        (image_id, FAILED_UPLOAD)
    ]


def test_a_claim_lapses_after_its_hold_and_a_postponed_entry_waits(
    index: KeptIndex, tmp_path: pathlib.Path
) -> None:
    """A host that died holding a claim holds it no longer than its hold time."""
    other = another(index, tmp_path)
    try:
        image = add_images(index, 1)[0]
        index.delete(image.id)
        assert [each.id for each in index.claim_removals(limit=10, hold=0.4)] == [image.id]
        assert other.claim_removals(limit=10, hold=60) == []
        time.sleep(0.5)
        assert [each.id for each in other.claim_removals(limit=10, hold=60)] == [image.id]

        other.postpone_removals([image.id], after=0.4)

        assert index.claim_removals(limit=10, hold=60) == []
        time.sleep(0.5)
        assert [each.id for each in index.claim_removals(limit=10, hold=60)] == [image.id]
    finally:
        other.close()


def test_an_amend_of_an_image_not_there_is_not_found(index: Index) -> None:
    deleted = image()
    index.add(deleted)
    index.delete(deleted.id)

    for image_id in (deleted.id, str(uuid.uuid4()), 'not-an-id'):
        with pytest.raises(ImageNotFound):
            index.amend(image_id, alt='words')


def test_hosts_claiming_at_once_never_get_the_same_entry(
    index: KeptIndex, tmp_path: pathlib.Path
) -> None:
    hosts = [index, another(index, tmp_path), another(index, tmp_path)]
    ids = {str(uuid.uuid4()) for _ in range(30)}
    for image_id in ids:
        index.remove_later(image_id, reason=FAILED_UPLOAD, after=0)
    claims: list[list[str]] = [[] for _ in hosts]

    def claim(host: KeptIndex, claimed: list[str]) -> None:
        while batch := host.claim_removals(limit=4, hold=60):
            claimed += [each.id for each in batch]

    threads = [
        threading.Thread(target=claim, args=(host, claimed))
        for host, claimed in zip(hosts, claims, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for host in hosts[1:]:
            host.close()

    every = [image_id for claimed in claims for image_id in claimed]
    assert sorted(every) == sorted(ids)  # each once, none lost


def test_an_entry_whose_id_a_row_lists_is_dropped_never_handed_out(index: KeptIndex) -> None:
    """An upload's row committed after all (or a delete was undone): its object is an image's."""
    image = add_images(index, 1)[0]
    index.remove_later(image.id, reason=FAILED_UPLOAD, after=0)

    assert index.claim_removals(limit=10, hold=60) == []

    assert index.awaiting_removal() == set()
    assert index.get(image.id) == image


def test_the_backlog_counts_every_entry_and_ages_the_oldest(
    index: KeptIndex, tmp_path: pathlib.Path
) -> None:
    index.remove_later(str(uuid.uuid4()), reason=FAILED_UPLOAD, after=60)
    time.sleep(0.3)
    index.remove_later(str(uuid.uuid4()), reason=FAILED_UPLOAD, after=60)

    other = another(index, tmp_path)
    try:
        backlog = other.removal_backlog()
    finally:
        other.close()
    assert backlog.waiting == 2
    assert backlog.oldest_seconds is not None and 0.3 <= backlog.oldest_seconds < 5


def test_only_the_database_keeps_every_row(index: KeptIndex) -> None:
    """What check makes of an object no row lists: a failed write's, or an image to restore."""
    assert index.keeps_every_row is isinstance(index, PostgresIndex)
