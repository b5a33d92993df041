"""Store on a real directory: the journal, its repairs, and several writers at once.

A second ``Store`` on the same directory stands in for another gunicorn worker.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import json
import multiprocessing
import os
import pathlib
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from look.errors import ImageNotFound, StorageError
from look.store import TEMP_GRACE_SECONDS, Store, StoredImage

from imagegen import image_bytes

JPEG = image_bytes('JPEG', size=(8, 6))


def new_id(number: int | None = None) -> str:
    """Return a canonical id: random, or seeded by ``number`` (so not in sorted order)."""
    if number is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=random.Random(number).getrandbits(128), version=4))


def commit(store: Store, image_id: str | None = None, size: tuple[int, int] = (8, 6)) -> str:
    """Add an image the way an upload does: written to a locked temp file, then added."""
    image_id = image_id or new_id()
    temp = store.temporary()
    try:
        temp.file.write(JPEG)
        temp.file.flush()
        store.add(image_id, temp, size)
    finally:
        temp.close()
    return image_id


def index_lines(store: Store) -> list[bytes]:
    return store.index_path.read_bytes().splitlines(keepends=True)


def age(path: pathlib.Path, seconds: float) -> None:
    """Set the modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def store(root: pathlib.Path) -> Store:
    store = Store(root)
    store.open()
    return store


def other_worker(root: pathlib.Path) -> Store:
    """Return another process's view of the same storage, opened as a worker does."""
    store = Store(root)
    store.open()
    return store


def index_ops(root: pathlib.Path) -> list[tuple[str, str]]:
    """Return the index's records as (op, id), in order."""
    lines = (root / 'index.jsonl').read_text().splitlines()
    return [(record['op'], record['id']) for record in map(json.loads, lines)]


def write_index(root: pathlib.Path, *steps: tuple[str, list[str]]) -> None:
    """Write an index by hand into a new ``root``: each step adds or deletes its ids, in order."""
    records = [
        {'op': 'add', 'id': i, 'modified': 1, 'size': [8, 6]}
        if op == 'add'
        else {'op': op, 'id': i}
        for op, ids in steps
        for i in ids
    ]
    root.mkdir()
    (root / 'index.jsonl').write_text(''.join(json.dumps(record) + '\n' for record in records))


def fail_index_fsyncs(
    monkeypatch: pytest.MonkeyPatch, store: Store, reader: Store, *, times: int
) -> None:
    """Make the next ``times`` fsyncs of the index fail, after ``reader`` has read it."""
    index_inode = os.stat(store.index_path).st_ino
    real_fsync = os.fsync
    left = [times]

    def fsync(fd: int) -> None:
        if left[0] and os.fstat(fd).st_ino == index_inode:
            left[0] -= 1
            reader.list()  # another worker applies the complete, unsynced line
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)


def fail_undo_writes(monkeypatch: pytest.MonkeyPatch, op: str, *, written: int = 0) -> None:
    """Make writing an index line of ``op`` (the undo) fail, after its first ``written`` bytes."""
    marker = f'"{op}"'.encode()
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if marker in data:
            if written:
                real_write(fd, data[:written])
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    monkeypatch.setattr(os, 'write', write)


# -- adding, reading, listing ---------------------------------------------------


def test_add_then_get_list_and_file(store: Store) -> None:
    before = int(time.time())
    image_id = commit(store, size=(640, 360))

    image = store.get(image_id)
    assert image == StoredImage(image_id, image.modified, (640, 360))
    assert before <= image.modified <= time.time()
    assert store.path(image_id).read_bytes() == JPEG
    assert store.list() == [image]
    assert len(store) == 1


def test_open_image_reads_the_file_until_it_is_deleted(store: Store) -> None:
    image = store.get(commit(store))
    with store.open_image(image) as stored:
        assert stored.read() == JPEG

    store.path(image.id).unlink()  # as another worker's delete would, after our lookup

    with pytest.raises(ImageNotFound):
        store.open_image(image)


def test_modified_http_is_the_upload_time_as_an_http_date(store: Store) -> None:
    image = StoredImage(new_id(), 1_700_000_000, (8, 6))

    assert image.modified_http == 'Tue, 14 Nov 2023 22:13:20 GMT'
    assert email.utils.parsedate_to_datetime(image.modified_http).timestamp() == image.modified


def test_list_is_in_commit_order_not_id_order(store: Store) -> None:
    ids = [commit(store, new_id(n)) for n in range(6)]
    assert ids != sorted(ids)

    assert [image.id for image in store.list()] == ids


def test_add_moves_the_file_and_leaves_no_temp(store: Store) -> None:
    image_id = commit(store)

    assert sorted(os.listdir(store.images_dir)) == [f'{image_id}.jpeg']


def test_add_syncs_the_jpeg_then_its_name_then_its_index_line(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever moment a crash comes at, no indexed name is left without its bytes."""
    temp = store.temporary()
    temp.file.write(JPEG)  # the writer of the file does not fsync it
    temp.file.flush()
    synced_and_linked: list[str] = []
    names = {
        os.fstat(temp.file.fileno()).st_ino: 'jpeg',
        os.stat(store.images_dir).st_ino: 'directory',
        os.stat(store.index_path).st_ino: 'index',
    }
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        synced_and_linked.append(names.get(os.fstat(fd).st_ino, 'another file'))
        real_fsync(fd)

    def link(source: Any, target: Any, **kwargs: Any) -> None:
        synced_and_linked.append('link')
        real_link(source, target, **kwargs)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'link', link)
    try:
        store.add(new_id(), temp, (8, 6))
    finally:
        temp.close()

    assert synced_and_linked == ['jpeg', 'link', 'directory', 'index']


def test_an_add_whose_index_line_fails_to_sync_is_undone_for_every_reader(
    store: Store, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that applied the line drops the image again and keeps reading the index right."""
    earlier = commit(store)
    reader = other_worker(root)
    fail_index_fsyncs(monkeypatch, store, reader, times=1)
    failed = new_id()

    with pytest.raises(StorageError):
        commit(store, failed)

    assert index_ops(root) == [('add', earlier), ('add', failed), ('delete', failed)]
    assert not store.path(failed).exists()
    for view in (store, reader):
        assert [image.id for image in view.list()] == [earlier]
    later = commit(store)
    for view in (store, reader, other_worker(root)):
        assert [image.id for image in view.list()] == [earlier, later]


@pytest.mark.parametrize('undo_written', [0, 20], ids=['undo-not-written', 'undo-half-written'])
def test_an_add_that_cannot_be_undone_either_stays_whole(
    store: Store, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch, undo_written: int
) -> None:
    """The disk fails again: the index keeps only whole lines, and its image keeps its file."""
    reader = other_worker(root)
    fail_index_fsyncs(monkeypatch, store, reader, times=1)
    fail_undo_writes(monkeypatch, 'delete', written=undo_written)
    failed = new_id()

    with pytest.raises(StorageError):
        commit(store, failed)

    assert store.index_path.read_bytes().endswith(b'}\n')
    assert index_ops(root) == [('add', failed)]
    assert store.path(failed).read_bytes() == JPEG  # listed, so served
    for view in (store, reader, other_worker(root)):
        assert [image.id for image in view.list()] == [failed]


@pytest.mark.parametrize('times', [1, 2], ids=['undo-synced', 'undo-not-synced'])
def test_a_delete_whose_index_line_fails_to_sync_is_undone_for_every_reader(
    store: Store, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch, times: int
) -> None:
    """The image stays as it was, in its place, for the worker that read the delete too."""
    ids = [commit(store) for _ in range(3)]
    before = store.list()
    reader = other_worker(root)
    fail_index_fsyncs(monkeypatch, store, reader, times=times)

    with pytest.raises(StorageError):
        store.delete(ids[1])

    assert index_ops(root)[-2:] == [('delete', ids[1]), ('add', ids[1])]
    assert store.path(ids[1]).read_bytes() == JPEG
    for view in (store, reader, other_worker(root)):
        assert view.list() == before
    store.delete(ids[1])
    for view in (store, reader, other_worker(root)):
        assert [image.id for image in view.list()] == [ids[0], ids[2]]


def test_a_delete_that_cannot_be_undone_stands_and_its_file_goes(
    store: Store, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [commit(store) for _ in range(2)]
    reader = other_worker(root)
    fail_index_fsyncs(monkeypatch, store, reader, times=1)
    fail_undo_writes(monkeypatch, 'add')

    with pytest.raises(StorageError):
        store.delete(ids[0])

    assert index_ops(root)[-1] == ('delete', ids[0])
    assert not store.path(ids[0]).exists()
    for view in (store, reader, other_worker(root)):
        assert [image.id for image in view.list()] == [ids[1]]


def test_a_delete_undone_after_it_compacted_the_view_puts_the_image_back_in_place(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [new_id(n) for n in range(1100)]
    # One more delete and deleted ids are the majority: the view compacts.
    write_index(root, ('add', ids), ('delete', ids[:550]))
    store, reader = Store(root), Store(root)
    victim = ids[700]
    fail_index_fsyncs(monkeypatch, store, reader, times=1)

    with pytest.raises(StorageError):
        store.delete(victim)

    for view in (store, reader, Store(root)):
        assert [image.id for image in view.list(after=ids[699], limit=2)] == ids[700:702]
        assert [image.id for image in view.list(after=victim, limit=1)] == [ids[701]]
        assert len(view) == 550


def test_adding_an_existing_id_is_refused(store: Store) -> None:
    image_id = commit(store)

    with pytest.raises(StorageError):
        commit(store, image_id)
    assert [image.id for image in store.list()] == [image_id]
    assert store.path(image_id).read_bytes() == JPEG


def test_unknown_id_is_not_found(store: Store) -> None:
    with pytest.raises(ImageNotFound):
        store.get(new_id())


def test_delete_removes_entry_and_file(store: Store) -> None:
    kept, deleted = commit(store), commit(store)

    store.delete(deleted)

    assert [image.id for image in store.list()] == [kept]
    assert not store.path(deleted).exists()
    with pytest.raises(ImageNotFound):
        store.get(deleted)
    with pytest.raises(ImageNotFound):
        store.delete(deleted)


@pytest.mark.parametrize(
    'bad_id',
    [
        '../x',
        '../../index',
        '/etc/passwd',
        '',
        '.',
        'x' * 36,
        '00000000-0000-0000-0000-00000000000A',  # uppercase: not canonical
        '00000000000000000000000000000001',  # no hyphens: not canonical
        '00000000-0000-0000-0000-000000000001\n',
        '00000000-0000-0000-0000-000000000001/../../x',
    ],
)
def test_malformed_id_never_touches_the_disk(store: Store, bad_id: str) -> None:
    # A file where a path traversal from images/ would land.
    bait = store.root / 'x.jpeg'
    bait.write_bytes(b'not yours')
    index_before = store.index_path.read_bytes()

    for call in (store.get, store.path, store.delete):
        with pytest.raises(ImageNotFound):
            call(bad_id)
    with pytest.raises(ImageNotFound):
        store.list(after=bad_id)
    temp = store.temporary()
    with pytest.raises(ImageNotFound):
        store.add(bad_id, temp, (1, 1))
    assert temp.path.exists()  # not renamed anywhere
    temp.close()

    assert bait.read_bytes() == b'not yours'
    assert store.index_path.read_bytes() == index_before
    assert os.listdir(store.images_dir) == []


def test_list_after_and_limit(store: Store) -> None:
    ids = [commit(store, new_id(n)) for n in range(5)]

    def listed(**kwargs: object) -> list[str]:
        return [image.id for image in store.list(**kwargs)]  # type: ignore[arg-type]

    assert listed(limit=2) == ids[:2]
    assert listed(after=ids[1], limit=2) == ids[2:4]
    assert listed(after=ids[3]) == ids[4:]
    assert listed(after=ids[4]) == []
    assert listed(limit=100) == ids
    with pytest.raises(ImageNotFound):
        store.list(after=new_id(99))


def test_list_after_a_deleted_id_continues_from_its_place(store: Store) -> None:
    """A client paging through the list while an image is deleted keeps its place."""
    ids = [commit(store) for _ in range(4)]
    store.delete(ids[1])

    assert [image.id for image in store.list(after=ids[1])] == ids[2:]
    assert [image.id for image in store.list(limit=2)] == [ids[0], ids[2]]


def test_list_with_limit_zero_is_empty(store: Store) -> None:
    commit(store)

    assert store.list(limit=0) == []


def test_listing_stays_right_after_many_deletes(root: pathlib.Path) -> None:
    """Deleted ids are compacted away once they are most of the journal."""
    ids = [new_id(n) for n in range(1500)]
    write_index(root, ('add', ids), ('delete', ids[:1000]))
    store = Store(root)  # not opened: no image files to check against

    assert [image.id for image in store.list()] == ids[1000:]
    assert [image.id for image in store.list(after=ids[1200], limit=3)] == ids[1201:1204]
    assert len(store) == 500


def test_after_a_deleted_id_resumes_in_place_once_it_is_compacted_away(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every id ever committed works as a cursor, however often the view compacts."""
    compactions = []
    real_compact = Store._compact

    def compact(self: Store) -> None:
        compactions.append(len(self._order))
        real_compact(self)

    monkeypatch.setattr(Store, '_compact', compact)
    first = [new_id(n) for n in range(1500)]
    second = [new_id(n) for n in range(1500, 3500)]
    deleted = first[:1000] + second[:1900]
    write_index(
        root, ('add', first), ('delete', first[:1000]), ('add', second), ('delete', second[:1900])
    )
    store = Store(root)

    committed = first + second
    gone = set(deleted)
    next_two: list[str] = []  # the first two live ids after the one at hand
    for image_id in reversed(committed):
        assert [image.id for image in store.list(after=image_id, limit=2)] == next_two
        if image_id not in gone:
            next_two = [image_id, *next_two][:2]
    assert [image.id for image in store.list()] == first[1000:] + second[1900:]
    assert len(compactions) >= 2


def test_check_writable(store: Store) -> None:
    assert store.check_writable() is None
    assert os.listdir(store.images_dir) == []  # the probe file is gone

    shutil.rmtree(store.images_dir)

    assert isinstance(store.check_writable(), str)


# -- several workers --------------------------------------------------------------


def test_other_worker_sees_adds_and_deletes_on_its_next_call(root: pathlib.Path) -> None:
    first, second = other_worker(root), other_worker(root)
    assert second.list() == []

    image_id = commit(first)
    assert second.get(image_id) == first.get(image_id)
    assert [image.id for image in second.list()] == [image_id]

    second.delete(image_id)
    with pytest.raises(ImageNotFound):
        first.get(image_id)
    assert len(first) == 0


def test_index_replaced_on_disk_is_read_afresh(store: Store, root: pathlib.Path) -> None:
    """A restored backup (a new inode) replaces the view instead of being appended to it."""
    old = commit(store)
    restored = other_worker(root.parent / 'backup')
    kept = commit(restored)
    shutil.copy(restored.path(kept), store.path(kept))
    assert [image.id for image in store.list()] == [old]  # in this worker's view

    os.replace(restored.index_path, store.index_path)

    assert [image.id for image in store.list()] == [kept]
    with pytest.raises(ImageNotFound):
        store.get(old)
    with pytest.raises(ImageNotFound):
        store.list(after=old)


def _add_many(root: str, count: int) -> list[str]:
    """Run in a spawned process: open the store as a starting worker does, then add."""
    store = Store(pathlib.Path(root))
    store.open()
    return [commit(store) for _ in range(count)]


def test_concurrent_adds_from_threads_lose_nothing(store: Store) -> None:
    """gthread workers share one Store between their threads."""
    added: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(len(added))

    def work(slot: list[str]) -> None:
        barrier.wait()
        slot.extend(commit(store) for _ in range(10))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in added]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = {image_id for slot in added for image_id in slot}
    assert len(expected) == 40
    assert {image.id for image in store.list()} == expected
    assert {image.id for image in Store(store.root).list()} == expected
    lines = index_lines(store)
    assert len(lines) == 40
    assert all(line.endswith(b'\n') and json.loads(line)['op'] == 'add' for line in lines)


def test_concurrent_adds_from_processes_lose_nothing(root: pathlib.Path) -> None:
    """Each process opens the store (start-up repairs) while the others are adding."""
    context = multiprocessing.get_context('spawn')
    with context.Pool(3) as pool:
        results = pool.starmap(_add_many, [(str(root), 10)] * 3)

    expected = {image_id for result in results for image_id in result}
    assert len(expected) == 30
    store = other_worker(root)
    assert {image.id for image in store.list()} == expected
    assert sorted(os.listdir(store.images_dir)) == sorted(f'{i}.jpeg' for i in expected)


# -- repairs -----------------------------------------------------------------------


HALF_LINE = b'{"op":"add","id":"00000000-0000-0000-0000-0000000000'


def test_half_written_tail_is_cut_on_open(store: Store, root: pathlib.Path) -> None:
    image_id = commit(store)
    complete = store.index_path.read_bytes()
    with open(store.index_path, 'ab') as index:
        index.write(HALF_LINE)

    reopened = other_worker(root)

    assert store.index_path.read_bytes() == complete
    assert [image.id for image in reopened.list()] == [image_id]


def test_half_written_tail_is_cut_by_the_next_append(store: Store, root: pathlib.Path) -> None:
    """A worker that crashed mid-line must not glue its fragment to the next record."""
    reader = other_worker(root)
    first = commit(store)
    with open(store.index_path, 'ab') as index:
        index.write(HALF_LINE)
    assert [image.id for image in reader.list()] == [first]  # the fragment waits

    second = commit(store)

    lines = index_lines(store)
    assert [json.loads(line)['id'] for line in lines] == [first, second]
    assert [image.id for image in reader.list()] == [first, second]
    assert [image.id for image in other_worker(root).list()] == [first, second]


@pytest.mark.parametrize(
    'line',
    [
        b'this is not JSON\n',
        b'\xff\xfe\n',
        b'[]\n',
        b'"add"\n',
        b'{"op":"add"}\n',
        b'{"op":"add","id":"00000000-0000-0000-0000-000000000001","modified":1,"size":[1]}\n',
        b'{"op":"rename","id":"00000000-0000-0000-0000-000000000001"}\n',
        b'{"op":"add","id":"../../x","modified":1,"size":[1,1]}\n',
        b'{"op":"add","id":7,"modified":1,"size":[1,1]}\n',
        b'{"op":"add","id":"00000000-0000-0000-0000-000000000001","modified":1e999,'
        b'"size":[1,1]}\n',
    ],
)
def test_unreadable_line_is_skipped(store: Store, root: pathlib.Path, line: bytes) -> None:
    reader = other_worker(root)
    first = commit(store)
    with open(store.index_path, 'ab') as index:
        index.write(line)
    second = commit(store)

    assert [image.id for image in store.list()] == [first, second]
    assert [image.id for image in reader.list()] == [first, second]
    assert [image.id for image in other_worker(root).list()] == [first, second]


def test_unlisted_image_file_is_removed_on_open(store: Store, root: pathlib.Path) -> None:
    """An upload that crashed between rename and index line was never acknowledged."""
    listed = commit(store)
    unlisted = store.images_dir / f'{new_id()}.jpeg'
    unlisted.write_bytes(JPEG)
    foreign = store.images_dir / 'notes.txt'
    foreign.write_text('not ours to delete')

    other_worker(root)

    assert not unlisted.exists()
    assert store.path(listed).exists()
    assert foreign.exists()


def test_image_waiting_for_its_index_line_survives_another_workers_start(
    store: Store, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add() puts the file in place, then waits for the writers' lock to index it.

    Another worker that starts meanwhile must leave the file alone: the
    upload's lock on it says it is not a crashed upload's leftover.
    """
    upload = store.temporary()
    upload.file.write(JPEG)
    upload.file.flush()
    image_id = new_id()
    take_the_lock = store._exclusive

    @contextlib.contextmanager
    def another_worker_starts_first() -> Iterator[None]:
        assert store.path(image_id).exists()  # in place, not yet indexed
        other_worker(root)
        with take_the_lock():
            yield

    monkeypatch.setattr(store, '_exclusive', another_worker_starts_first)
    store.add(image_id, upload, (8, 6))
    upload.close()

    assert store.path(image_id).read_bytes() == JPEG
    assert [image.id for image in other_worker(root).list()] == [image_id]


def test_adding_an_existing_id_leaves_the_first_image_as_it_was(store: Store) -> None:
    image_id = commit(store)
    other = store.temporary()
    other.file.write(b'another picture')
    other.file.flush()

    with pytest.raises(StorageError):
        store.add(image_id, other, (8, 6))
    other.close()

    assert store.path(image_id).read_bytes() == JPEG
    assert [json.loads(line)['id'] for line in index_lines(store)] == [image_id]
    assert os.listdir(store.images_dir) == [f'{image_id}.jpeg']


def test_entry_whose_file_is_missing_is_dropped_on_open(store: Store, root: pathlib.Path) -> None:
    lost, kept = commit(store), commit(store)
    store.path(lost).unlink()

    reopened = other_worker(root)

    assert [image.id for image in reopened.list()] == [kept]
    assert [image.id for image in store.list()] == [kept]  # the drop is in the journal
    with pytest.raises(ImageNotFound):
        store.get(lost)


def test_abandoned_temp_file_is_removed_on_open(store: Store, root: pathlib.Path) -> None:
    abandoned = store.images_dir / '.0123456789abcdef01234567.tmp'
    abandoned.write_bytes(b'half an upload')
    age(abandoned, TEMP_GRACE_SECONDS + 5)

    other_worker(root)

    assert not abandoned.exists()


def test_fresh_unlocked_temp_file_is_kept(store: Store, root: pathlib.Path) -> None:
    """Another worker may have created it and not locked it yet."""
    fresh = store.images_dir / '.0123456789abcdef01234567.tmp'
    fresh.write_bytes(b'just created')
    age(fresh, TEMP_GRACE_SECONDS - 10)

    other_worker(root)

    assert fresh.read_bytes() == b'just created'


def test_locked_temp_file_survives_another_workers_start(store: Store, root: pathlib.Path) -> None:
    """The trap: start-up clean-up must never delete an upload in progress, however old."""
    upload = store.temporary()
    upload.file.write(JPEG)
    upload.file.flush()
    age(upload.path, 10 * TEMP_GRACE_SECONDS)  # a slow client

    other_worker(root)

    assert upload.path.read_bytes() == JPEG
    image_id = new_id()
    store.add(image_id, upload, (8, 6))
    upload.close()
    assert [image.id for image in other_worker(root).list()] == [image_id]
    assert os.listdir(store.images_dir) == [f'{image_id}.jpeg']
