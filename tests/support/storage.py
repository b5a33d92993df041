"""What a store holds, read behind look's back, for tests that find nothing left.

Most helpers read a local store's files; those that take a Config read
either backend: the files under its storage path, or its bucket prefix
and index schema.
"""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from look.config import Config
from look.core.imagestore.s3 import parse_images_url
from look.core.index.journal import decode_line


def storage_state(where: pathlib.Path | Config) -> tuple[list[str], bytes]:
    """Return every name in images/ and spool/ (temp files too), and the index bytes.

    For a Config on the shared backends: every object key under its prefix
    and every name in its spool and originals directories, and the index
    rows (tombstones too).
    """
    if isinstance(where, Config):
        if where.images_url:
            return _shared_state(where)
        where = where.storage_path
    root = pathlib.Path(where)
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


# The ops of the journal's lines: images, then the list of objects to remove.
OPS = ('add', 'delete', 'remove', 'due', 'removed')


def indexed_ids(root: pathlib.Path) -> list[str]:
    """Return the ids the index lists, in order; assert no id is added twice."""
    live: dict[str, None] = {}
    for number, record in enumerate(index_records(root), 1):
        image_id = str(record['id'])
        assert record['op'] in OPS, f'line {number}: {record!r}'
        if record['op'] == 'add':
            assert image_id not in live, f'line {number} adds {image_id} twice'
            live[image_id] = None
        elif record['op'] == 'delete':
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


# -- either backend ------------------------------------------------------------


def s3_client(config: Config) -> Any:
    """Return a boto3 client of the object store a Config uses."""
    import boto3
    import botocore.config

    settings = botocore.config.Config(s3={'addressing_style': 'path'})
    return boto3.session.Session().client('s3', config=settings, **config.s3_options)


def _keys(config: Config) -> list[str]:
    bucket, prefix = parse_images_url(config.images_url)
    client = s3_client(config)
    try:
        pages = client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item['Key'] for page in pages for item in page.get('Contents', ()))
    finally:
        client.close()


def _index_rows(config: Config) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(config.index_url) as connection:
        return connection.execute(
            'SELECT seq, id::text, modified, width, height, length, token_hash, deleted_at '
            'FROM look_images ORDER BY seq'
        ).fetchall()


def _shared_state(config: Config) -> tuple[list[str], bytes]:
    names = [f's3:{key}' for key in _keys(config)]
    for directory in ('spool', 'originals'):
        path = pathlib.Path(config.storage_path) / directory
        if path.is_dir():
            names += sorted(f'{directory}/{name}' for name in os.listdir(path))
    return names, repr(_index_rows(config)).encode()


def stored_jpeg(config: Config, image_id: str) -> bytes:
    """Return the stored JPEG of an image, from the store itself (not a cache)."""
    if not config.images_url:
        return (pathlib.Path(config.storage_path) / 'images' / f'{image_id}.jpeg').read_bytes()
    bucket, prefix = parse_images_url(config.images_url)
    client = s3_client(config)
    try:
        return bytes(
            client.get_object(Bucket=bucket, Key=f'{prefix}images/{image_id}.jpeg')['Body'].read()
        )
    finally:
        client.close()


def stored_ids(config: Config) -> set[str]:
    """Return the ids of the JPEGs in the store."""
    if not config.images_url:
        return image_files(config.storage_path)
    _, prefix = parse_images_url(config.images_url)
    return {
        key.removeprefix(f'{prefix}images/').removesuffix('.jpeg')
        for key in _keys(config)
        if key.startswith(f'{prefix}images/')
    }


def remove_jpeg(config: Config, image_id: str) -> None:
    """Remove an image's JPEG behind look's back: its file, or its object and cached copies."""
    if not config.images_url:
        (pathlib.Path(config.storage_path) / 'images' / f'{image_id}.jpeg').unlink()
        return
    bucket, prefix = parse_images_url(config.images_url)
    client = s3_client(config)
    try:
        client.delete_object(Bucket=bucket, Key=f'{prefix}images/{image_id}.jpeg')
    finally:
        client.close()
    cached = pathlib.Path(config.storage_path) / 'originals' / f'{image_id}.jpeg'
    cached.unlink(missing_ok=True)


# Ids that must never become a path, a key or a line: traversals, other
# spellings of a UUID, control characters.
MALFORMED_IDS = (
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
)
