"""The upload spool on a real directory: locked temp files, and what crashed uploads left.

A second ``Spool`` opened on the same directory stands in for another worker starting.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import pytest

from look.core.imagestore.disk import DiskImageStore, is_locked
from look.core.spool import TEMP_GRACE_SECONDS, Spool

ABANDONED = '.0123456789abcdef01234567.tmp'


def age(path: pathlib.Path, seconds: float) -> None:
    """Set the modification time ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def another_worker_starts(directory: pathlib.Path) -> None:
    Spool(directory).open()


@pytest.fixture
def spool(tmp_path: pathlib.Path) -> Spool:
    spool = Spool(tmp_path / 'storage' / 'spool')
    spool.open()
    return spool


def test_a_spool_file_is_locked_while_open_and_gone_when_closed(spool: Spool) -> None:
    upload = spool.create()
    upload.file.write(b'part of a body')
    upload.file.flush()

    assert upload.path.parent == spool.directory
    assert upload.path.name.startswith('.') and upload.path.name.endswith('.tmp')
    assert is_locked(upload.path)

    upload.close()

    assert os.listdir(spool.directory) == []
    upload.close()  # twice is harmless


def test_abandoned_temp_file_is_removed_on_open(spool: Spool) -> None:
    abandoned = spool.directory / ABANDONED
    abandoned.write_bytes(b'half an upload')
    age(abandoned, TEMP_GRACE_SECONDS + 5)

    another_worker_starts(spool.directory)

    assert not abandoned.exists()


def test_fresh_unlocked_temp_file_is_kept(spool: Spool) -> None:
    """Another worker may have created it and not locked it yet."""
    fresh = spool.directory / ABANDONED
    fresh.write_bytes(b'just created')
    age(fresh, TEMP_GRACE_SECONDS - 10)

    another_worker_starts(spool.directory)

    assert fresh.read_bytes() == b'just created'


def test_locked_temp_file_survives_another_workers_start(spool: Spool) -> None:
    """The trap: start-up clean-up must never delete an upload in progress, however old."""
    upload = spool.create()
    upload.file.write(b'a slow client')
    upload.file.flush()
    age(upload.path, 10 * TEMP_GRACE_SECONDS)

    another_worker_starts(spool.directory)

    assert upload.path.read_bytes() == b'a slow client'
    upload.close()


def test_files_that_are_no_temp_files_are_left_alone(spool: Spool) -> None:
    kept = ['notes.txt', 'upload.tmp', '.profile', f'{ABANDONED}.jpeg']
    for name in kept:
        (spool.directory / name).write_text('not ours to delete')
        age(spool.directory / name, 10 * TEMP_GRACE_SECONDS)

    another_worker_starts(spool.directory)

    assert sorted(os.listdir(spool.directory)) == sorted(kept)


def test_temp_files_older_versions_left_beside_the_images_are_cleaned_up(
    tmp_path: pathlib.Path,
) -> None:
    """Before the spool existed, uploads were written in images/ under the same names."""
    images = tmp_path / 'storage' / 'images'
    images.mkdir(parents=True)
    abandoned, fresh = images / ABANDONED, images / '.fedcba9876543210fedcba98.tmp'
    abandoned.write_bytes(b'half an upload')
    fresh.write_bytes(b'just created')
    age(abandoned, TEMP_GRACE_SECONDS + 5)

    DiskImageStore(tmp_path / 'storage').open()

    assert sorted(os.listdir(images)) == [fresh.name]


def test_a_spool_directory_removed_while_running_is_made_again(spool: Spool) -> None:
    shutil.rmtree(spool.directory)

    upload = spool.create()

    assert upload.path.parent == spool.directory and is_locked(upload.path)
    upload.close()


def test_an_animation_the_pool_wrote_is_a_spool_file_locked_while_adopted(spool: Spool) -> None:
    upload = spool.create()
    companion = spool.companion(upload)
    companion.write_bytes(b'an animated WebP')  # as the pool writes it

    adopted = spool.adopt(companion)

    assert companion.parent == spool.directory
    assert is_locked(companion)
    another_worker_starts(spool.directory)
    assert companion.read_bytes() == b'an animated WebP'
    adopted.close()
    upload.close()
    assert os.listdir(spool.directory) == []


def test_an_animation_a_crash_left_in_the_spool_is_removed_at_start(spool: Spool) -> None:
    upload = spool.create()
    companion = spool.companion(upload)
    companion.write_bytes(b'an animated WebP of a crashed upload')
    age(companion, TEMP_GRACE_SECONDS + 5)
    upload.close()

    another_worker_starts(spool.directory)

    assert os.listdir(spool.directory) == []
