"""The Index interface, one set of promises run on every implementation.

The JSON-lines journal on a real directory and PostgreSQL on a schema of the
test's own keep the same promises: what serving needs (add, get, page,
delete, count) and what upkeep reads (was_deleted, problems, check). What
only one of them does (a damaged journal, a dropped connection) is tested
beside it, in tests/core.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import uuid
from collections.abc import Iterator

import pytest

from look.core.index import Index, StoredImage, every_image
from look.core.index.journal import JournalIndex
from look.core.index.postgres import PostgresIndex
from look.errors import ImageExists, ImageNotFound

from support.postgres import PostgresDatabase
from support.processes import wait_until
from support.storage import MALFORMED_IDS


@pytest.fixture(params=['journal', pytest.param('postgres', marks=pytest.mark.servers)])
def index(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Index]:
    """An opened, empty index of each kind."""
    made: Index
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


@pytest.mark.parametrize('image_id', [str(uuid.uuid4()), *MALFORMED_IDS])
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


def _another(index: Index, tmp_path: pathlib.Path) -> Index:
    """Open another instance on the store of ``index``: another worker, or another host."""
    other: Index
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
    other = _another(index, tmp_path)
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
    other = _another(index, tmp_path)
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


def test_an_amend_of_an_image_not_there_is_not_found(index: Index) -> None:
    deleted = image()
    index.add(deleted)
    index.delete(deleted.id)

    for image_id in (deleted.id, str(uuid.uuid4()), 'not-an-id'):
        with pytest.raises(ImageNotFound):
            index.amend(image_id, alt='words')
