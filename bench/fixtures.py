"""Seeded test images, and look storage directories built directly on disk.

A 50 000-image index is written in look's own format (look/index/journal.py)
rather than uploaded: ``index.jsonl`` add records, and ``images/<id>.jpeg``
hard links to one JPEG, so it takes seconds, not hours.
"""

from __future__ import annotations

import os
import pathlib
import random
import time
import uuid

from look.core.index import StoredImage
from look.core.index.journal import encode_line

from support.imagegen import encode, picture

MiB = 1024 * 1024


def write_image(
    path: pathlib.Path, fmt: str, size: tuple[int, int], seed: int, **params: object
) -> pathlib.Path:
    """Write a seeded picture of ``size`` encoded as ``fmt``; return its path."""
    path.write_bytes(encode(picture(size, seed=seed), fmt, **params))
    return path


def bmp_under(limit: int, seed: int) -> bytes:
    """Return an uncompressed 24-bit BMP just under ``limit`` bytes (3:4 aspect)."""
    # 54-byte header; rows padded to 4 bytes, so keep the width a multiple of 4.
    height = int((limit / 3 / (4 / 3)) ** 0.5)
    width = (height * 4 // 3) // 4 * 4
    while 54 + width * 3 * height > limit:
        height -= 1
    return encode(picture((width, height), seed=seed), 'BMP')


def build_storage(
    root: pathlib.Path, count: int, jpeg: pathlib.Path, size: tuple[int, int], seed: int = 0
) -> None:
    """Create a look storage directory holding ``count`` copies (hard links) of ``jpeg``."""
    images = root / 'images'
    images.mkdir(parents=True)
    (root / 'index.lock').touch()
    lines = []
    for image in stored_images(count, size, seed):
        os.link(jpeg, images / f'{image.id}.jpeg')
        record = {'op': 'add', 'id': image.id, 'modified': image.modified, 'size': list(size)}
        lines.append(encode_line(record))
    (root / 'index.jsonl').write_bytes(b''.join(lines))


def stored_images(count: int, size: tuple[int, int], seed: int = 0) -> list[StoredImage]:
    """Return ``count`` index entries with seeded ids, uploaded a second apart until now."""
    rng = random.Random(seed)
    modified = int(time.time()) - count
    return [
        StoredImage(str(uuid.UUID(int=rng.getrandbits(128), version=4)), modified + n, size)
        for n in range(count)
    ]
