"""What a local store holds on disk, read behind look's back, for tests that find nothing left."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable

import pytest

from look.index.journal import decode_line


def storage_state(root: pathlib.Path) -> tuple[list[str], bytes]:
    """Return every name in images/ and spool/ (temp files too), and the index bytes."""
    root = pathlib.Path(root)
    names = sorted(os.listdir(root / 'images'))
    spool = root / 'spool'
    if spool.is_dir():
        names += sorted(f'spool/{name}' for name in os.listdir(spool))
    return names, (root / 'index.jsonl').read_bytes()


def index_records(root: pathlib.Path) -> list[dict[str, object]]:
    """Return the index's records in order; assert every line is whole and sound."""
    data = (pathlib.Path(root) / 'index.jsonl').read_bytes()
    assert not data or data.endswith(b'\n'), f'the index ends in a half line: {data[-200:]!r}'
    return [decode_line(line) for line in data.splitlines()]


def indexed_ids(root: pathlib.Path) -> list[str]:
    """Return the ids the index lists, in order; assert no id is added twice."""
    live: dict[str, None] = {}
    for number, record in enumerate(index_records(root), 1):
        image_id = str(record['id'])
        assert record['op'] in ('add', 'delete'), f'line {number}: {record!r}'
        if record['op'] == 'add':
            assert image_id not in live, f'line {number} adds {image_id} twice'
            live[image_id] = None
        else:
            live.pop(image_id, None)
    return list(live)


def temp_files(root: pathlib.Path) -> list[str]:
    """Return the temporary files in the images and spool directories, relative to ``root``."""
    return [
        name if name.startswith('spool/') else f'images/{name}'
        for name in storage_state(root)[0]
        if name.removeprefix('spool/').startswith('.') and name.endswith('.tmp')
    ]


def image_files(root: pathlib.Path) -> set[str]:
    """Return the ids of the committed JPEG files on disk."""
    return {
        name.removesuffix('.jpeg')
        for name in os.listdir(pathlib.Path(root) / 'images')
        if name.endswith('.jpeg') and not name.startswith('.')
    }


def fail_index_fsyncs(
    monkeypatch: pytest.MonkeyPatch,
    journal: pathlib.Path,
    read_by_another: Callable[[], object],
    *,
    times: int,
) -> None:
    """Make the next ``times`` fsyncs of the journal fail, once another worker has read it."""
    journal_inode = os.stat(journal).st_ino
    real_fsync = os.fsync
    left = [times]

    def fsync(fd: int) -> None:
        if left[0] and os.fstat(fd).st_ino == journal_inode:
            left[0] -= 1
            read_by_another()  # another worker applies the complete, unsynced line
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)


def fail_undo_writes(monkeypatch: pytest.MonkeyPatch, op: str, *, written: int = 0) -> None:
    """Make writing a journal line of ``op`` (the undo) fail, after its first ``written`` bytes."""
    marker = f'"{op}"'.encode()
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if marker in data:
            if written:
                real_write(fd, data[:written])
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    monkeypatch.setattr(os, 'write', write)
