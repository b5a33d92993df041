"""Library on a real directory: the index and the image files kept in step.

The one rule: an index entry never names a JPEG that is not stored. A second
library on the same directory stands in for another gunicorn worker, and
``start_worker`` runs the start-up a gunicorn worker runs (``create_app``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import pathlib
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from look.app import create_app
from look.config import Config
from look.core.backends import open_library
from look.core.imagestore.disk import DiskImageStore
from look.core.index import Backlog, StoredImage
from look.core.index.journal import JournalIndex
from look.core.library import Library
from look.core.removals import Timing
from look.core.spool import TEMP_GRACE_SECONDS, Spool, SpoolFile
from look.core.upkeep import check
from look.errors import ImageExists, ImageNotFound, StorageError

from support.imagegen import image_bytes
from support.processes import wait_until
from support.storage import MALFORMED_IDS, fail_index_fsyncs, fail_undo_writes, index_records

JPEG = image_bytes('JPEG', size=(8, 6))
SIZE = (8, 6)
# A removal worker that tries again within a tenth of a second.
QUICK = Timing(settle=0.2, poll=0.05, first_pause=0.02, most_pause=0.1)


def new_id(number: int | None = None) -> str:
    """Return a canonical id: random, or seeded by ``number``."""
    if number is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=random.Random(number).getrandbits(128), version=4))


def local_config(root: pathlib.Path) -> Config:
    """Return the configuration of a worker storing in ``root`` (no Redis, a small pool)."""
    return Config(environ={}, storage_path=root, redis_url='', processes=1)


def worker_library(root: pathlib.Path) -> Library:
    """Return another worker's library on the same storage, opened as the app opens it."""
    return open_library(local_config(root))


def start_worker(root: pathlib.Path) -> None:
    """Start a worker as gunicorn does: the app's start-up runs (and quarantines)."""
    create_app(local_config(root))


def spooled(spool: Spool, data: bytes = JPEG) -> SpoolFile:
    """Return a locked spool file holding a finished JPEG, as the pool leaves it."""
    upload = spool.create()
    upload.file.write(data)
    upload.file.flush()  # the pool process writes it; nobody has fsync'd it yet
    return upload


def upload_image(image_id: str | None = None, modified: int | None = None) -> StoredImage:
    """Return the record an upload makes for the JPEG in ``spooled``."""
    return StoredImage(
        image_id or new_id(), int(time.time()) if modified is None else modified, SIZE, len(JPEG)
    )


def commit(library: Library, spool: Spool, image_id: str | None = None) -> str:
    """Add an image the way an upload does: a locked spool file, added, then closed."""
    upload = spooled(spool)
    image = upload_image(image_id)
    try:
        library.add(image, upload)
    finally:
        upload.close()
    return image.id


def listed(library: Library) -> list[str]:
    return [image.id for image in library.page(limit=1_000_000)]


def jpeg_path(root: pathlib.Path, image_id: str) -> pathlib.Path:
    return root / 'images' / f'{image_id}.jpeg'


def index_ops(root: pathlib.Path) -> list[tuple[str, str]]:
    return [(str(record['op']), str(record['id'])) for record in index_records(root)]


def age(path: pathlib.Path, seconds: float) -> None:
    """Set the modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def library(root: pathlib.Path) -> Library:
    start_worker(root)
    return worker_library(root)


@pytest.fixture
def spool(root: pathlib.Path, library: Library) -> Spool:
    spool = Spool(root / 'spool')
    spool.open()
    return spool


# -- adding, reading, deleting --------------------------------------------------------


def test_add_stores_the_jpeg_then_lists_it(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    upload = spooled(spool)
    image = upload_image(modified=1_700_000_000)

    library.add(image, upload)
    upload.close()

    assert library.get(image.id) == image
    assert library.page(limit=10) == [image]
    assert library.count() == 1
    original = library.open_original(image)
    with original.stream:
        assert original.stream.read() == JPEG and original.length == len(JPEG)
    with library.local_path(image) as path:
        assert pathlib.Path(path).read_bytes() == JPEG
    assert os.listdir(root / 'images') == [f'{image.id}.jpeg']
    assert os.listdir(root / 'spool') == []  # the spool file's name is gone; the JPEG stays
    # The file carries the upload time: a check that must restore it gives it back.
    assert os.stat(jpeg_path(root, image.id)).st_mtime == image.modified


def test_amend_changes_the_alt_text_for_every_worker_and_leaves_the_jpeg(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    image_id = commit(library, spool)
    other = worker_library(root)
    assert other.get(image_id).alt == ''
    jpeg_before = jpeg_path(root, image_id).read_bytes()

    amended = library.amend(image_id, alt='A heron on one leg')

    assert amended.alt == 'A heron on one leg' and amended.size == SIZE
    assert other.get(image_id).alt == 'A heron on one leg'
    assert worker_library(root).page(limit=10)[0].alt == 'A heron on one leg'
    # None leaves what is there; an empty text clears it.
    assert library.amend(image_id, thumbhash='3OcRJYB4d3h/iIeHeEh3eIhw+j3A').alt == amended.alt
    assert other.get(image_id).thumbhash == '3OcRJYB4d3h/iIeHeEh3eIhw+j3A'
    assert library.amend(image_id, alt='').alt == ''
    assert jpeg_path(root, image_id).read_bytes() == jpeg_before
    with pytest.raises(ImageNotFound):
        library.amend(new_id(), alt='nobody')
    library.delete(image_id)
    with pytest.raises(ImageNotFound):
        other.amend(image_id, alt='too late')


def test_add_syncs_the_jpeg_then_its_name_then_its_index_line(
    library: Library, spool: Spool, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever moment a crash comes at, no indexed name is left without its bytes."""
    upload = spooled(spool)
    synced_and_linked: list[str] = []
    names = {
        os.fstat(upload.file.fileno()).st_ino: 'jpeg',
        os.stat(root / 'images').st_ino: 'directory',
        os.stat(root / 'index.jsonl').st_ino: 'index',
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
        library.add(upload_image(), upload)
    finally:
        upload.close()

    assert synced_and_linked == ['jpeg', 'link', 'directory', 'index']


def test_an_add_whose_index_line_fails_to_sync_leaves_neither_entry_nor_jpeg(
    library: Library, spool: Spool, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = commit(library, spool)
    reader = worker_library(root)
    fail_index_fsyncs(monkeypatch, root / 'index.jsonl', reader.count, times=1)
    failed = new_id()

    with pytest.raises(StorageError):
        commit(library, spool, failed)

    assert index_ops(root) == [('add', earlier), ('add', failed), ('delete', failed)]
    assert not jpeg_path(root, failed).exists()
    for view in (library, reader, worker_library(root)):
        assert listed(view) == [earlier]
    assert os.listdir(root / 'spool') == []


@pytest.mark.parametrize('undo_written', [0, 20], ids=['undo-not-written', 'undo-half-written'])
def test_an_add_that_cannot_be_undone_keeps_its_jpeg(
    library: Library,
    spool: Spool,
    root: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    undo_written: int,
) -> None:
    """The disk fails again: the entry stands for every worker, so its JPEG must stay."""
    reader = worker_library(root)
    fail_index_fsyncs(monkeypatch, root / 'index.jsonl', reader.count, times=1)
    fail_undo_writes(monkeypatch, 'delete', written=undo_written)
    failed = new_id()

    with pytest.raises(StorageError):
        commit(library, spool, failed)

    assert index_ops(root) == [('add', failed)]
    assert jpeg_path(root, failed).read_bytes() == JPEG  # listed, so served
    for view in (library, reader, worker_library(root)):
        assert listed(view) == [failed]


@pytest.mark.parametrize('times', [1, 2], ids=['undo-synced', 'undo-not-synced'])
def test_a_delete_whose_index_line_fails_to_sync_keeps_the_jpeg(
    library: Library,
    spool: Spool,
    root: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    times: int,
) -> None:
    ids = [commit(library, spool) for _ in range(3)]
    reader = worker_library(root)
    fail_index_fsyncs(monkeypatch, root / 'index.jsonl', reader.count, times=times)

    with pytest.raises(StorageError):
        library.delete(ids[1])

    assert index_ops(root)[-2:] == [('delete', ids[1]), ('add', ids[1])]
    assert jpeg_path(root, ids[1]).read_bytes() == JPEG
    for view in (library, reader, worker_library(root)):
        assert listed(view) == ids
    library.delete(ids[1])
    assert not jpeg_path(root, ids[1]).exists()


def test_a_delete_that_cannot_be_undone_stands_and_its_jpeg_goes(
    library: Library, spool: Spool, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [commit(library, spool) for _ in range(2)]
    reader = worker_library(root)
    fail_index_fsyncs(monkeypatch, root / 'index.jsonl', reader.count, times=1)
    fail_undo_writes(monkeypatch, 'add')

    with pytest.raises(StorageError):
        library.delete(ids[0])

    # The delete stands, its file goes, and so does the file's entry on the list.
    assert index_ops(root)[-2:] == [('delete', ids[0]), ('removed', ids[0])]
    assert not jpeg_path(root, ids[0]).exists()
    for view in (library, reader, worker_library(root)):
        assert listed(view) == [ids[1]]


def test_adding_an_existing_id_leaves_the_first_image_as_it_was(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    image_id = commit(library, spool)
    first = library.get(image_id)
    other = spooled(spool, b'another picture')

    with pytest.raises(ImageExists):
        library.add(upload_image(image_id), other)
    other.close()

    assert library.get(image_id) == first
    assert jpeg_path(root, image_id).read_bytes() == JPEG
    assert index_ops(root) == [('add', image_id)]
    assert os.listdir(root / 'images') == [f'{image_id}.jpeg']


def test_an_id_listed_but_not_stored_is_refused_and_its_entry_kept(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    """The JPEG of an entry was removed by hand: a new upload under its id must not take it."""
    image_id = commit(library, spool)
    jpeg_path(root, image_id).unlink()
    other = spooled(spool, b'another picture')

    with pytest.raises(ImageExists):
        library.add(upload_image(image_id), other)
    other.close()

    assert listed(library) == [image_id]
    assert not jpeg_path(root, image_id).exists()  # for a check to report, not this upload's


def test_delete_removes_the_entry_then_the_jpeg(
    library: Library, spool: Spool, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, deleted = commit(library, spool), commit(library, spool)
    seen_when_removing = []
    real_delete = library.images.delete

    def delete(image_id: str) -> None:
        seen_when_removing.append(library.index.was_deleted(image_id))
        real_delete(image_id)

    monkeypatch.setattr(library.images, 'delete', delete)

    assert library.delete(deleted).id == deleted

    assert seen_when_removing == [True]  # the entry went first
    assert listed(library) == [kept]
    assert os.listdir(root / 'images') == [f'{kept}.jpeg']
    for call in (library.get, library.delete):
        with pytest.raises(ImageNotFound):
            call(deleted)


def test_a_jpeg_a_delete_could_not_remove_stays_listed_until_it_is_removed(
    root: pathlib.Path,
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The image is deleted for everyone; its file is removed in the background once it can be."""
    library = open_library(local_config(root), timing=QUICK)
    image_id = commit(library, spool)
    refusing = [True]
    remove = library.images.delete

    def delete(image_id: str) -> None:
        if refusing[0]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        remove(image_id)

    monkeypatch.setattr(library.images, 'delete', delete)

    assert library.delete(image_id).id == image_id

    another = JournalIndex(root)  # another worker's index; its library would remove the file
    another.open()
    assert another.page(limit=10) == []
    assert jpeg_path(root, image_id).read_bytes() == JPEG
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(image_id in warning and 'removed once' in warning for warning in warnings)
    findings = check.inspect(library.index, library.images)
    assert ([s.id for s in findings.waiting], findings.sound) == ([image_id], True)
    assert library.removal_backlog().waiting == 1
    time.sleep(3 * QUICK.most_pause)
    assert jpeg_path(root, image_id).exists()  # tried again and again, never given up

    refusing[0] = False

    assert wait_until(lambda: not jpeg_path(root, image_id).exists(), 5)
    assert wait_until(lambda: library.removal_backlog() == Backlog(0, None), 5)
    assert index_ops(root)[-1] == ('removed', image_id)


def test_open_original_reads_the_jpeg_until_it_is_deleted(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    image = library.get(commit(library, spool))
    original = library.open_original(image)
    with original.stream:
        assert original.stream.read() == JPEG

    worker_library(root).delete(image.id)  # another worker, after our lookup

    with pytest.raises(ImageNotFound):
        library.open_original(image)


@pytest.mark.parametrize('bad_id', MALFORMED_IDS)
def test_malformed_id_never_touches_the_disk(
    library: Library, spool: Spool, root: pathlib.Path, bad_id: str
) -> None:
    # A file where a path traversal from images/ would land.
    bait = root / 'x.jpeg'
    bait.write_bytes(b'not yours')
    index_before = (root / 'index.jsonl').read_bytes()
    forged = StoredImage(bad_id, 1, (1, 1))

    for call in (library.get, library.delete):
        with pytest.raises(ImageNotFound):
            call(bad_id)
    with pytest.raises(ImageNotFound):
        library.page(after=bad_id, limit=10)
    with pytest.raises(ImageNotFound), library.local_path(forged):
        pass
    upload = spooled(spool)
    with pytest.raises(ImageNotFound):
        library.add(forged, upload)
    assert upload.path.exists()  # not linked anywhere
    upload.close()

    assert bait.read_bytes() == b'not yours'
    assert (root / 'index.jsonl').read_bytes() == index_before
    assert os.listdir(root / 'images') == []


# -- several workers ------------------------------------------------------------------


def _start_and_add(root: str, count: int) -> list[str]:
    """Run in a spawned process: start as a worker does, then add."""
    storage = pathlib.Path(root)
    start_worker(storage)
    library = worker_library(storage)
    spool = Spool(storage / 'spool')
    return [commit(library, spool) for _ in range(count)]


def test_workers_starting_and_adding_at_once_lose_nothing(root: pathlib.Path) -> None:
    """Each process starts (cuts tails, quarantines) while the others are adding."""
    context = multiprocessing.get_context('spawn')
    with context.Pool(3) as pool:
        results = pool.starmap(_start_and_add, [(str(root), 10)] * 3)

    expected = {image_id for result in results for image_id in result}
    assert len(expected) == 30
    assert set(listed(worker_library(root))) == expected
    assert sorted(os.listdir(root / 'images')) == sorted(f'{i}.jpeg' for i in expected)
    assert not (root / 'quarantine').exists() or os.listdir(root / 'quarantine') == []


def test_image_waiting_for_its_index_line_survives_another_workers_start(
    library: Library, spool: Spool, root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add() puts the JPEG in place, then waits for the writers' lock to index it.

    Another worker that starts meanwhile must leave the file where it is: the
    upload's lock on it says it is no crashed upload's leftover.
    """
    upload = spooled(spool)
    image = upload_image()
    real_add = library.index.add

    def another_worker_starts_first(stored: StoredImage) -> None:
        assert jpeg_path(root, image.id).exists()  # in place, not yet indexed
        start_worker(root)
        real_add(stored)

    monkeypatch.setattr(library.index, 'add', another_worker_starts_first)
    library.add(image, upload)
    upload.close()

    assert jpeg_path(root, image.id).read_bytes() == JPEG
    assert listed(worker_library(root)) == [image.id]
    assert not (root / 'quarantine').exists() or os.listdir(root / 'quarantine') == []


def test_locked_upload_survives_another_workers_start(
    library: Library, spool: Spool, root: pathlib.Path
) -> None:
    """The trap: start-up clean-up must never delete an upload in progress, however old."""
    upload = spooled(spool)
    age(upload.path, 10 * TEMP_GRACE_SECONDS)  # a slow client

    start_worker(root)

    assert upload.path.read_bytes() == JPEG
    image = upload_image()
    library.add(image, upload)
    upload.close()
    assert listed(worker_library(root)) == [image.id]
    assert os.listdir(root / 'images') == [f'{image.id}.jpeg']
    assert os.listdir(root / 'spool') == []


@contextlib.contextmanager
def _no_link_across(monkeypatch: pytest.MonkeyPatch, directory: pathlib.Path) -> Iterator[None]:
    """Make linking from ``directory`` fail as across filesystems (EXDEV)."""
    real_link = os.link

    def link(source: Any, target: Any, **kwargs: Any) -> None:
        if pathlib.Path(source).parent == directory:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(source, target, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, 'link', link)
        yield


def test_a_spool_on_another_filesystem_is_copied_with_its_upload_time(
    root: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = Library(JournalIndex(root), DiskImageStore(root))
    library.open()
    spool = Spool(tmp_path / 'elsewhere')
    spool.open()
    upload = spooled(spool)
    image = upload_image(modified=1_700_000_000)

    with _no_link_across(monkeypatch, spool.directory):
        library.add(image, upload)
    upload.close()

    assert jpeg_path(root, image.id).read_bytes() == JPEG
    assert os.stat(jpeg_path(root, image.id)).st_mtime == image.modified
    assert os.listdir(root / 'images') == [f'{image.id}.jpeg']  # no temp copy left
    assert listed(library) == [image.id]
