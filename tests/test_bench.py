"""The benchmark's Pillow limit does look's image work, so its ratios compare like with like."""

from __future__ import annotations

import json
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from falcon import testing
from PIL import Image

from bench import bare, limits, report, rounds, scenarios
from bench.rounds import Side
from look.imaging.convert import convert_upload
from look.imaging.formats import THUMBNAIL_FORMATS
from look.imaging.render import render_thumbnail
from look.imaging.renditions import thumbnail_sizes

from support.imagegen import image_bytes, modern, moving_picture


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


@pytest.mark.parametrize(('kind', 'size'), [('PNG', (640, 360)), ('HEIF', (1920, 1080))])
def test_the_pillow_limit_converts_uploads_to_looks_bytes_and_leaves_the_fsync_to_its_caller(
    tmp_path: pathlib.Path, kind: str, size: tuple[int, int]
) -> None:
    """As look does: the pool writes the JPEG and makes its placeholder; its caller fsyncs."""
    upload = tmp_path / 'upload'
    upload.write_bytes(
        modern(kind, size=size, seed=3) if kind == 'HEIF' else image_bytes(kind, size=size, seed=3)
    )
    looks = tmp_path / 'looks'
    looks.write_bytes(upload.read_bytes())
    made = convert_upload(str(looks), 100_000_000, limits.QUALITY)
    out = tmp_path / 'out'
    out.mkdir()

    converted = limits.convert(str(upload), str(out))
    in_place = limits.convert(str(upload), None)

    assert converted.size == in_place.size == size
    assert pathlib.Path(converted.path).parent == out
    assert in_place.path == str(upload)
    for path, _size, placeholder in (converted, in_place):
        assert pathlib.Path(path).read_bytes() == looks.read_bytes()
        assert placeholder == (made.thumbhash, made.color)  # made from the same pixels


def test_the_kept_jpeg_row_compares_looks_bytes_with_pillow_decoding_and_encoding_them(
    tmp_path: pathlib.Path,
) -> None:
    """look keeps the camera's JPEG (its pixels exactly); Pillow alone does what look did."""
    upload = tmp_path / 'upload'
    upload.write_bytes(scenarios.KEPT_JPEG.body)
    looks = tmp_path / 'looks'
    looks.write_bytes(upload.read_bytes())
    convert_upload(str(looks), 100_000_000, limits.QUALITY)

    converted = limits.reencode(str(upload), str(tmp_path))

    with Image.open(upload) as original, Image.open(looks) as kept:
        assert kept.tobytes() == original.tobytes()
        with Image.open(converted.path) as encoded_again:
            assert encoded_again.size == original.size
            assert encoded_again.tobytes() != original.tobytes()


def test_the_pillow_limit_converts_an_animation_to_looks_bytes(tmp_path: pathlib.Path) -> None:
    """Its first frame as look's JPEG, its frames as look's animated WebP, byte for byte."""
    upload = tmp_path / 'upload'
    upload.write_bytes(moving_picture((160, 90), frames=12))
    looks = tmp_path / 'looks'
    looks.write_bytes(upload.read_bytes())
    made = convert_upload(str(looks), 100_000_000, limits.QUALITY, str(tmp_path / 'looks.webp'))
    out = tmp_path / 'out'
    out.mkdir()

    path, size, placeholder = limits.convert_animation(str(upload), str(out))

    assert size == (160, 90)
    assert pathlib.Path(path).read_bytes() == looks.read_bytes()
    assert pathlib.Path(f'{path}.webp').read_bytes() == (tmp_path / 'looks.webp').read_bytes()
    assert placeholder == (made.thumbhash, made.color)


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

    assert rate.value > 0
    assert rate.answers == len(finished)
    assert finished
    assert len({converted.path for converted in finished}) == len(finished)  # a new file each
    assert all(converted.size == (64, 48) for converted in finished)


def test_the_bare_app_stores_an_upload_durably_named_and_listed_with_its_placeholder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work of storing an upload, as look's: the JPEG, its name and its index line durable."""
    uploads = tmp_path / 'uploads'
    uploads.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    # Pillow in a thread of this process: the same function the bare app's pool runs.
    monkeypatch.setattr(limits, 'start_pool', lambda processes: ThreadPoolExecutor(1))
    client = testing.TestClient(bare.create_app({'BENCH_BARE_UPLOADS': str(uploads)}))
    body = image_bytes('PNG', size=(640, 360), seed=5)
    looks = tmp_path / 'looks'
    looks.write_bytes(body)
    made = convert_upload(str(looks), 100_000_000, limits.QUALITY)

    answers = [
        client.simulate_post('/converted/convert', body=body, content_type='image/png')
        for _ in range(2)
    ]

    assert [answer.status_code for answer in answers] == [201, 201]
    listed = [json.loads(line) for line in (uploads / 'index.jsonl').read_bytes().splitlines()]
    assert listed == [answer.json for answer in answers]
    for entry in listed:
        jpeg = uploads / entry['id']
        assert jpeg.read_bytes() == looks.read_bytes()
        assert entry['size'] == [640, 360]
        assert (entry['thumbhash'], entry['color']) == (made.thumbhash, made.color)
    index = str(uploads / 'index.jsonl')
    every_upload = [str(uploads / listed[0]['id']), str(uploads), index]
    every_upload += [str(uploads / listed[1]['id']), str(uploads), index]
    assert synced == every_upload  # each JPEG, then its name, then its line


def test_every_upload_row_names_a_pillow_limit_that_pillow_alone_and_the_bare_app_run() -> None:
    assert {upload.limit for upload in scenarios.UPLOADS} <= set(limits.UPLOADS)


# -- the report: which rule meets a row ----------------------------------------------


def _side(*values: float) -> Side:
    return Side('side', lambda seconds: rounds.Figure(0.0, 0), values=list(values))


def _pillow_row(look: float, pillow: float) -> report.Row:
    return report.ratio_row(
        'uncached thumbnail', _side(look), _side(pillow), target=0.85, label='renders/s'
    )


def _bare_row(look: float, bare: float) -> report.Row:
    return report.ratio_row('the same work', _side(look), _side(bare), target=None, label='')


@pytest.mark.parametrize(
    ('pillow', 'bare', 'verdict'),
    [
        (100.0, 150.0, 'pass (target)'),  # its target is enough, whatever the bare app did
        (100.0, 100.0, 'pass (target)'),  # both rules met: the target is named
        (110.0, 95.0, 'pass (≥ 0.9x bare)'),  # 0.82x Pillow, but 0.95x the bare app
        (110.0, 100.0, 'pass (≥ 0.9x bare)'),  # exactly at the floor
        (110.0, 100.5, '**FAIL**'),  # 0.896x: below both
    ],
)
def test_a_row_is_met_by_its_target_or_by_the_bare_app_and_says_which(
    pillow: float, bare: float, verdict: str
) -> None:
    row, reference = report.settle(_pillow_row(90.0, pillow), _bare_row(90.0, bare))

    assert row.verdict == verdict
    assert row.passed is (verdict != '**FAIL**')
    assert reference.passed is None  # its figure counts only through the row above
    assert reference.target == '≥ 0.9x'


def test_a_reference_ratio_that_rounds_onto_the_floor_shows_a_third_digit() -> None:
    row, reference = report.settle(_pillow_row(89.6, 110.0), _bare_row(89.6, 100.0))

    assert reference.ratio == '0.896x'
    assert row.verdict == '**FAIL**'


def test_the_summary_counts_rows_met_by_the_bare_app_rule() -> None:
    rows = [
        *report.settle(_pillow_row(90.0, 100.0), _bare_row(90.0, 150.0)),
        *report.settle(_pillow_row(90.0, 110.0), _bare_row(90.0, 95.0)),
        *report.settle(_pillow_row(90.0, 110.0), _bare_row(90.0, 120.0)),
    ]

    text = report.markdown(rows, [], [], [], elapsed=1.0)

    assert '2 of 3 targets met (1 by the bare-app rule)' in text
    assert text.count('| reference |') == 3


@pytest.mark.parametrize(
    ('herd', 'renders', 'passed'),
    [
        ([0.070, 0.080, 0.090], [1, 1, 1], True),
        ([0.150, 0.160, 0.170], [1, 1, 1], False),  # one render, but 1.6x the time
        ([0.070, 0.080, 0.090], [1, 2, 1], False),  # quick, but one herd rendered twice
    ],
)
def test_a_herd_passes_in_little_more_than_one_requests_time_with_one_render_each(
    herd: list[float], renders: list[int], passed: bool
) -> None:
    row = report.herd_row('herd', _side(*herd), _side(0.100, 0.100, 0.100), renders, 1.25)

    assert row.passed is passed
    assert row.look.endswith('1 render') is (max(renders) == 1)


def test_cpu_per_answer_is_compared_in_the_sense_of_the_row() -> None:
    """A rate row's CPU ratio is below 1 when look costs more, as its rate ratio would be."""
    look = Side('look', lambda seconds: rounds.Figure(0.0, 0), values=[1.0], cpu=[0.004])
    limit = Side('limit', lambda seconds: rounds.Figure(0.0, 0), values=[1.0], cpu=[0.002])

    rate = report.ratio_row('rate', look, limit, target=0.9, label='req/s')
    time = report.ratio_row('time', look, limit, target=1.5, label='small', at_most=True)

    assert rate.cpu == '4.00 / 2.00 ms (0.50x)'
    assert time.cpu == '4.00 / 2.00 ms (2.00x)'


# -- the rounds: every side in every place -------------------------------------------


@pytest.mark.parametrize('sides', [2, 3])
def test_over_two_rounds_per_side_every_side_runs_twice_in_every_place(sides: int) -> None:
    orders = [rounds.order(n, sides) for n in range(2 * sides)]

    assert all(sorted(turn) == list(range(sides)) for turn in orders)
    for place in range(sides):
        assert sorted(turn[place] for turn in orders) == sorted(list(range(sides)) * 2)
