"""The benchmark's Pillow limit does look's image work, so its ratios compare like with like."""

from __future__ import annotations

import pathlib

import pytest

from bench import limits
from look.renditions import thumbnail_sizes
from look.thumbnailer import THUMBNAIL_FORMATS, convert_upload, render_thumbnail

from imagegen import image_bytes


@pytest.mark.parametrize('fmt', THUMBNAIL_FORMATS)
@pytest.mark.parametrize('source_size', [(1920, 1080), (1921, 1081), (641, 361)])
def test_the_pillow_limit_renders_looks_thumbnails_byte_for_byte(
    tmp_path: pathlib.Path, source_size: tuple[int, int], fmt: str
) -> None:
    """Drafts of the size itself, drafts a row over it, and real resizes alike, in every format."""
    path = tmp_path / 'stored.jpeg'
    path.write_bytes(image_bytes('JPEG', size=source_size, seed=7, quality=90))
    convert_upload(str(path), 100_000_000, limits.QUALITY)

    for size in thumbnail_sizes(source_size, 16):
        assert limits.render(str(path), size, fmt) == render_thumbnail(
            str(path), size, fmt, limits.QUALITY
        ), size


@pytest.mark.parametrize(('kind', 'size'), [('JPEG', (1920, 1080)), ('PNG', (640, 360))])
def test_the_pillow_limit_converts_uploads_to_looks_bytes_and_leaves_the_fsync_to_its_caller(
    tmp_path: pathlib.Path, kind: str, size: tuple[int, int]
) -> None:
    """As look does: the pool writes the JPEG, and the process waiting for it makes it durable."""
    upload = tmp_path / 'upload'
    upload.write_bytes(image_bytes(kind, size=size, seed=3))
    looks = tmp_path / 'looks'
    looks.write_bytes(upload.read_bytes())
    convert_upload(str(looks), 100_000_000, limits.QUALITY)
    out = tmp_path / 'out'
    out.mkdir()

    converted = limits.convert(str(upload), str(out))
    in_place = limits.convert(str(upload), None)

    assert converted[1] == in_place[1] == size
    assert pathlib.Path(converted[0]).parent == out
    assert in_place[0] == str(upload)
    for path, _size in (converted, in_place):
        assert pathlib.Path(path).read_bytes() == looks.read_bytes()


def test_the_pillow_limit_finishes_each_result_in_the_waiting_process(
    tmp_path: pathlib.Path,
) -> None:
    source = tmp_path / 'upload.png'
    source.write_bytes(image_bytes('PNG', size=(64, 48), seed=1))
    finished: list[tuple[str, tuple[int, int]]] = []
    pool = limits.start_pool(1)
    try:
        rate = limits.pool_throughput(
            pool,
            limits.convert,
            [(str(source), str(tmp_path))],
            seconds=0.2,
            in_flight=2,
            finish=finished.append,
        )
    finally:
        pool.shutdown()

    assert rate > 0
    assert finished
    assert len({path for path, _size in finished}) == len(finished)  # a new file each time
    assert all(size == (64, 48) for _path, size in finished)
