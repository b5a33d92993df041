"""The ImageStore interface, one set of promises run on every implementation.

A directory on local disk and an S3-compatible object store (this run's
SeaweedFS, on a prefix of the test's own) keep the same promises: what
serving needs (put, open, hand to the pool, delete) and what upkeep does
(list, quarantine, restore). What only one of them does (hard links, the
originals cache, an outage) is tested beside it, in tests/core.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest

from look.core.imagestore import ANIMATION, ImageStore
from look.core.imagestore.disk import DiskImageStore
from look.core.imagestore.originals import OriginalsCache
from look.core.imagestore.s3 import S3ImageStore
from look.core.spool import Spool, SpoolFile
from look.errors import ImageExists, ImageNotFound

from support.imagegen import animation, image_bytes
from support.seaweed import SeaweedServer
from support.storage import MALFORMED_IDS

JPEG = image_bytes('JPEG', (64, 48))
WEBP = animation('WEBP', (64, 48), frames=3)
BUCKET = 'look-contracts'


@pytest.fixture(params=['disk', pytest.param('s3', marks=pytest.mark.servers)])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[ImageStore]:
    """An opened, empty image store of each kind."""
    made: ImageStore
    if request.param == 'disk':
        made = DiskImageStore(tmp_path / 'storage')
    else:
        seaweed: SeaweedServer = request.getfixturevalue('seaweed')
        made = S3ImageStore(
            f's3://{BUCKET}/t{os.urandom(6).hex()}',
            options=seaweed.options,
            originals=OriginalsCache(tmp_path / 'originals', 1024 * 1024),
        )
    made.open()
    yield made
    made.close()


@pytest.fixture
def spool(tmp_path: pathlib.Path) -> Spool:
    spool = Spool(tmp_path / 'spool')
    spool.open()
    return spool


def finished(spool: Spool, data: bytes = JPEG) -> SpoolFile:
    """Return a finished JPEG in a locked spool file, as an upload hands it to the store."""
    upload = spool.create()
    upload.file.write(data)
    upload.file.flush()
    return upload


def put(store: ImageStore, spool: Spool, data: bytes = JPEG) -> str:
    image_id = str(uuid.uuid4())
    upload = finished(spool, data)
    try:
        store.put(image_id, upload)
    finally:
        upload.close()
    return image_id


def put_animation(store: ImageStore, spool: Spool) -> str:
    """Store a JPEG and its animation under a new id, as an upload of an animation does."""
    image_id = put(store, spool)
    upload = finished(spool, WEBP)
    try:
        store.put(image_id, upload, ANIMATION)
    finally:
        upload.close()
    return image_id


def read_original(store: ImageStore, image_id: str, kind: str = 'jpeg') -> bytes:
    original = store.open_original(image_id, kind)
    try:
        data = original.stream.read()
    finally:
        original.stream.close()
    assert original.length == len(data)
    return data


def test_a_stored_jpeg_reads_back_byte_for_byte_every_way(store: ImageStore, spool: Spool) -> None:
    image_id = put(store, spool)

    assert store.exists(image_id)
    assert read_original(store, image_id) == JPEG
    with store.local_path(image_id) as path:
        assert pathlib.Path(path).read_bytes() == JPEG
    assert store.state()['status'] == 'ok'


def test_an_id_is_stored_once(store: ImageStore, spool: Spool) -> None:
    image_id = put(store, spool)
    other = finished(spool, image_bytes('JPEG', (32, 24), seed=1))
    try:
        with pytest.raises(ImageExists):
            store.put(image_id, other)
    finally:
        other.close()
    assert read_original(store, image_id) == JPEG


def test_an_id_it_does_not_hold_is_not_found(store: ImageStore) -> None:
    image_id = str(uuid.uuid4())

    assert not store.exists(image_id)
    with pytest.raises(ImageNotFound):
        store.open_original(image_id)
    with pytest.raises(ImageNotFound), store.local_path(image_id):
        pass


@pytest.mark.parametrize('image_id', MALFORMED_IDS)
def test_a_malformed_id_never_becomes_a_path_or_a_key(store: ImageStore, image_id: str) -> None:
    with pytest.raises(ImageNotFound):
        store.open_original(image_id)


def test_a_delete_removes_the_jpeg_and_a_second_is_no_error(
    store: ImageStore, spool: Spool
) -> None:
    kept, deleted = put(store, spool), put(store, spool)

    store.delete(deleted)
    store.delete(deleted)

    assert not store.exists(deleted)
    with pytest.raises(ImageNotFound):
        store.open_original(deleted)
    assert read_original(store, kept) == JPEG


def test_objects_lists_every_jpeg_with_when_it_was_written(
    store: ImageStore, spool: Spool
) -> None:
    before = time.time()
    ids = {put(store, spool) for _ in range(3)}

    objects = list(store.objects())

    assert {stored.id for stored in objects} == ids
    # Whole seconds on some stores; a write is never dated in the future.
    assert all(before - 2 <= stored.modified <= time.time() + 1 for stored in objects)


def test_a_quarantined_jpeg_is_kept_apart_until_restored(store: ImageStore, spool: Spool) -> None:
    image_id = put(store, spool)

    store.quarantine(image_id)

    assert not store.exists(image_id)
    assert [stored.id for stored in store.objects()] == []
    assert [stored.id for stored in store.quarantined()] == [image_id]
    store.restore(image_id)
    assert read_original(store, image_id) == JPEG
    assert list(store.quarantined()) == []


def test_a_restore_never_replaces_a_jpeg_in_place(store: ImageStore, spool: Spool) -> None:
    image_id = put(store, spool)
    store.quarantine(image_id)
    again = finished(spool, image_bytes('JPEG', (32, 24), seed=2))
    try:
        store.put(image_id, again)
    finally:
        again.close()

    with pytest.raises(ImageExists):
        store.restore(image_id)
    assert read_original(store, image_id) == image_bytes('JPEG', (32, 24), seed=2)


# -- the animation beside a JPEG ---------------------------------------------------------


def test_an_animation_reads_back_byte_for_byte_beside_its_jpeg(
    store: ImageStore, spool: Spool
) -> None:
    image_id = put_animation(store, spool)

    assert store.exists(image_id) and store.exists(image_id, ANIMATION)
    assert read_original(store, image_id) == JPEG
    assert read_original(store, image_id, ANIMATION) == WEBP
    with store.local_path(image_id, ANIMATION) as path:
        assert pathlib.Path(path).read_bytes() == WEBP
    with store.local_path(image_id) as path:
        assert pathlib.Path(path).read_bytes() == JPEG


def test_a_still_image_has_no_animation(store: ImageStore, spool: Spool) -> None:
    image_id = put(store, spool)

    assert not store.exists(image_id, ANIMATION)
    with pytest.raises(ImageNotFound):
        store.open_original(image_id, ANIMATION)
    with pytest.raises(ImageNotFound), store.local_path(image_id, ANIMATION):
        pass


def test_an_animation_is_stored_once(store: ImageStore, spool: Spool) -> None:
    image_id = put_animation(store, spool)
    other = finished(spool, animation('WEBP', (32, 24), frames=2))
    try:
        with pytest.raises(ImageExists):
            store.put(image_id, other, ANIMATION)
    finally:
        other.close()
    assert read_original(store, image_id, ANIMATION) == WEBP


def test_a_delete_removes_the_animation_too(store: ImageStore, spool: Spool) -> None:
    kept, deleted = put_animation(store, spool), put_animation(store, spool)

    store.delete(deleted)
    store.delete(deleted)

    assert not store.exists(deleted) and not store.exists(deleted, ANIMATION)
    with pytest.raises(ImageNotFound):
        store.open_original(deleted, ANIMATION)
    assert read_original(store, kept, ANIMATION) == WEBP


def test_objects_lists_jpegs_and_animations_apart(store: ImageStore, spool: Spool) -> None:
    still, moving = put(store, spool), put_animation(store, spool)

    assert {stored.id for stored in store.objects()} == {still, moving}
    assert [stored.id for stored in store.objects(ANIMATION)] == [moving]


def test_a_quarantined_jpeg_takes_its_animation_along(store: ImageStore, spool: Spool) -> None:
    image_id = put_animation(store, spool)

    store.quarantine(image_id)

    assert not store.exists(image_id, ANIMATION)
    assert list(store.objects(ANIMATION)) == []
    store.restore(image_id)
    assert read_original(store, image_id, ANIMATION) == WEBP
    assert read_original(store, image_id) == JPEG
