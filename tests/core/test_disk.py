"""DiskImageStore on a real directory, and a real gunicorn on a disk that goes read-only.

The read-only tests mount a small tmpfs (root, or a container allowed to mount):
they skip where that is impossible, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from PIL import Image

from look.core.imagestore.disk import DiskImageStore
from look.core.spool import Spool, SpoolFile
from look.errors import ImageExists, ImageNotFound

from support.gunicorn import Gunicorn, MakeGunicorn
from support.http import Response, get, request
from support.imagegen import image_bytes
from support.processes import tmpfs

JPEG = image_bytes('JPEG', size=(8, 6))


def new_id() -> str:
    return str(uuid.uuid4())


def spooled(spool: Spool, data: bytes = JPEG) -> SpoolFile:
    """Return a locked spool file holding a finished JPEG."""
    upload = spool.create()
    upload.file.write(data)
    upload.file.flush()
    return upload


def put(store: DiskImageStore, spool: Spool, image_id: str, data: bytes = JPEG) -> None:
    upload = spooled(spool, data)
    try:
        store.put(image_id, upload)
    finally:
        upload.close()


def read_original(store: DiskImageStore, image_id: str) -> bytes:
    original = store.open_original(image_id)
    with original.stream:
        data = original.stream.read()
    assert original.length == len(data)
    return data


def tree(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Return every path under ``root`` with its size and modification time (ns)."""
    found = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = pathlib.Path(directory, name)
            stat = path.stat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / 'storage'


@pytest.fixture
def store(root: pathlib.Path) -> DiskImageStore:
    store = DiskImageStore(root)
    store.open()
    return store


@pytest.fixture
def spool(root: pathlib.Path) -> Spool:
    spool = Spool(root / 'spool')
    spool.open()
    return spool


# -- storing and serving ---------------------------------------------------------------


def test_put_links_the_jpeg_into_place_and_never_replaces_one(
    store: DiskImageStore, spool: Spool
) -> None:
    image_id = new_id()
    put(store, spool, image_id)

    with pytest.raises(ImageExists):
        put(store, spool, image_id, b'another picture')

    assert read_original(store, image_id) == JPEG
    assert os.listdir(store.images_dir) == [f'{image_id}.jpeg']
    assert os.listdir(spool.directory) == []


def test_open_original_reads_the_file_until_it_is_deleted(
    store: DiskImageStore, spool: Spool
) -> None:
    image_id = new_id()
    put(store, spool, image_id)
    with store.local_path(image_id) as path:
        assert pathlib.Path(path).read_bytes() == JPEG

    store.delete(image_id)

    with pytest.raises(ImageNotFound):
        store.open_original(image_id)
    store.delete(image_id)  # gone already: not an error
    assert os.listdir(store.images_dir) == []


def test_objects_are_the_image_files_and_nothing_else(store: DiskImageStore, spool: Spool) -> None:
    ids = sorted(new_id() for _ in range(3))
    for image_id in ids:
        put(store, spool, image_id)
    for name in ('.0123456789abcdef01234567.tmp', 'notes.txt', 'ABC.jpeg', f'{ids[0]}.jpg'):
        (store.images_dir / name).write_bytes(b'not an image of ours')
    (store.images_dir / f'{new_id()}.jpeg.d').mkdir()

    objects = sorted(store.objects(), key=lambda stored: stored.id)

    assert [stored.id for stored in objects] == ids
    for stored in objects:
        assert stored.modified == os.stat(store.path(stored.id)).st_mtime


def test_in_progress_while_an_upload_holds_the_file(store: DiskImageStore, spool: Spool) -> None:
    """A JPEG linked into place, its entry not yet written, is still locked by its upload."""
    image_id = new_id()
    upload = spooled(spool)
    store.put(image_id, upload)

    assert store.in_progress(image_id)

    upload.close()
    assert not store.in_progress(image_id)
    assert not store.in_progress(new_id())  # no file at all


# -- quarantine ------------------------------------------------------------------------


def test_quarantine_moves_a_file_aside_and_restore_puts_it_back(
    store: DiskImageStore, spool: Spool
) -> None:
    image_id, other = new_id(), new_id()
    put(store, spool, image_id)
    put(store, spool, other)
    then = time.time() - 7200
    os.utime(store.path(image_id), (then, then))

    store.quarantine(image_id)

    assert not store.path(image_id).exists()
    aside = store.quarantine_dir / f'{image_id}.jpeg'
    assert aside.read_bytes() == JPEG
    assert [(stored.id, stored.modified) for stored in store.quarantined()] == [(image_id, then)]
    assert [stored.id for stored in store.objects()] == [other]
    with pytest.raises(ImageNotFound):
        store.open_original(image_id)  # not served while aside
    state = store.state()
    assert state['status'] == 'quarantine' and state['quarantined'] == 1
    assert str(store.quarantine_dir) in state['detail']

    store.restore(image_id)

    assert read_original(store, image_id) == JPEG
    assert os.stat(store.path(image_id)).st_mtime == then  # the upload time, kept
    assert list(store.quarantined()) == []
    assert store.state()['status'] == 'ok'


def test_restore_never_replaces_an_image(store: DiskImageStore, spool: Spool) -> None:
    image_id = new_id()
    put(store, spool, image_id)
    store.quarantine(image_id)
    put(store, spool, image_id, b'stored meanwhile')

    with pytest.raises(ImageExists):
        store.restore(image_id)

    assert read_original(store, image_id) == b'stored meanwhile'
    assert (store.quarantine_dir / f'{image_id}.jpeg').read_bytes() == JPEG


@pytest.mark.parametrize(
    'bad_id', ['../x', '../../index', '', 'x' * 36, '00000000-0000-0000-0000-00000000000A']
)
def test_malformed_id_never_touches_the_disk(
    store: DiskImageStore, spool: Spool, root: pathlib.Path, bad_id: str
) -> None:
    bait = root / 'x.jpeg'
    bait.write_bytes(b'not yours')
    (store.quarantine_dir).mkdir()
    shutil.copy(bait, store.quarantine_dir / 'x.jpeg')

    for call in (store.path, store.delete, store.quarantine, store.restore, store.in_progress):
        with pytest.raises(ImageNotFound):
            call(bad_id)
    with pytest.raises(ImageNotFound), store.local_path(bad_id):
        pass
    upload = spooled(spool)
    with pytest.raises(ImageNotFound):
        store.put(bad_id, upload)
    upload.close()

    assert bait.read_bytes() == b'not yours'
    assert os.listdir(store.quarantine_dir) == ['x.jpeg']
    assert os.listdir(store.images_dir) == []


# -- health ----------------------------------------------------------------------------


def test_state_reports_free_space_and_writes_nothing(
    store: DiskImageStore, spool: Spool, root: pathlib.Path
) -> None:
    put(store, spool, new_id())
    before = tree(root)

    state = store.state()

    assert state['status'] == 'ok'
    assert state['free_bytes'] == shutil.disk_usage(store.images_dir).free
    assert tree(root) == before


def test_state_fails_when_the_images_directory_is_gone(store: DiskImageStore) -> None:
    shutil.rmtree(store.images_dir)

    state = store.state()

    assert state['status'] == 'fail'
    assert str(store.images_dir) in state['detail']


# -- a read-only disk, under gunicorn ----------------------------------------------------


@pytest.fixture(scope='module')
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A small tmpfs of its own, so it can be remounted read-only for real."""
    with tmpfs(tmp_path_factory.mktemp('disk'), '16m') as mount_point:
        yield mount_point


def remount(mount_point: pathlib.Path, mode: str) -> None:
    done = subprocess.run(
        ['mount', '-o', f'remount,{mode}', str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f'remount,{mode} failed: {done.stderr}'


@contextlib.contextmanager
def read_only(mount_point: pathlib.Path) -> Iterator[None]:
    """Make the disk read-only for the block, as a failing disk or a read-only mount does."""
    remount(mount_point, 'ro')
    try:
        assert os.statvfs(mount_point).f_flag & os.ST_RDONLY
        yield
    finally:
        remount(mount_point, 'rw')


@dataclasses.dataclass
class Stored:
    """A gunicorn on the small disk and what it stored: id -> (JPEG, one thumbnail path)."""

    server: Gunicorn
    disk: pathlib.Path
    images: dict[str, tuple[bytes, str]]


@pytest.fixture(scope='module')
def stored(disk: pathlib.Path) -> Iterator[Stored]:
    with Gunicorn(disk / 'storage', workers=2) as server:
        images = {}
        for seed in (1, 2):
            created = request(
                'POST', f'{server.url}/images', image_bytes('PNG', (400, 300), seed=seed)
            )
            assert created.status == 201, created.body
            description = created.json()
            jpeg = get(f'{server.url}{description["image"]}').body
            images[description['id']] = (jpeg, description['thumbnails'][0])
        yield Stored(server, disk, images)


def check_error(response: Response, status: int) -> str:
    assert response.status == status, (response.status, response.body)
    assert response.header('Content-Type') == 'application/json'
    assert set(response.json()) == {'title', 'description'}, response.body
    description: str = response.json()['description']
    return description


def check_serves_reads_and_refuses_writes(server: Gunicorn, stored: Stored) -> None:
    """Listing, downloads and thumbnails work; uploads and deletes get 507; /health says so."""
    listing = get(f'{server.url}/images')
    assert listing.status == 200
    assert [image['id'] for image in listing.json()] == list(stored.images)
    for image_id, (jpeg, thumbnail) in stored.images.items():
        download = get(f'{server.url}/images/{image_id}.jpeg')
        assert (download.status, download.body) == (200, jpeg)
        rendered = get(f'{server.url}{thumbnail}')
        assert rendered.status == 200, rendered.body
        assert Image.open(io.BytesIO(rendered.body)).format == 'JPEG'

    victim = next(iter(stored.images))
    refused = check_error(request('DELETE', f'{server.url}/images/{victim}.jpeg'), 507)
    assert refused == (
        'The image could not be deleted because the storage is read-only; nothing changed.'
    )
    assert get(f'{server.url}/images/{victim}.jpeg').body == stored.images[victim][0]
    assert (server.storage_path / 'images' / f'{victim}.jpeg').exists()
    upload = request('POST', f'{server.url}/images', image_bytes('PNG', (64, 48), seed=9))
    check_error(upload, 507)

    health = get(f'{server.url}/health')
    assert health.status == 200, health.body
    assert health.json()['status'] == 'degraded'
    assert health.json()['storage']['status'] == 'read-only'
    assert health.json()['index']['status'] == 'ok'


def test_a_disk_gone_read_only_serves_reads_and_refuses_writes_with_507(
    stored: Stored,
) -> None:
    server = stored.server
    names_before = tree(server.storage_path)

    with read_only(stored.disk):
        check_serves_reads_and_refuses_writes(server, stored)

    assert tree(server.storage_path) == names_before
    health = get(f'{server.url}/health')
    assert health.json()['status'] == 'ok', health.body  # writable again, and said so
    assert list(stored.images) == [image['id'] for image in get(f'{server.url}/images').json()]


def test_look_starts_on_read_only_storage_and_serves_what_it_has(
    stored: Stored, make_gunicorn: MakeGunicorn
) -> None:
    """Even a store without a spool directory (an older version's, or a copy) starts."""
    storage = stored.server.storage_path
    shutil.rmtree(storage / 'spool')
    try:
        with read_only(stored.disk):
            server = make_gunicorn(storage, workers=1)
            check_serves_reads_and_refuses_writes(server, stored)
            assert 'serving reads only' in server.log()
            server.stop()  # on the read-only disk it ran on
    finally:
        (storage / 'spool').mkdir(exist_ok=True)
    assert not (storage / 'quarantine').exists()  # nothing was moved aside
