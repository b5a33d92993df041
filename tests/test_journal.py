"""JournalIndex on a real directory: the journal, its damage, and several writers at once.

A second ``JournalIndex`` on the same directory stands in for another gunicorn worker.
What the image files do alongside the journal is pinned in test_library.py.
"""

from __future__ import annotations

import email.utils
import fcntl
import json
import logging
import os
import pathlib
import random
import re
import threading
import uuid
import zlib

import pytest

from look.errors import ImageExists, ImageNotFound, StorageError
from look.index import StoredImage, every_image
from look.index.journal import MAX_PROBLEMS_KEPT, JournalIndex, decode_line, encode_line

from storage import fail_index_fsyncs, fail_undo_writes, index_records

SIZE = (8, 6)
# A line a crash cut short: no newline, not even its checksum.
HALF_LINE = b'{"op":"add","id":"00000000-0000-0000-0000-0000000000'


def new_id(number: int | None = None) -> str:
    """Return a canonical id: random, or seeded by ``number`` (so not in sorted order)."""
    if number is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=random.Random(number).getrandbits(128), version=4))


def stored(image_id: str | None = None, *, modified: int = 1_700_000_000) -> StoredImage:
    """Return an image as an upload records it."""
    return StoredImage(image_id or new_id(), modified, SIZE, 1234, 'ab' * 32)


def add(index: JournalIndex, image_id: str | None = None) -> str:
    """Add an image to the index; return its id."""
    image = stored(image_id)
    index.add(image)
    return image.id


def open_index(root: pathlib.Path) -> JournalIndex:
    """Return another process's view of the same journal, opened as a worker does."""
    index = JournalIndex(root)
    index.open()
    return index


def listed(index: JournalIndex, **kwargs: object) -> list[str]:
    """Return the ids of a page (every image unless ``limit`` says otherwise)."""
    kwargs.setdefault('limit', 1_000_000)
    return [image.id for image in index.page(**kwargs)]  # type: ignore[arg-type]


def index_ops(root: pathlib.Path) -> list[tuple[str, str]]:
    """Return the journal's records as (op, id), in order (every line must be sound)."""
    return [(str(record['op']), str(record['id'])) for record in index_records(root)]


def write_index(root: pathlib.Path, *steps: tuple[str, list[str]], checksums: bool = True) -> None:
    """Write a journal by hand into a new ``root``: each step adds or deletes its ids, in order."""
    records: list[dict[str, object]] = [
        {'op': 'add', 'id': i, 'modified': 1, 'size': [*SIZE]}
        if op == 'add'
        else {'op': op, 'id': i}
        for op, ids in steps
        for i in ids
    ]
    root.mkdir()
    with open(root / 'index.jsonl', 'wb') as journal:
        for record in records:
            journal.write(
                encode_line(record) if checksums else json.dumps(record).encode() + b'\n'
            )


def append_raw(index: JournalIndex, data: bytes) -> None:
    """Append bytes to the journal behind the index's back."""
    with open(index.path, 'ab') as journal:
        journal.write(data)


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def index(root: pathlib.Path) -> JournalIndex:
    return open_index(root)


# -- lines ------------------------------------------------------------------------


def test_a_line_is_the_record_a_tab_and_its_crc32() -> None:
    record: dict[str, object] = {'op': 'delete', 'id': new_id(1)}

    line = encode_line(record)

    payload = json.dumps(record, separators=(',', ':')).encode()
    assert line == payload + b'\t' + f'{zlib.crc32(payload):08x}'.encode() + b'\n'
    assert decode_line(line.rstrip(b'\n')) == record


def test_every_flipped_bit_of_a_line_is_detected() -> None:
    """One flipped bit anywhere (the checksum, the tab too) never reads as another record."""
    record: dict[str, object] = {
        'op': 'add',
        'id': new_id(2),
        'modified': 1_700_000_000,
        'size': [8, 6],
    }
    body = encode_line(record).rstrip(b'\n')
    for position in range(len(body)):
        for bit in range(8):
            flipped = bytearray(body)
            flipped[position] ^= 1 << bit
            # The journal is read line by line: a bit that makes a line break splits it.
            read, damaged = [], 0
            for piece in bytes(flipped).splitlines():
                try:
                    read.append(decode_line(piece))
                except ValueError:
                    damaged += 1
            assert damaged, (position, bit)
            assert all(found == record for found in read), (position, bit, read)


def test_lines_without_a_checksum_are_still_read(root: pathlib.Path) -> None:
    """Journals written before lines had checksums keep working, and new lines join them."""
    old = [new_id(n) for n in range(3)]
    write_index(root, ('add', old), ('delete', old[1:2]), checksums=False)
    index = open_index(root)

    later = add(index)

    assert listed(index) == [old[0], old[2], later]
    assert index.problems() == []
    assert listed(open_index(root)) == [old[0], old[2], later]
    assert b'\t' not in index.path.read_bytes().splitlines()[0]
    assert re.fullmatch(rb'\{.*\}\t[0-9a-f]{8}', index.path.read_bytes().splitlines()[-1])


# -- adding, reading, listing ---------------------------------------------------


def test_add_then_get_page_and_count(index: JournalIndex, root: pathlib.Path) -> None:
    image = StoredImage(new_id(), 1_700_000_000, (640, 360), 4321, 'cd' * 32)

    index.add(image)

    assert index.get(image.id) == image
    assert index.page(limit=10) == [image]
    assert index.count() == 1
    assert open_index(root).get(image.id) == image  # length and token hash survive a reread
    assert index_records(root) == [
        {
            'op': 'add',
            'id': image.id,
            'modified': 1_700_000_000,
            'size': [640, 360],
            'length': 4321,
            'token': 'cd' * 32,
        }
    ]


def test_modified_http_is_the_upload_time_as_an_http_date() -> None:
    image = stored(modified=1_700_000_000)

    assert image.modified_http == 'Tue, 14 Nov 2023 22:13:20 GMT'
    assert email.utils.parsedate_to_datetime(image.modified_http).timestamp() == image.modified


def test_page_is_in_commit_order_not_id_order(index: JournalIndex) -> None:
    ids = [add(index, new_id(n)) for n in range(6)]
    assert ids != sorted(ids)

    assert listed(index) == ids
    assert listed(index, newest_first=True) == ids[::-1]
    assert [image.id for image in every_image(index, page_size=4)] == ids


def test_an_add_whose_line_fails_to_sync_is_undone_for_every_reader(
    index: JournalIndex, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that applied the line drops the image again and keeps reading the journal right."""
    earlier = add(index)
    reader = open_index(root)
    fail_index_fsyncs(monkeypatch, index.path, reader.count, times=1)
    failed = new_id()

    with pytest.raises(StorageError):
        add(index, failed)

    assert index_ops(root) == [('add', earlier), ('add', failed), ('delete', failed)]
    for view in (index, reader):
        assert listed(view) == [earlier]
    later = add(index)
    for view in (index, reader, open_index(root)):
        assert listed(view) == [earlier, later]
        assert view.problems() == []


@pytest.mark.parametrize('undo_written', [0, 20], ids=['undo-not-written', 'undo-half-written'])
def test_an_add_that_cannot_be_undone_either_stays_whole(
    index: JournalIndex, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch, undo_written: int
) -> None:
    """The disk fails again: the journal keeps only whole lines, and the image stays listed."""
    reader = open_index(root)
    fail_index_fsyncs(monkeypatch, index.path, reader.count, times=1)
    fail_undo_writes(monkeypatch, 'delete', written=undo_written)
    failed = new_id()

    with pytest.raises(StorageError):
        add(index, failed)

    assert index.path.read_bytes().endswith(b'\n')
    assert index_ops(root) == [('add', failed)]
    for view in (index, reader, open_index(root)):
        assert listed(view) == [failed]
        assert view.problems() == []


@pytest.mark.parametrize('times', [1, 2], ids=['undo-synced', 'undo-not-synced'])
def test_a_delete_whose_line_fails_to_sync_is_undone_for_every_reader(
    index: JournalIndex, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch, times: int
) -> None:
    """The image stays as it was, in its place, for the worker that read the delete too."""
    ids = [add(index) for _ in range(3)]
    before = index.page(limit=10)
    reader = open_index(root)
    fail_index_fsyncs(monkeypatch, index.path, reader.count, times=times)

    with pytest.raises(StorageError):
        index.delete(ids[1])

    assert index_ops(root)[-2:] == [('delete', ids[1]), ('add', ids[1])]
    for view in (index, reader, open_index(root)):
        assert view.page(limit=10) == before
        assert not view.was_deleted(ids[1])
    index.delete(ids[1])
    for view in (index, reader, open_index(root)):
        assert listed(view) == [ids[0], ids[2]]


def test_a_delete_that_cannot_be_undone_stands(
    index: JournalIndex, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller can tell by ``was_deleted`` (the library removes the JPEG to match)."""
    ids = [add(index) for _ in range(2)]
    reader = open_index(root)
    fail_index_fsyncs(monkeypatch, index.path, reader.count, times=1)
    fail_undo_writes(monkeypatch, 'add')

    with pytest.raises(StorageError):
        index.delete(ids[0])

    assert index_ops(root)[-1] == ('delete', ids[0])
    for view in (index, reader, open_index(root)):
        assert listed(view) == [ids[1]]
        assert view.was_deleted(ids[0])


def test_a_delete_undone_after_it_compacted_the_view_puts_the_image_back_in_place(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [new_id(n) for n in range(1100)]
    # One more delete and deleted ids are the majority: the view compacts.
    write_index(root, ('add', ids), ('delete', ids[:550]))
    index, reader = JournalIndex(root), JournalIndex(root)
    victim = ids[700]
    fail_index_fsyncs(monkeypatch, index.path, reader.count, times=1)

    with pytest.raises(StorageError):
        index.delete(victim)

    for view in (index, reader, JournalIndex(root)):
        assert listed(view, after=ids[699], limit=2) == ids[700:702]
        assert listed(view, after=victim, limit=1) == [ids[701]]
        assert view.count() == 550


def test_adding_an_existing_id_is_refused(index: JournalIndex, root: pathlib.Path) -> None:
    image_id = add(index)

    with pytest.raises(ImageExists):
        index.add(StoredImage(image_id, 1, (1, 1)))

    assert index_ops(root) == [('add', image_id)]
    assert index.get(image_id).size == SIZE


def test_unknown_id_is_not_found(index: JournalIndex) -> None:
    add(index)
    unknown = new_id()

    for call in (index.get, index.delete):
        with pytest.raises(ImageNotFound):
            call(unknown)
    assert not index.was_deleted(unknown)


def test_delete_forgets_the_image_and_remembers_that_it_was_deleted(
    index: JournalIndex, root: pathlib.Path
) -> None:
    kept, deleted = add(index), add(index)

    assert index.delete(deleted) == stored(deleted)

    assert listed(index) == [kept]
    assert index.count() == 1
    assert index.was_deleted(deleted) and not index.was_deleted(kept)
    with pytest.raises(ImageNotFound):
        index.get(deleted)
    with pytest.raises(ImageNotFound):
        index.delete(deleted)
    assert index_ops(root) == [('add', kept), ('add', deleted), ('delete', deleted)]


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
        '00000000-0000-0000-0000-000000000001\t00000000',
    ],
)
def test_malformed_id_never_reaches_the_journal(index: JournalIndex, bad_id: str) -> None:
    image_id = add(index)
    journal_before = index.path.read_bytes()

    for call in (index.get, index.delete):
        with pytest.raises(ImageNotFound):
            call(bad_id)
    for newest_first in (False, True):
        with pytest.raises(ImageNotFound):
            index.page(after=bad_id, limit=10, newest_first=newest_first)
    with pytest.raises(ImageNotFound):
        index.add(StoredImage(bad_id, 1, (1, 1)))
    assert not index.was_deleted(bad_id)

    assert index.path.read_bytes() == journal_before
    assert listed(index) == [image_id]
    assert index.problems() == []


def test_page_after_and_limit(index: JournalIndex) -> None:
    ids = [add(index, new_id(n)) for n in range(5)]

    assert listed(index, limit=2) == ids[:2]
    assert listed(index, after=ids[1], limit=2) == ids[2:4]
    assert listed(index, after=ids[3]) == ids[4:]
    assert listed(index, after=ids[4]) == []
    assert listed(index, limit=100) == ids
    assert listed(index, limit=2, newest_first=True) == [ids[4], ids[3]]
    assert listed(index, after=ids[3], newest_first=True) == ids[2::-1]
    assert listed(index, after=ids[0], newest_first=True) == []
    with pytest.raises(ImageNotFound):
        index.page(after=new_id(99), limit=10)


def test_page_after_a_deleted_id_continues_from_its_place(index: JournalIndex) -> None:
    """A client paging through the list while an image is deleted keeps its place."""
    ids = [add(index) for _ in range(4)]
    index.delete(ids[1])

    assert listed(index, after=ids[1]) == ids[2:]
    assert listed(index, after=ids[1], newest_first=True) == [ids[0]]
    assert listed(index, limit=2) == [ids[0], ids[2]]


def test_page_with_limit_zero_is_empty(index: JournalIndex) -> None:
    add(index)

    assert index.page(limit=0) == []


def test_listing_stays_right_after_many_deletes(root: pathlib.Path) -> None:
    """Deleted ids are compacted away once they are most of the journal."""
    ids = [new_id(n) for n in range(1500)]
    write_index(root, ('add', ids), ('delete', ids[:1000]))
    index = JournalIndex(root)  # read as it is, without open()

    assert listed(index) == ids[1000:]
    assert listed(index, after=ids[1200], limit=3) == ids[1201:1204]
    assert index.count() == 500


def test_after_a_deleted_id_resumes_in_place_once_it_is_compacted_away(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every id ever committed works as a cursor, however often the view compacts."""
    compactions = []
    real_compact = JournalIndex._compact

    def compact(self: JournalIndex) -> None:
        compactions.append(len(self._order))
        real_compact(self)

    monkeypatch.setattr(JournalIndex, '_compact', compact)
    first = [new_id(n) for n in range(1500)]
    second = [new_id(n) for n in range(1500, 3500)]
    deleted = first[:1000] + second[:1900]
    write_index(
        root, ('add', first), ('delete', first[:1000]), ('add', second), ('delete', second[:1900])
    )
    index = JournalIndex(root)

    committed = first + second
    gone = set(deleted)
    next_two: list[str] = []  # the first two live ids after the one at hand
    for image_id in reversed(committed):
        assert listed(index, after=image_id, limit=2) == next_two
        if image_id not in gone:
            next_two = [image_id, *next_two][:2]
    assert listed(index) == first[1000:] + second[1900:]
    assert len(compactions) >= 2


def test_check_says_whether_the_journal_can_be_read(
    index: JournalIndex, root: pathlib.Path
) -> None:
    files_before = sorted(os.listdir(root))
    assert index.check() is None
    assert sorted(os.listdir(root)) == files_before  # a check writes nothing

    index.path.unlink()
    index.path.mkdir()  # what stands where the journal was cannot be read as one

    problem = index.check()
    assert problem is not None and str(index.path) in problem


# -- several workers --------------------------------------------------------------


def test_other_worker_sees_adds_and_deletes_on_its_next_call(root: pathlib.Path) -> None:
    first, second = open_index(root), open_index(root)
    assert listed(second) == []

    image_id = add(first)
    assert second.get(image_id) == first.get(image_id)
    assert listed(second) == [image_id]

    second.delete(image_id)
    with pytest.raises(ImageNotFound):
        first.get(image_id)
    assert first.count() == 0
    assert first.was_deleted(image_id)


def test_a_writers_view_after_its_own_commits_is_what_a_fresh_reader_sees(
    root: pathlib.Path,
) -> None:
    """A writer takes its own lines as it wrote them; between them, another worker's too."""
    writer, other = open_index(root), open_index(root)
    kept = add(writer)
    gone = add(writer)
    writer.delete(gone)
    add(other)  # in the journal before the writer's next line, not yet in its view
    add(writer)
    writer.delete(kept)

    fresh = open_index(root)
    assert listed(writer) == listed(fresh)
    assert writer.history() == fresh.history()
    assert writer.was_deleted(gone) and writer.was_deleted(kept)


def test_journal_replaced_on_disk_is_read_afresh(index: JournalIndex, root: pathlib.Path) -> None:
    """A restored backup (a new inode) replaces the view instead of being appended to it."""
    old = add(index)
    backup = open_index(root.parent / 'backup')
    kept = add(backup)
    assert listed(index) == [old]

    os.replace(backup.path, index.path)

    assert listed(index) == [kept]
    with pytest.raises(ImageNotFound):
        index.get(old)
    with pytest.raises(ImageNotFound):
        index.page(after=old, limit=1)


def test_concurrent_adds_from_threads_lose_nothing(
    index: JournalIndex, root: pathlib.Path
) -> None:
    """gthread workers share one index between their threads."""
    added: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(len(added))

    def work(slot: list[str]) -> None:
        barrier.wait()
        slot.extend(add(index) for _ in range(10))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in added]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = {image_id for slot in added for image_id in slot}
    assert len(expected) == 40
    assert set(listed(index)) == expected
    assert set(listed(JournalIndex(root))) == expected
    records = index_records(root)  # every line whole, its checksum sound
    assert len(records) == 40
    assert {record['op'] for record in records} == {'add'}


# -- damage -------------------------------------------------------------------------


def test_half_written_tail_is_cut_on_open(index: JournalIndex, root: pathlib.Path) -> None:
    image_id = add(index)
    complete = index.path.read_bytes()
    append_raw(index, HALF_LINE)

    reopened = open_index(root)

    assert index.path.read_bytes() == complete
    assert listed(reopened) == [image_id]
    assert reopened.problems() == []


def test_half_written_tail_is_cut_by_the_next_append(
    index: JournalIndex, root: pathlib.Path
) -> None:
    """A worker that crashed mid-line must not glue its fragment to the next record."""
    reader = open_index(root)
    first = add(index)
    append_raw(index, HALF_LINE)
    assert listed(reader) == [first]  # the fragment waits

    second = add(index)

    assert index_ops(root) == [('add', first), ('add', second)]
    for view in (index, reader, open_index(root)):
        assert listed(view) == [first, second]
        assert view.problems() == []


def _flip_a_byte_in(line: bytes) -> bytes:
    """Return ``line`` with one bit of the first hex digit of its id flipped."""
    at = line.index(b'"id":"') + len(b'"id":"')
    flipped = bytearray(line)
    flipped[at] ^= 0x01
    return bytes(flipped)


DAMAGED_LINES = {
    'not-json': b'this is not JSON\n',
    'not-utf8': b'\xff\xfe\n',
    'a-list': b'[]\n',
    'a-string': b'"add"\n',
    'no-id': b'{"op":"add"}\n',
    'short-size': (
        b'{"op":"add","id":"00000000-0000-0000-0000-000000000001","modified":1,"size":[1]}\n'
    ),
    'unknown-op': b'{"op":"rename","id":"00000000-0000-0000-0000-000000000001"}\n',
    'path-id': b'{"op":"add","id":"../../x","modified":1,"size":[1,1]}\n',
    'number-id': b'{"op":"add","id":7,"modified":1,"size":[1,1]}\n',
    'infinite-time': (
        b'{"op":"add","id":"00000000-0000-0000-0000-000000000001","modified":1e999,"size":[1,1]}\n'
    ),
    'delete-path-id': b'{"op":"delete","id":"../../x"}\n',
    'number-token': (
        b'{"op":"add","id":"00000000-0000-0000-0000-000000000001","modified":1,'
        b'"size":[1,1],"token":7}\n'
    ),
    'flipped-byte': _flip_a_byte_in(
        encode_line({'op': 'add', 'id': new_id(5), 'modified': 1, 'size': [1, 1]})
    ),
    'flipped-checksum': encode_line({'op': 'delete', 'id': new_id(6)})[:-2] + b'x\n',
    'bad-checksum-length': encode_line({'op': 'delete', 'id': new_id(7)})[:-3] + b'\n',
}


@pytest.mark.parametrize('line', DAMAGED_LINES.values(), ids=DAMAGED_LINES.keys())
def test_damaged_line_is_skipped_and_reported_never_dropped(
    index: JournalIndex, root: pathlib.Path, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Its neighbours are served; every view lists it in problems() and the log names it."""
    reader = open_index(root)
    first = add(index)
    append_raw(index, line)
    second = add(index)

    for view in (index, reader, open_index(root)):
        assert listed(view) == [first, second]
        problems = view.problems()
        assert len(problems) == 1 and problems[0].startswith('index line 2 is damaged')
    assert line in index.path.read_bytes()  # still there, for an operator to see
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all('index line 2 is damaged' in error for error in errors)
    assert all(str(index.path) in error for error in errors)


def test_problems_keep_the_first_few_and_count_the_rest(
    index: JournalIndex, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = MAX_PROBLEMS_KEPT + 5
    append_raw(index, b'garbage\n' * damaged)
    image_id = add(index)

    problems = index.problems()

    assert listed(index) == [image_id]
    assert len(problems) == MAX_PROBLEMS_KEPT + 1
    assert problems[0].startswith('index line 1 is damaged')
    assert problems[-1] == '... 5 more damaged lines'
    assert sum('is damaged' in record.getMessage() for record in caplog.records) == damaged


def test_rewrite_drops_damaged_lines_and_keeps_what_cursors_need(
    index: JournalIndex, root: pathlib.Path
) -> None:
    """Deleted ids stay as delete lines, in place, so ``after=`` and ``was_deleted`` still work."""
    reader = open_index(root)
    ids = [add(index) for _ in range(4)]
    append_raw(index, b'garbage\n')
    index.delete(ids[1])
    listed(reader)
    inode_before = os.stat(index.path).st_ino

    index.rewrite()

    assert os.stat(index.path).st_ino != inode_before  # replaced, never edited in place
    assert index_ops(root) == [
        ('add', ids[0]),
        ('delete', ids[1]),
        ('add', ids[2]),
        ('add', ids[3]),
    ]
    for view in (index, reader, open_index(root)):
        assert view.problems() == []
        assert listed(view) == [ids[0], ids[2], ids[3]]
        assert listed(view, after=ids[1], limit=1) == [ids[2]]
        assert view.was_deleted(ids[1])
        assert view.get(ids[0]) == stored(ids[0])
    assert not [name for name in os.listdir(root) if name.endswith('.tmp')]


def test_delete_lines_for_ids_never_seen_are_tombstones(root: pathlib.Path) -> None:
    """A rewritten journal keeps a deleted id as its delete line alone; a rewrite keeps those."""
    ids = [new_id(n) for n in range(4)]
    write_index(root, ('add', ids[:1]), ('delete', ids[1:2]), ('add', ids[2:]))
    index = open_index(root)

    assert listed(index) == [ids[0], ids[2], ids[3]]
    assert index.was_deleted(ids[1])
    assert listed(index, after=ids[1]) == ids[2:]
    assert listed(index, after=ids[1], newest_first=True) == [ids[0]]
    assert index.problems() == []

    index.rewrite()

    assert index_ops(root) == [
        ('add', ids[0]),
        ('delete', ids[1]),
        ('add', ids[2]),
        ('add', ids[3]),
    ]
    assert open_index(root).was_deleted(ids[1])


def test_journal_removed_while_running_is_written_again_from_the_view(
    root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = open_index(root), open_index(root)
    ids = [add(first) for _ in range(3)]
    first.delete(ids[0])
    listed(second)

    first.path.unlink()

    assert listed(second) == ids[1:]  # the first to look writes it again
    assert listed(first) == ids[1:]
    assert index_ops(root) == [('delete', ids[0]), ('add', ids[1]), ('add', ids[2])]
    assert second.was_deleted(ids[0]) and first.was_deleted(ids[0])
    later = add(first)
    assert listed(second) == [*ids[1:], later]
    rebuilt = [r.getMessage() for r in caplog.records if 'while look ran' in r.getMessage()]
    assert len(rebuilt) == 1, rebuilt  # once, not by every worker
    assert 'was removed' in rebuilt[0] and str(first.path) in rebuilt[0]


def test_a_worker_rebuilding_the_journal_keeps_its_own_last_commits(root: pathlib.Path) -> None:
    """What a worker has just written is in its view, though it has not read the journal since."""
    index = open_index(root)
    kept, deleted = add(index), add(index)
    index.delete(deleted)
    last = add(index)

    index.path.unlink()

    assert listed(index) == [kept, last]
    assert index_ops(root) == [('add', kept), ('delete', deleted), ('add', last)]


@pytest.mark.parametrize('keep', [0, 10], ids=['emptied', 'cut-mid-line'])
def test_journal_cut_short_while_running_is_written_again_from_the_view(
    root: pathlib.Path, caplog: pytest.LogCaptureFixture, keep: int
) -> None:
    index = open_index(root)
    ids = [add(index) for _ in range(3)]
    other = open_index(root)
    with open(index.path, 'r+b') as journal:
        journal.truncate(keep)

    assert listed(other) == ids
    assert index_ops(root) == [('add', image_id) for image_id in ids]
    assert listed(index) == ids
    assert any('was cut short' in record.getMessage() for record in caplog.records)
    assert index.problems() == [] and other.problems() == []


def test_a_view_behind_the_others_writes_a_removed_journal_again_whole(
    root: pathlib.Path,
) -> None:
    """It reads what it had not read yet through the descriptor it holds of the removed one."""
    behind, ahead = open_index(root), open_index(root)
    earlier = add(ahead)
    assert listed(behind) == [earlier]
    later = add(ahead)
    ahead.delete(earlier)

    os.unlink(ahead.path)

    assert listed(behind) == [later]
    assert listed(ahead) == [later]
    assert index_ops(root) == [('delete', earlier), ('add', later)]


def test_a_view_behind_the_others_writes_a_journal_cut_short_again_as_far_as_it_read(
    root: pathlib.Path,
) -> None:
    """What it had not read yet is gone: those files are quarantined at the next start-up."""
    behind, ahead = open_index(root), open_index(root)
    earlier = add(ahead)
    assert listed(behind) == [earlier]
    later = add(ahead)

    with open(ahead.path, 'r+b') as journal:
        journal.truncate(0)

    assert listed(behind) == [earlier]
    assert listed(ahead) == [earlier]  # the journal it now reads is the one written again
    assert index_ops(root) == [('add', earlier)]
    assert not ahead.was_deleted(later)


def test_a_view_behind_a_journal_written_again_reads_it_from_the_start(
    root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The new journal may get the removed one's inode number: never read on from an old offset."""
    behind, ahead = open_index(root), open_index(root)
    ids = [add(ahead)]
    assert listed(behind) == ids
    ids += [add(ahead) for _ in range(4)]  # the journal the rebuild writes is longer

    ahead.path.unlink()
    assert listed(ahead) == ids

    assert listed(behind) == ids
    assert behind.problems() == []
    rebuilt = [r.getMessage() for r in caplog.records if 'while look ran' in r.getMessage()]
    assert len(rebuilt) == 1, rebuilt


def test_the_journal_is_not_rebuilt_from_a_view_that_serves_reads_only(
    root: pathlib.Path,
) -> None:
    index = open_index(root)
    image_id = add(index)
    index.read_only = True  # as open() leaves it on a read-only disk

    index.path.unlink()

    assert listed(index) == [image_id]
    assert not index.path.exists()


def test_journal_files_are_written_with_nothing_left_behind(
    index: JournalIndex, root: pathlib.Path
) -> None:
    add(index)
    append_raw(index, b'garbage\n')
    index.rewrite()
    index.path.unlink()
    index.count()  # written again

    assert sorted(os.listdir(root)) == ['index.jsonl', 'index.lock']


def test_open_on_a_fresh_directory_creates_the_journal_and_its_lock(root: pathlib.Path) -> None:
    index = open_index(root)

    assert sorted(os.listdir(root)) == ['index.jsonl', 'index.lock']
    assert index.count() == 0 and index.problems() == [] and not index.read_only


def test_writes_paused_holds_back_commits_from_other_workers(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check compares index and images while no image is committed."""
    index, other = open_index(root), open_index(root)
    waiting, committed = threading.Event(), threading.Event()
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread() is worker:
            waiting.set()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, 'flock', flock)
    image_id = new_id()
    worker = threading.Thread(target=lambda: (other.add(stored(image_id)), committed.set()))

    with index.writes_paused():
        worker.start()
        assert waiting.wait(10)
        # NOTE: it waits for the lock now; a commit would be too early.
        assert not committed.wait(0.2)
        assert listed(index) == [] and index_ops(root) == []
    worker.join(10)

    assert committed.is_set()
    assert listed(index) == [image_id]
