"""Index and images compared and repaired: start-up quarantine, ``python -m look check``.

Three layers: the start-up quarantine and the check on a local store; the
command line's findings, output and exit status for each kind of finding, on
a store filled by uploading through ``create_app``; and the damage a user
reported (a flipped byte, an index emptied, an index removed while running),
end to end under a real gunicorn, with the command line run as a user runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import email.utils
import io
import logging
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest
from PIL import Image

from look.__main__ import main
from look.app import create_app
from look.config import Config
from look.core.backends import open_library
from look.core.index import StoredImage
from look.core.library import Library
from look.core.spool import Spool
from look.core.upkeep import check
from look.imaging import pool as thumbnailer
from look.imaging import thumbhash
from look.imaging.animation import stored_animation
from look.imaging.render import stored_size

from support.gunicorn import Gunicorn
from support.http import get, request
from support.imagegen import animation, image_bytes, same_placeholder
from support.processes import REPO_ROOT, wait_until

MakeGunicorn = Callable[..., Gunicorn]
JPEG = image_bytes('JPEG', size=(96, 64), seed=11)
# Older than the check's default grace time: no upload can still be committing it.
LONG_AGO = check.DEFAULT_GRACE_SECONDS + 600


def new_id() -> str:
    return str(uuid.uuid4())


def local_config(root: pathlib.Path) -> Config:
    return Config(
        environ={},
        storage_path=root,
        redis_url='',
        processes=1,
        allowed_hosts=(falcon.testing.helpers.DEFAULT_HOST,),
    )


def start_worker(root: pathlib.Path) -> falcon.testing.TestClient:
    """Start a worker as gunicorn does (the start-up runs); return a client of it."""
    return falcon.testing.TestClient(create_app(local_config(root)))


def age(path: pathlib.Path, seconds: float) -> float:
    """Set the modification time ``seconds`` into the past (whole seconds); return it."""
    then = int(time.time() - seconds)
    os.utime(path, (then, then))
    return then


def when(seconds: float) -> str:
    """Return a time as the check prints it."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime('%Y-%m-%d %H:%M UTC')


def email_time(http_date: str) -> int:
    """Return an HTTP date (Last-Modified, "modified") as Unix seconds."""
    return int(email.utils.parsedate_to_datetime(http_date).timestamp())


def jpeg_path(root: pathlib.Path, image_id: str) -> pathlib.Path:
    return root / 'images' / f'{image_id}.jpeg'


def listed(library: Library) -> list[str]:
    return [image.id for image in library.page(limit=1_000_000)]


# -- the start-up quarantine and the check, on a local store ---------------------------


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def library(root: pathlib.Path) -> Library:
    start_worker(root)
    return open_library(local_config(root))


def commit(library: Library, root: pathlib.Path, *, modified: int | None = None) -> str:
    """Add an image the way an upload does."""
    spool = Spool(root / 'spool')
    upload = spool.create()
    upload.file.write(JPEG)
    upload.file.flush()
    image = StoredImage(new_id(), modified or int(time.time()), (96, 64), len(JPEG))
    try:
        library.add(image, upload)
    finally:
        upload.close()
    return image.id


def test_an_unlisted_image_file_is_quarantined_at_start_never_removed(
    library: Library, root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload that crashed before its index line, or a line lost: set aside, and said so."""
    kept = commit(library, root)
    unlisted = new_id()
    jpeg_path(root, unlisted).write_bytes(JPEG)
    written = age(jpeg_path(root, unlisted), 30)
    foreign = root / 'images' / 'notes.txt'
    foreign.write_text('not ours to touch')

    start_worker(root)

    assert (root / 'quarantine' / f'{unlisted}.jpeg').read_bytes() == JPEG
    assert os.stat(root / 'quarantine' / f'{unlisted}.jpeg').st_mtime == written
    assert sorted(os.listdir(root / 'images')) == sorted([f'{kept}.jpeg', 'notes.txt'])
    assert foreign.read_text() == 'not ours to touch'
    assert listed(library) == [kept]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert 'does not list 1 image files' in errors[0] and unlisted in errors[0]
    assert 'python -m look check' in errors[0]


def test_a_sound_store_starts_without_a_word_of_quarantine(
    library: Library, root: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    commit(library, root)

    start_worker(root)

    assert not (root / 'quarantine').exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_entry_whose_file_is_missing_is_kept_at_start_and_reported(
    library: Library, root: pathlib.Path
) -> None:
    """Nothing is decided at start-up: the check reports it, a repair drops it."""
    lost, kept = commit(library, root), commit(library, root)
    jpeg_path(root, lost).unlink()

    client = start_worker(root)

    assert listed(library) == [lost, kept]
    assert client.simulate_get(f'/images/{lost}.jpeg').status_code == 404
    findings = check.inspect(library.index, library.images)
    assert [image.id for image in findings.missing] == [lost]
    assert not findings.sound


def test_a_young_unlisted_file_is_no_finding_and_one_being_committed_never(
    library: Library, root: pathlib.Path
) -> None:
    """Within the grace time a JPEG may be an upload about to write its entry."""
    young = new_id()
    jpeg_path(root, young).write_bytes(JPEG)
    committing = new_id()
    spool = Spool(root / 'spool')
    upload = spool.create()
    upload.file.write(JPEG)
    upload.file.flush()
    library.images.put(committing, upload)  # its entry not yet written; the upload holds it
    age(jpeg_path(root, committing), LONG_AGO)

    assert check.inspect(library.index, library.images).sound
    findings = check.inspect(library.index, library.images, grace=0)
    assert [stored.id for stored in findings.unlisted] == [young]
    upload.close()


def test_a_repair_restores_images_in_upload_order(library: Library, root: pathlib.Path) -> None:
    ids = [new_id() for _ in range(4)]
    for number, image_id in enumerate(ids):
        jpeg_path(root, image_id).write_bytes(JPEG)
        age(jpeg_path(root, image_id), LONG_AGO + 100 * (len(ids) - number))
    start_worker(root)  # all four go to quarantine

    findings = check.inspect(library.index, library.images)
    repairs = check.repair(library.index, library.images, findings, read_size=stored_size)

    assert (repairs.restored, repairs.failed) == (4, [])
    assert listed(library) == ids
    for image_id in ids:
        image = library.get(image_id)
        assert image.size == (96, 64) and image.length == len(JPEG)
        assert image.modified == os.stat(jpeg_path(root, image_id)).st_mtime


def test_a_repair_keeps_an_entry_whose_jpeg_came_back(
    library: Library, root: pathlib.Path
) -> None:
    """Put back by hand between the check and the repair: the entry is wanted again."""
    image_id = commit(library, root)
    aside = root / 'aside.jpeg'
    jpeg_path(root, image_id).rename(aside)
    findings = check.inspect(library.index, library.images)
    aside.rename(jpeg_path(root, image_id))

    repairs = check.repair(library.index, library.images, findings, read_size=stored_size)

    assert repairs.dropped == 0
    assert listed(library) == [image_id]


# -- the command line, for each kind of finding --------------------------------------


@dataclasses.dataclass
class Store:
    """A local store filled through create_app: its root and what the uploads answered."""

    root: pathlib.Path
    uploaded: list[dict[str, Any]]

    @property
    def ids(self) -> list[str]:
        return [image['id'] for image in self.uploaded]

    def client(self) -> falcon.testing.TestClient:
        """Start a worker on the store (its start-up runs) and return a client of it."""
        return start_worker(self.root)

    def listing(self) -> list[dict[str, Any]]:
        result = self.client().simulate_get('/images')
        assert result.status_code == 200
        listing: list[dict[str, Any]] = result.json
        return listing


@pytest.fixture(scope='module')
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Three images uploaded through create_app, once a module: tests work on copies."""
    root = tmp_path_factory.mktemp('filled') / 'storage'
    client = start_worker(root)
    uploaded = []
    for seed, size in enumerate([(320, 200), (200, 320), (256, 256)]):
        result = client.simulate_post('/images', body=image_bytes('PNG', size, seed=seed))
        assert result.status_code == 201, result.text
        uploaded.append(result.json)
    thumbnailer.close_all()
    yield Store(root, uploaded)


@pytest.fixture
def store(filled_store: Store, tmp_path: pathlib.Path) -> Store:
    """A copy of the filled store (modification times too) for one test to damage."""
    root = tmp_path / 'storage'
    shutil.copytree(filled_store.root, root)
    return Store(root, filled_store.uploaded)


@pytest.fixture
def run_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    """Return a runner of ``python -m look check ARGS`` on a store: its status and output.

    In this process, for speed; the end-to-end tests below run it as a user does.
    """
    for name in list(os.environ):
        if name.startswith('LOOK_'):
            monkeypatch.delenv(name)

    def run(root: pathlib.Path, *args: str) -> tuple[int, str]:
        monkeypatch.setenv('LOOK_STORAGE_PATH', str(root))
        capsys.readouterr()
        status = main(['check', *args])
        printed = capsys.readouterr()
        return status, printed.out + printed.err

    return run


def findings_counts(output: str) -> dict[str, int]:
    """Return the count on each summary line of the check's output."""
    counts = {}
    for line in output.splitlines():
        label, colon, number = line.rpartition(': ')
        if colon and number.isdigit() and not line.startswith(' '):
            counts[label] = int(number)
    return counts


NO_FINDINGS = {
    'listed, but their JPEG is gone': 0,
    'JPEGs the index does not list': 0,
    'in quarantine': 0,
    'left behind by deletes': 0,
    'animations whose WebP is gone': 0,
    'damaged index records': 0,
    'waiting to be removed by look itself': 0,
    'without a placeholder': 0,
}


def check_agrees(run_check: Callable[..., tuple[int, str]], store: Store) -> None:
    status, output = run_check(store.root)
    assert status == 0, output
    assert findings_counts(output) == {**NO_FINDINGS}
    assert output.splitlines()[-1] == 'index and images agree'


def test_cli_on_a_sound_store_says_they_agree(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    status, output = run_check(store.root)

    assert status == 0
    assert output.splitlines() == [
        'index: 3 images; image store: 3 JPEGs',
        *[f'{label}: 0' for label in NO_FINDINGS],
        'index and images agree',
    ]


def test_cli_missing_jpeg_is_reported_and_its_entry_dropped(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    lost = store.uploaded[1]
    jpeg_path(store.root, lost['id']).unlink()
    uploaded = int(email_time(lost['modified']))

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'listed, but their JPEG is gone': 1}
    assert f'  {lost["id"]} (uploaded {when(uploaded)})' in output.splitlines()
    assert 'index: 3 images; image store: 2 JPEGs' in output
    assert 'check --repair' in output.splitlines()[-1]

    status, output = run_check(store.root, '--repair')

    assert status == 0, output
    assert 'repaired: 1 entries dropped, 0 images restored, 0 leftovers removed' in output
    assert [image['id'] for image in store.listing()] == [store.ids[0], store.ids[2]]
    check_agrees(run_check, store)


def test_cli_unlisted_jpeg_past_the_grace_time_is_restored_with_its_size_and_time(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    """An upload that crashed between storing its JPEG and writing its entry."""
    crashed = new_id()
    jpeg_path(store.root, crashed).write_bytes(JPEG)
    written = age(jpeg_path(store.root, crashed), LONG_AGO)

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'JPEGs the index does not list': 1}
    assert f'  {crashed} (written {when(written)})' in output.splitlines()

    status, output = run_check(store.root, '--repair')

    assert status == 0, output
    assert 'repaired: 0 entries dropped, 1 images restored, 0 leftovers removed' in output
    listing = store.listing()
    assert [image['id'] for image in listing] == [*store.ids, crashed]
    assert listing[-1]['size'] == [96, 64]
    assert listing[-1]['placeholder']['color'].startswith('#')
    assert email_time(listing[-1]['modified']) == written
    check_agrees(run_check, store)


def test_cli_gives_an_image_from_before_placeholders_its_own(
    root: pathlib.Path, library: Library, run_check: Callable[..., tuple[int, str]]
) -> None:
    """A journal line without a placeholder, as look wrote them before: described without one."""
    old = commit(library, root)
    (listed_before,) = start_worker(root).simulate_get('/images').json
    assert listed_before['id'] == old
    assert 'placeholder' not in listed_before

    status, output = run_check(root)

    assert status == 1, output
    assert findings_counts(output)['without a placeholder'] == 1
    assert 'give 1 images their placeholder' in output.splitlines()[-1]

    status, output = run_check(root, '--repair')

    assert status == 0, output
    assert ', 1 placeholders made' in output
    (listed_after,) = start_worker(root).simulate_get('/images').json
    made = listed_after['placeholder']
    with Image.open(io.BytesIO(JPEG)) as image:
        exact = dict(zip(('thumbhash', 'color'), thumbhash.placeholder(image), strict=True))
    assert same_placeholder(made, exact)  # from the JPEG's 1/8 draft
    status, output = run_check(root)
    assert status == 0, output


def test_cli_leaves_an_unlisted_jpeg_younger_than_the_grace_time(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    young = new_id()
    jpeg_path(store.root, young).write_bytes(JPEG)
    age(jpeg_path(store.root, young), 60)

    check_agrees(run_check, store)
    status, output = run_check(store.root, '--grace', '30')
    assert status == 1
    assert f'  {young} (written' in output


def test_cli_quarantined_jpeg_is_restored(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    unlisted = new_id()
    jpeg_path(store.root, unlisted).write_bytes(JPEG)
    written = age(jpeg_path(store.root, unlisted), 5)
    store.client()  # a start: the JPEG goes to quarantine

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'in quarantine': 1}
    assert f'  {unlisted} (written {when(written)})' in output.splitlines()

    status, output = run_check(store.root, '--repair')

    assert status == 0, output
    assert 'repaired: 0 entries dropped, 1 images restored, 0 leftovers removed' in output
    assert os.listdir(store.root / 'quarantine') == []
    listing = store.listing()
    assert [image['id'] for image in listing] == [*store.ids, unlisted]
    assert email_time(listing[-1]['modified']) == written
    check_agrees(run_check, store)


def test_cli_jpeg_left_behind_by_a_delete_is_removed(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    """A delete whose file removal failed: the image is gone for users, its bytes are not."""
    deleted = store.ids[0]
    jpeg = jpeg_path(store.root, deleted).read_bytes()
    assert store.client().simulate_delete(f'/images/{deleted}.jpeg').status_code == 204
    jpeg_path(store.root, deleted).write_bytes(jpeg)

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'left behind by deletes': 1}
    assert f'  {deleted}' in output.splitlines()

    status, output = run_check(store.root, '--repair')

    assert status == 0, output
    assert 'repaired: 0 entries dropped, 0 images restored, 1 leftovers removed' in output
    assert not jpeg_path(store.root, deleted).exists()
    assert [image['id'] for image in store.listing()] == store.ids[1:]
    check_agrees(run_check, store)


def test_cli_animation_left_without_its_image_is_removed(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    """A delete that removed the JPEG and failed before the animation: its WebP is left."""
    client = store.client()
    created = client.simulate_post('/images', body=animation('GIF', frames=3)).json
    webp = store.root / 'images' / f'{created["id"]}.webp'
    data = webp.read_bytes()
    assert client.simulate_delete(created['image']).status_code == 204
    webp.write_bytes(data)
    age(webp, 30)

    # Younger than the grace time, it may be an upload's: no finding yet.
    check_agrees(run_check, store)
    age(webp, LONG_AGO)
    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'left behind by deletes': 1}
    assert f'  {created["id"]}' in output.splitlines()
    status, output = run_check(store.root, '--repair')
    assert status == 0, output
    assert '1 leftovers removed' in output
    assert not webp.exists()
    check_agrees(run_check, store)


def test_cli_listed_animation_whose_webp_is_gone_is_reported(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    client = store.client()
    created = client.simulate_post('/images', body=animation('GIF', frames=3)).json
    check_agrees(run_check, store)
    (store.root / 'images' / f'{created["id"]}.webp').unlink()

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'animations whose WebP is gone': 1}
    assert any(line.startswith(f'  {created["id"]} (uploaded ') for line in output.splitlines())
    status, output = run_check(store.root, '--repair')
    assert status == 2, output
    assert f'could not repair {created["id"]}: its animated WebP is gone' in output
    assert client.simulate_get(created['image']).status_code == 200


def test_a_repair_restores_an_unlisted_animation_with_its_webp(
    library: Library, root: pathlib.Path
) -> None:
    """Quarantined at start with its JPEG, the WebP comes back with it."""
    image_id = new_id()
    jpeg_path(root, image_id).write_bytes(JPEG)
    webp = root / 'images' / f'{image_id}.webp'
    webp.write_bytes(animation('WEBP', frames=2, durations=100))
    age(jpeg_path(root, image_id), LONG_AGO)
    age(webp, LONG_AGO)

    start_worker(root)

    assert sorted(os.listdir(root / 'quarantine')) == [f'{image_id}.jpeg', f'{image_id}.webp']
    findings = check.inspect(library.index, library.images)
    assert [stored.id for stored in findings.quarantined] == [image_id]
    assert findings.leftovers == []
    repairs = check.repair(
        library.index,
        library.images,
        findings,
        read_size=stored_size,
        read_animation=stored_animation,
    )

    assert (repairs.restored, repairs.failed) == (1, [])
    assert webp.exists() and jpeg_path(root, image_id).exists()
    restored = library.get(image_id)
    assert (restored.frames, restored.duration_ms) == (2, 200)
    assert restored.animated


def test_cli_damaged_index_lines_are_reported_and_written_out(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    journal = store.root / 'index.jsonl'
    with open(journal, 'ab') as appending:
        appending.write(b'{"op":"add","id":"00000000-0000-0000-0000-0000000\n')

    status, output = run_check(store.root)

    assert status == 1, output
    assert findings_counts(output) == {**NO_FINDINGS, 'damaged index records': 1}
    assert '  index line 4 is damaged (' in output

    status, output = run_check(store.root, '--repair')

    assert status == 0, output
    assert output.splitlines()[-1] == (
        'repaired: 0 entries dropped, 0 images restored, 0 leftovers removed, index written again'
    )
    assert b'0000000\n' not in journal.read_bytes()
    assert [image['id'] for image in store.listing()] == store.ids
    check_agrees(run_check, store)


def test_cli_exits_2_when_a_repair_fails(
    store: Store, run_check: Callable[..., tuple[int, str]]
) -> None:
    """A quarantined file that is no JPEG cannot be listed: said, and never deleted."""
    broken = new_id()
    (store.root / 'quarantine').mkdir()
    (store.root / 'quarantine' / f'{broken}.jpeg').write_bytes(b'not a JPEG at all')

    status, output = run_check(store.root, '--repair')

    assert status == 2, output
    assert f'  could not repair {broken}: ' in output
    assert [image['id'] for image in store.listing()] == store.ids
    on_disk = jpeg_path(store.root, broken)
    aside = store.root / 'quarantine' / f'{broken}.jpeg'
    assert b'not a JPEG at all' in {
        path.read_bytes() for path in (on_disk, aside) if path.exists()
    }


def test_cli_on_an_unusable_storage_path_names_it_and_exits_2(
    tmp_path: pathlib.Path, run_check: Callable[..., tuple[int, str]]
) -> None:
    not_a_directory = tmp_path / 'file'
    not_a_directory.write_text('')

    status, output = run_check(not_a_directory)

    assert status == 2
    assert output.startswith(f'error: LOOK_STORAGE_PATH {not_a_directory} cannot be used')


# -- the damage, end to end under gunicorn -------------------------------------

IN_MODIFY, IN_ATTRIB = 0x002, 0x004
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x040, 0x080, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW = 0x400, 0x800, 0x4000
CHANGES = {
    IN_MODIFY: 'written',
    IN_ATTRIB: 'attributes changed',
    IN_MOVED_FROM: 'moved away',
    IN_MOVED_TO: 'moved in',
    IN_CREATE: 'created',
    IN_DELETE: 'removed',
    IN_DELETE_SELF: 'removed',
    IN_MOVE_SELF: 'moved',
    IN_Q_OVERFLOW: 'too many changes to tell',
}
_EVENT = struct.Struct('iIII')  # struct inotify_event, before its name


class DiskWatch:
    """What inotify(7) sees change under a directory tree: created, written, removed, moved."""

    def __init__(self, root: pathlib.Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), 'inotify_init1 failed')
        self._directories: dict[int, str] = {}
        mask = sum(bit for bit in CHANGES if bit != IN_Q_OVERFLOW)
        for directory, _, _ in os.walk(root):
            watch = libc.inotify_add_watch(self._fd, os.fsencode(directory), mask)
            if watch < 0:
                raise OSError(ctypes.get_errno(), f'inotify_add_watch {directory} failed')
            self._directories[watch] = directory

    def changes(self) -> list[str]:
        """Return the changes seen since the last call, as 'what path'."""
        data = b''
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._fd, 65536):
                data += chunk
        seen, offset = [], 0
        while offset < len(data):
            watch, mask, _, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            name = data[start : start + length].rstrip(b'\0').decode()
            offset = start + length
            for bit, what in CHANGES.items():
                if mask & bit:
                    seen.append(f'{what} {self._directories.get(watch, "?")}/{name}')
        return seen

    def close(self) -> None:
        os.close(self._fd)


def assert_health_writes_nothing(server: Gunicorn, calls: int = 100) -> dict[str, Any]:
    """Call /health ``calls`` times; assert that nothing under the storage changed; return one."""
    storage = server.storage_path
    # Every worker's start-up (which may write) is over before the watch begins.
    assert wait_until(
        lambda: server.log().count('storing images in') >= server.log().count('Booting worker'),
        30,
    ), server.log_tail()
    watch = DiskWatch(storage)
    try:
        answers = [get(f'{server.url}/health') for _ in range(calls)]
        changes = watch.changes()
        # The watch itself is watching: a change it must see.
        probe = storage / 'inotify-probe'
        probe.touch()
        probe.unlink()
        seen = watch.changes()
    finally:
        watch.close()
    assert not changes, f'{calls} calls of /health changed the storage: {changes[:10]}'
    assert (
        f'created {storage}/inotify-probe' in seen and f'removed {storage}/inotify-probe' in seen
    )
    assert {answer.status for answer in answers} == {200}
    health: dict[str, Any] = answers[-1].json()
    return health


def run_check_as_a_user(storage: pathlib.Path, *args: str) -> tuple[int, str]:
    """Run ``python -m look check ARGS`` in a process of its own, with LOOK_STORAGE_PATH set."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith('LOOK_')}
    environ['LOOK_STORAGE_PATH'] = str(storage)
    done = subprocess.run(
        [sys.executable, '-m', 'look', 'check', *args],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@dataclasses.dataclass
class Uploaded:
    """An image as its upload described it, and as it was served."""

    description: dict[str, Any]
    jpeg: bytes
    last_modified: str

    @property
    def id(self) -> str:
        image_id: str = self.description['id']
        return image_id

    @property
    def upload_order(self) -> tuple[int, str]:
        """Where a repair lists it: by upload time, then id."""
        return email_time(self.last_modified), self.id


def upload_and_fetch(server: Gunicorn, size: tuple[int, int], seed: int) -> Uploaded:
    created = request('POST', f'{server.url}/images', image_bytes('PNG', size, seed=seed))
    assert created.status == 201, created.body
    description = created.json()
    download = get(f'{server.url}{description["image"]}')
    assert download.status == 200
    return Uploaded(description, download.body, download.header('Last-Modified') or '')


def upload_five(server: Gunicorn) -> list[Uploaded]:
    sizes = [(320, 200), (200, 320), (256, 256), (400, 240), (240, 400)]
    return [upload_and_fetch(server, size, seed) for seed, size in enumerate(sizes)]


def jpegs_on_disk(storage: pathlib.Path) -> dict[str, bytes]:
    """Return every image file in images/ and quarantine/, by id; an id in both is an error."""
    found: dict[str, bytes] = {}
    for directory in (storage / 'images', storage / 'quarantine'):
        for path in directory.glob('*.jpeg') if directory.is_dir() else []:
            assert path.stem not in found, f'{path.stem} is in images/ and in quarantine/'
            found[path.stem] = path.read_bytes()
    return found


def assert_restored(server: Gunicorn, uploaded: list[Uploaded]) -> list[str]:
    """Assert every image is listed, described, downloaded and rendered as at its upload.

    Return the listing's order.
    """
    listing = get(f'{server.url}/images')
    assert listing.status == 200
    described = {image['id']: image for image in listing.json()}
    assert set(described) == {image.id for image in uploaded}
    for image in uploaded:
        now = described[image.id]
        for key in ('size', 'modified', 'thumbnails', 'formats'):
            assert now[key] == image.description[key], (image.id, key)
        download = get(f'{server.url}{image.description["image"]}')
        assert download.status == 200
        assert download.body == image.jpeg
        assert download.header('Last-Modified') == image.last_modified
        thumbnail = get(f'{server.url}{image.description["thumbnails"][0]}')
        assert thumbnail.status == 200, thumbnail.body
        assert Image.open(io.BytesIO(thumbnail.body)).format == 'JPEG'
    return [image['id'] for image in listing.json()]


def flip_a_byte_of_line_3(storage: pathlib.Path) -> None:
    """Flip one bit in the third upload's index line (in its id), in place."""
    journal = storage / 'index.jsonl'
    data = journal.read_bytes()
    start = [n + 1 for n, byte in enumerate(data) if byte == ord('\n')][1]
    at = data.index(b'"id":"', start) + len(b'"id":"')
    with open(journal, 'r+b') as damaged:
        damaged.seek(at)
        damaged.write(bytes([data[at] ^ 0x01]))


def empty_the_index(storage: pathlib.Path) -> None:
    with open(storage / 'index.jsonl', 'r+b') as journal:
        journal.truncate(0)


def remove_the_index(storage: pathlib.Path) -> None:
    (storage / 'index.jsonl').unlink()


DAMAGE = {
    'flipped-byte': flip_a_byte_of_line_3,
    'emptied': empty_the_index,
    'removed': remove_the_index,
}


@pytest.mark.e2e
@pytest.mark.parametrize('damage', DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_index_then_restart_loses_no_image_and_check_repair_restores_all(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path, damage: Callable[[pathlib.Path], None]
) -> None:
    """No image file is unlinked, /health and the log say why, and a repair restores them all."""
    storage = tmp_path / 'storage'
    server = make_gunicorn(storage, workers=2)
    uploaded = upload_five(server)
    third = uploaded[2].id

    damage(storage)  # while look runs; no request comes before the restart
    server.restart()

    # No image file was unlinked: every JPEG's bytes are on disk, served or set aside.
    assert jpegs_on_disk(storage) == {image.id: image.jpeg for image in uploaded}

    # /health is 200 and degraded, and says why; answering it writes nothing.
    health = assert_health_writes_nothing(server)
    assert health['status'] == 'degraded', health
    log = server.log()
    if damage is flip_a_byte_of_line_3:
        assert health['index']['status'] == 'damaged', health
        assert health['index']['problems'][0].startswith('index line 3 is damaged'), health
        assert health['storage']['status'] == 'quarantine', health
        assert health['storage']['quarantined'] == 1
        assert 'index line 3 is damaged (checksum mismatch)' in log
        assert 'does not list 1 image files; moved them to quarantine' in log
        assert third in log
        set_aside = [third]
    else:
        assert health['index'] == {'status': 'ok', 'images': 0}, health
        assert health['storage']['status'] == 'quarantine', health
        assert health['storage']['quarantined'] == 5
        assert 'python -m look check --repair' in health['storage']['detail']
        assert 'does not list 5 image files; moved them to quarantine' in log
        set_aside = [image.id for image in uploaded]
    assert all(image_id in log for image_id in set_aside)
    assert sorted(os.listdir(storage / 'quarantine')) == sorted(f'{i}.jpeg' for i in set_aside)

    # The check reports it and exits 1.
    status, output = run_check_as_a_user(storage)
    assert status == 1, output
    counts = findings_counts(output)
    assert counts['in quarantine'] == len(set_aside), output
    assert counts['damaged index records'] == int(damage is flip_a_byte_of_line_3), output
    for image_id in set_aside:
        assert f'  {image_id} (written ' in output

    # --repair restores every image as it was uploaded.
    status, output = run_check_as_a_user(storage, '--repair')
    assert status == 0, output
    assert f'{len(set_aside)} images restored' in output
    order = assert_restored(server, uploaded)
    if damage is not flip_a_byte_of_line_3:
        by_upload = sorted(uploaded, key=lambda image: image.upload_order)
        assert order == [image.id for image in by_upload]

    status, output = run_check_as_a_user(storage)
    assert status == 0, output
    assert 'index and images agree' in output
    health = assert_health_writes_nothing(server)
    assert health['status'] == 'ok', health


@pytest.mark.e2e
def test_index_removed_while_serving_is_written_again_by_the_next_request(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path
) -> None:
    """With traffic before the restart, a worker writes the index again from its view."""
    storage = tmp_path / 'storage'
    server = make_gunicorn(storage, workers=2)
    uploaded = upload_five(server)

    remove_the_index(storage)
    assert len(get(f'{server.url}/images').json()) == 5
    uploaded.append(upload_and_fetch(server, (300, 300), seed=6))
    server.restart()

    assert jpegs_on_disk(storage) == {image.id: image.jpeg for image in uploaded}
    assert not (storage / 'quarantine').exists()
    assert_restored(server, uploaded)
    assert 'was removed while look ran; writing it again' in server.log()
    status, output = run_check_as_a_user(storage)
    assert status == 0, output
    health = get(f'{server.url}/health').json()
    assert health['status'] == 'ok', health
    assert health['index']['images'] == 6
