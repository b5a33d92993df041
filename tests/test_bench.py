"""The benchmark's Pillow limit does look's image work, so its ratios compare like with like."""

from __future__ import annotations

import pathlib

import pytest

from bench import limits
from look.thumbnailer import convert_upload, render_thumbnail, thumbnail_sizes

from imagegen import image_bytes


@pytest.mark.parametrize('source_size', [(1920, 1080), (1921, 1081), (641, 361)])
def test_the_pillow_limit_renders_looks_thumbnails_byte_for_byte(
    tmp_path: pathlib.Path, source_size: tuple[int, int]
) -> None:
    """Drafts of the size itself, drafts a row over it, and real resizes alike."""
    path = tmp_path / 'stored.jpeg'
    path.write_bytes(image_bytes('JPEG', size=source_size, seed=7, quality=90))
    convert_upload(str(path), 100_000_000, limits.QUALITY)

    for size in thumbnail_sizes(source_size, 16):
        assert limits.render(str(path), size) == render_thumbnail(
            str(path), size, limits.QUALITY
        ), size
