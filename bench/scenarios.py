"""The measurements: each group starts the servers it needs and compares look with its limit."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import pathlib
import random
import runpy
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench import fixtures, limits
from bench.harness import GUNICORN_CONF, BenchError, Server, gunicorn, log
from bench.load import Call, Rate, at_once, latencies, send, throughput
from bench.procfs import CpuMeter, PeakRss, status_kib
from bench.report import (
    Row,
    herd_row,
    memory_row,
    settle,
    slowdown_row,
    throughput_row,
)
from bench.rounds import BENCH, NONE, SERVICES, RetryBudget, Rounds, interleave
from look.core.index.postgres import PostgresIndex

from support.postgres import PostgresDatabase
from support.seaweed import SeaweedServer

MiB = 1024 * 1024
LOOK_APP = 'look.wsgi:app'
BARE_APP = 'bench.bare:create_app()'
SEED_COUNT = 4  # distinct stored images per source size, cycled by the load
# NOTE: 1921x1081 has odd sides: its halving rounds down where the JPEG
#   decoder's 1/2 scale rounds up (961x541 for a 960x540).
SOURCES = {'1920x1080': (1920, 1080), '1921x1081': (1921, 1081), '4000x3000': (4000, 3000)}
DOWNLOADS = ['1920x1080', '4000x3000']
FORMAT_NAMES = {'jpeg': 'JPEG', 'webp': 'WebP', 'avif': 'AVIF'}
# (source, thumbnail size, format)
UNCACHED = [
    ('1920x1080', (960, 540), 'jpeg'),
    ('1921x1081', (960, 540), 'jpeg'),
    ('1920x1080', (240, 135), 'jpeg'),
    ('4000x3000', (500, 375), 'jpeg'),
    ('1920x1080', (960, 540), 'webp'),
    ('1920x1080', (240, 135), 'webp'),
    ('1920x1080', (960, 540), 'avif'),
    ('1920x1080', (240, 135), 'avif'),
]
CACHED = [
    ('1920x1080', (240, 135), 'jpeg'),
    ('1920x1080', (960, 540), 'jpeg'),
    ('1920x1080', (960, 540), 'webp'),
    ('1920x1080', (960, 540), 'avif'),
]
HERD = ('1920x1080', (960, 540), 'webp')
HERD_SIZE = 32  # requests at once for one uncached thumbnail


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclasses.dataclass
class Settings:
    """Knobs, from BENCH_* environment variables, for quick runs while developing."""

    # NOTE: 1.5 s rounds hold about 80 WebP 960x540 renders on two cores, and keep
    #   the run, three sides for each render and upload, within ten minutes.
    seconds: float = 1.5
    warmup: float = 0.5
    rounds: int = 5
    concurrency: int = 8
    # NOTE: pool-bound work (renders, uploads) is loaded with as many requests
    #   as the Pillow limit has jobs queued, so both sides wait alike.
    pool_jobs: int = 2 * (os.cpu_count() or 1)
    index_size: int = 50_000
    groups: tuple[str, ...] = dataclasses.field(default_factory=lambda: GROUPS)

    @classmethod
    def from_env(cls) -> Settings:
        groups = tuple(g for g in os.environ.get('BENCH_ONLY', '').split(',') if g) or GROUPS
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise BenchError(
                f'BENCH_ONLY names unknown groups {sorted(unknown)}; use {", ".join(GROUPS)}'
            )
        return cls(
            seconds=_env_number('BENCH_SECONDS', cls.seconds),
            warmup=_env_number('BENCH_WARMUP', cls.warmup),
            rounds=int(_env_number('BENCH_ROUNDS', cls.rounds)),
            concurrency=int(_env_number('BENCH_CONCURRENCY', cls.concurrency)),
            pool_jobs=int(_env_number('BENCH_POOL_JOBS', cls.pool_jobs)),
            index_size=int(_env_number('BENCH_INDEX_SIZE', cls.index_size)),
            groups=groups,
        )

    def describe(self) -> list[tuple[str, str]]:
        return [
            (
                'rounds',
                f'{self.rounds} x {self.seconds:g} s per side (+ {self.warmup:g} s warm-up); '
                'renders and uploads have three sides (look, Pillow alone, the bare app)',
            ),
            (
                'load',
                f'keep-alive HTTP/1.1 connections, one thread each, spread evenly over the '
                f'web workers: {self.concurrency} for cache hits and downloads, '
                f'{self.pool_jobs} for renders and uploads',
            ),
            (
                'Pillow pool',
                f'ProcessPoolExecutor({os.cpu_count()}) spawn, {self.pool_jobs} jobs queued',
            ),
            ('look', f'gunicorn -c gunicorn.conf.py look.wsgi:app ({_gunicorn_settings()})'),
            (
                'herd',
                f'{HERD_SIZE} requests on connections opened beforehand, let go together, and '
                f'one request alone: {2 * self.rounds} rounds of each, every one for a '
                'thumbnail of an image uploaded just before; look with Redis',
            ),
            ('large index', f'{self.index_size} images'),
            (
                'shared backends',
                'a private SeaweedFS (weed server -s3) and a database of our own on the '
                "machine's PostgreSQL; a third side with LOOK_ORIGINALS_CACHE_BYTES=0",
            ),
        ]


def _gunicorn_settings() -> str:
    """Describe the workers and threads gunicorn.conf.py gives look and the bare app alike."""
    environ = os.environ.copy()
    try:
        conf = runpy.run_path(str(GUNICORN_CONF))  # it sets LOOK_PROCESSES unless set
        processes = int(os.environ.get('LOOK_PROCESSES') or os.cpu_count() or 1)
    finally:
        os.environ.clear()
        os.environ.update(environ)
    pool = '1 image process' if processes == 1 else f'{processes} image processes'
    return (
        f'{conf.get("workers")} {conf.get("worker_class")} workers x {conf.get("threads")} '
        f'threads, each with a pool of {pool}'
    )


@dataclasses.dataclass
class Context:
    """What the measurements share: settings, the work directory, Redis, the seed images."""

    settings: Settings
    workdir: pathlib.Path
    redis_url: str
    notes: list[str] = dataclasses.field(default_factory=list)
    # NOTE: the run takes about seven minutes; measuring noisy rounds again
    #   may add this much, so that it stays under ten.
    retries: RetryBudget = dataclasses.field(default_factory=lambda: RetryBudget(45.0))
    files: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)
    seeds: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def main_storage(self) -> pathlib.Path:
        return self.workdir / 'storage-main'

    def look_env(self, storage: pathlib.Path, *, cache: bool, **extra: str) -> dict[str, str]:
        return {
            'LOOK_STORAGE_PATH': str(storage),
            'LOOK_REDIS_URL': self.redis_url if cache else '',
            **extra,
        }


def prepare_files(ctx: Context) -> None:
    """Generate the seeded images every measurement uses."""
    directory = ctx.workdir / 'images'
    directory.mkdir()
    for name, size in SOURCES.items():
        for seed in range(SEED_COUNT):
            path = directory / f'source-{name}-{seed}.jpeg'
            ctx.files[f'{name}-{seed}'] = fixtures.write_image(
                path, 'JPEG', size, seed, quality=90
            )
    ctx.files['upload-jpeg'] = fixtures.write_image(
        directory / 'upload.jpeg', 'JPEG', (1920, 1080), 100, quality=90
    )
    ctx.files['upload-png'] = fixtures.write_image(
        directory / 'upload.png', 'PNG', (640, 360), 101
    )
    ctx.files['list-jpeg'] = fixtures.write_image(
        directory / 'list.jpeg', 'JPEG', (640, 360), 102, quality=85
    )
    (ctx.workdir / 'limit-out').mkdir()
    (ctx.workdir / 'bare-uploads').mkdir()


def _upload_seeds(ctx: Context, server: Server, sources: list[str]) -> dict[str, list[str]]:
    """Upload the seed images of ``sources`` through look; return their ids by source."""
    log(f'uploading {SEED_COUNT * len(sources)} seed images to {server.name}')
    seeds = {}
    for name in sources:
        ids = []
        for seed in range(SEED_COUNT):
            body = ctx.files[f'{name}-{seed}'].read_bytes()
            answer = send(
                server.port,
                Call('POST', '/images', body, {'Content-Type': 'image/jpeg'}, expect=201),
            )
            ids.append(answer.json()['id'])
        seeds[name] = ids
    return seeds


def _seed(ctx: Context, server: Server) -> None:
    """Upload the seed images through look, once, so both sides read look's stored JPEGs."""
    if not ctx.seeds:
        ctx.seeds = _upload_seeds(ctx, server, list(SOURCES))


def _stored(ctx: Context, image_id: str) -> str:
    return str(ctx.main_storage / 'images' / f'{image_id}.jpeg')


@dataclasses.dataclass
class LoadStats:
    """What each round of HTTP load cost besides the server: to judge the figures by."""

    rates: list[Rate] = dataclasses.field(default_factory=list)
    busiest_worker: list[float] = dataclasses.field(default_factory=list)

    def clear(self) -> None:
        self.rates.clear()
        self.busiest_worker.clear()

    def describe(self) -> str:
        cpu = statistics.median(rate.client_cpu for rate in self.rates)
        dealt = ', '.join(rate.dealt for rate in self.rates)
        text = f'client CPU {cpu:.0%} of a core; connections as first dealt [{dealt}]'
        if self.busiest_worker:
            busiest = statistics.median(self.busiest_worker)
            text += f', evened out: busiest worker did {busiest:.0%} of web-worker CPU'
        return text


def _http_rate(
    server: Server, calls: list[Call], concurrency: int, seconds: float, stats: LoadStats
) -> float:
    before = server.worker_cpu()
    rate = throughput(
        server.port, calls, concurrency=concurrency, seconds=seconds, workers=list(before)
    )
    after = server.worker_cpu()
    used = [after[pid] - before[pid] for pid in after if pid in before]
    if len(used) > 1 and sum(used) > 0:
        stats.busiest_worker.append(max(used) / sum(used))
    stats.rates.append(rate)
    return rate.per_second


@dataclasses.dataclass
class Load:
    """One side of a comparison: its rate over so many seconds, and whose CPU that costs."""

    name: str
    rate: Callable[[float], float]
    whose: str
    stats: LoadStats | None = None


def _http(name: str, server: Server, calls: list[Call], concurrency: int) -> Load:
    stats = LoadStats()
    return Load(
        name,
        functools.partial(_http_rate, server, calls, concurrency, stats=stats),
        SERVICES,
        stats,
    )


# The Pillow limit's function, its jobs, and what this process does with each result.
PillowWork = tuple[Callable[..., Any], list[tuple[Any, ...]], Callable[[Any], object] | None]


def _pillow(
    pool: concurrent.futures.ProcessPoolExecutor, work: PillowWork, in_flight: int
) -> Load:
    function, jobs, finish = work

    def rate(seconds: float) -> float:
        return limits.pool_throughput(
            pool, function, jobs, seconds=seconds, in_flight=in_flight, finish=finish
        )

    return Load('Pillow', rate, BENCH)


def _measure(ctx: Context, work: str, loads: list[Load]) -> tuple[Rounds, str]:
    """Warm every side up, then interleave their rounds; return them and a note on the load."""
    s = ctx.settings
    log(work)
    for load in loads:
        load.rate(s.warmup)
        if load.stats is not None:
            load.stats.clear()  # the warm-up does not count
    rounds = interleave(
        [(load.name, functools.partial(load.rate, s.seconds), load.whose) for load in loads],
        s.rounds,
        ctx.retries,
    )
    notes = [
        f'{load.name}: {load.stats.describe()}'
        for load in loads
        if load.stats is not None and load.stats.rates
    ]
    return rounds, '; '.join([*notes, rounds.noise()])


def _versus(
    rounds: Rounds,
    other: int,
    work: str,
    *,
    target: float | None,
    limit_unit: str,
    note: str,
) -> Row:
    """Return the row of look (the first side) against side ``other`` of the same rounds."""
    look, limit = rounds.sides[0], rounds.sides[other]
    row = throughput_row(
        work,
        look.values,
        limit.values,
        target=target,
        limit_unit=limit_unit,
        note=note,
        cpu=(look.cpu, limit.cpu),
    )
    log(f'  {row.look} vs {row.limit}: {row.ratio}')
    return row


def _work(source: str, size: tuple[int, int], format: str) -> str:
    return f'{source} → {size[0]}x{size[1]} {FORMAT_NAMES[format]}'


def _note_cache_skips(ctx: Context, server: Server) -> None:
    """Note each time look served uncached because Redis did not answer in time."""
    skips = server.log_path.read_text(errors='replace').count('serving uncached')
    if skips:
        ctx.notes.append(
            f'{server.name}: Redis did not answer look in time {skips} times, and each time '
            'look served uncached for a few seconds (its log says so): those rounds count '
            'against look'
        )


# -- uncached thumbnails and uploads vs Pillow alone, and vs the bare app ------------


def uncached(ctx: Context) -> list[Row]:
    """Thumbnails with the cache off, and uploads, vs Pillow alone in a pool.

    The same rounds measure a third side: the bare app doing the same render
    or conversion in its own pool under the same gunicorn. Its reference row
    shows how much of the gap to Pillow alone is HTTP itself, and meets the
    row when look answers at least ``report.BARE_FLOOR`` times its rate.
    """
    s = ctx.settings
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        env = ctx.look_env(ctx.main_storage, cache=False)
        server = stack.enter_context(gunicorn('look-nocache', LOOK_APP, ctx.workdir, env))
        bare_env = {
            'BENCH_BARE_FILES': str(ctx.main_storage / 'images'),
            'BENCH_BARE_UPLOADS': str(ctx.workdir / 'bare-uploads'),
        }
        bare = stack.enter_context(gunicorn('bare-render', BARE_APP, ctx.workdir, bare_env))
        _seed(ctx, server)
        pool = limits.start_pool()
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)

        def compare(
            work: str,
            calls: list[Call],
            pillow: PillowWork,
            bare_calls: list[Call],
            *,
            target: float,
            limit_unit: str,
            same: str,
        ) -> None:
            """Add the row against Pillow alone, then its reference row against the bare app."""
            rounds, note = _measure(
                ctx,
                work,
                [
                    _http('look', server, calls, s.pool_jobs),
                    _pillow(pool, pillow, s.pool_jobs),
                    _http('bare', bare, bare_calls, s.pool_jobs),
                ],
            )
            row = _versus(rounds, 1, work, target=target, limit_unit=limit_unit, note=note)
            reference = _versus(
                rounds,
                2,
                f'{work}: the same {same} behind a bare Falcon app',
                target=None,
                limit_unit='req/s (bare)',
                note='the rounds of the row above',
            )
            rows.extend(settle(row, reference))

        for source, size, format in UNCACHED:
            ids = ctx.seeds[source]
            width, height = size
            compare(
                f'uncached thumbnail {_work(source, size, format)}',
                [Call('GET', f'/thumbnails/{i}/{width}x{height}.{format}') for i in ids],
                (limits.render, [(_stored(ctx, i), size, format) for i in ids], None),
                [Call('GET', f'/rendered/{i}.jpeg/{width}x{height}.{format}') for i in ids],
                target=0.85,
                limit_unit='renders/s',
                same='render',
            )

        out = str(ctx.workdir / 'limit-out')
        for key, work, content_type in (
            ('upload-jpeg', 'upload 1920x1080 JPEG', 'image/jpeg'),
            ('upload-png', 'upload 640x360 PNG', 'image/png'),
        ):
            body = ctx.files[key].read_bytes()
            headers = {'Content-Type': content_type}
            compare(
                work,
                [Call('POST', '/images', body, headers, expect=201)],
                (limits.convert, [(str(ctx.files[key]), out)], limits.fsync_converted),
                [Call('POST', '/converted', body, headers, expect=201)],
                target=0.8,
                limit_unit='conversions/s',
                same='conversion',
            )
    return rows


# -- cache hits and downloads vs a bare Falcon app ---------------------------------


def cached(ctx: Context) -> list[Row]:
    """Redis hits and original downloads vs the bare app under the same gunicorn settings."""
    rows = []
    client = redis.Redis.from_url(ctx.redis_url)
    bare_env = {
        'BENCH_BARE_REDIS_URL': ctx.redis_url,
        'BENCH_BARE_KEY_PREFIX': 'bench:',
        'BENCH_BARE_FILES': str(ctx.main_storage / 'images'),
    }
    try:
        with contextlib.ExitStack() as stack:
            look_env = ctx.look_env(ctx.main_storage, cache=True)
            look = stack.enter_context(gunicorn('look-cache', LOOK_APP, ctx.workdir, look_env))
            bare = stack.enter_context(gunicorn('bare', BARE_APP, ctx.workdir, bare_env))
            _seed(ctx, look)

            comparisons: list[tuple[str, list[Call], list[Call]]] = []
            for source, size, format in CACHED:
                look_calls, bare_calls = [], []
                for image_id in ctx.seeds[source]:
                    path = f'/thumbnails/{image_id}/{size[0]}x{size[1]}.{format}'
                    send(look.port, Call('GET', path))  # a Miss fills the cache
                    hit = send(look.port, Call('GET', path))
                    if hit.headers.get('x-look-cache') != 'Hit':
                        raise BenchError(f'{path} was not a cache hit: {hit.headers}')
                    key = f'{image_id}-{size[0]}x{size[1]}.{format}'
                    client.set(f'bench:{key}', hit.body)
                    look_calls.append(Call('GET', path))
                    bare_calls.append(Call('GET', f'/cached/{key}'))
                kib = len(hit.body) // 1024
                comparisons.append(
                    (
                        f'cached thumbnail {_work(source, size, format)} (~{kib} KiB)',
                        look_calls,
                        bare_calls,
                    )
                )
            for source in DOWNLOADS:
                ids = ctx.seeds[source]
                kib = os.stat(_stored(ctx, ids[0])).st_size // 1024
                comparisons.append(
                    (
                        f'original download {source} (~{kib} KiB)',
                        [Call('GET', f'/images/{i}.jpeg') for i in ids],
                        [Call('GET', f'/files/{i}.jpeg') for i in ids],
                    )
                )

            concurrency = ctx.settings.concurrency
            for work, look_calls, bare_calls in comparisons:
                rounds, note = _measure(
                    ctx,
                    work,
                    [
                        _http('look', look, look_calls, concurrency),
                        _http('bare', bare, bare_calls, concurrency),
                    ],
                )
                # NOTE: 0.85, not 0.9: metrics and strict routing cost what they are worth.
                rows.append(
                    _versus(rounds, 1, work, target=0.85, limit_unit='req/s (bare)', note=note)
                )
            _note_cache_skips(ctx, look)
    finally:
        client.close()
    return rows


# -- many requests at once for one uncached thumbnail --------------------------------


def _renders(server: Server, format: str) -> float:
    """Return how many ``format`` thumbnails look's workers have rendered, from /metrics."""
    text = send(server.port, Call('GET', '/metrics')).body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == 'look_renders_total' and sample.labels.get('format') == format
    )


def herd(ctx: Context) -> list[Row]:
    """Many requests at once for one uncached thumbnail vs one request alone, with Redis.

    Concurrent misses wait for one render (the cache's fill lock), so the
    herd should take about as long as one request and render once. Each
    request alone and each herd asks for a thumbnail of an image uploaded
    just before, so every one of them misses.
    """
    source, size, format = HERD
    width, height = size
    body = ctx.files[f'{source}-0'].read_bytes()
    renders: list[int] = []
    cpu: dict[int, list[float]] = {HERD_SIZE: [], 1: []}
    env = ctx.look_env(ctx.main_storage, cache=True)
    with gunicorn('look-herd', LOOK_APP, ctx.workdir, env) as server:

        def wall(count: int) -> float:
            image = send(
                server.port,
                Call('POST', '/images', body, {'Content-Type': 'image/jpeg'}, expect=201),
            ).json()
            call = Call('GET', f'/thumbnails/{image["id"]}/{width}x{height}.{format}')
            before = _renders(server, format)
            with CpuMeter() as meter:
                seconds = at_once(server.port, call, count)
            made = round(_renders(server, format) - before)
            if count == 1 and made != 1:
                raise BenchError(f'one request alone for {call.path} made {made} renders')
            if count > 1:
                renders.append(made)
            cpu[count].append(meter.services)
            return seconds

        work = (
            f'{HERD_SIZE} requests at once for an uncached thumbnail {_work(source, size, format)}'
        )
        log(work)
        wall(1)  # warm-up: the pool's first encode, the first threads
        wall(HERD_SIZE)
        renders.clear()
        for values in cpu.values():
            values.clear()
        rounds = interleave(
            [
                ('herd', functools.partial(wall, HERD_SIZE), NONE),
                ('alone', functools.partial(wall, 1), NONE),
            ],
            2 * ctx.settings.rounds,
            ctx.retries,
        )
        _note_cache_skips(ctx, server)
    row = herd_row(
        work,
        rounds.sides[0].values,
        rounds.sides[1].values,
        renders,
        # NOTE: on two cores, 32 arrivals and 31 answers cost about 20 ms of CPU
        #   beside a 27 ms render: about 1.5x is the floor here.
        target=1.7,
        note=rounds.noise(),
        cpu=(cpu[HERD_SIZE], cpu[1]),
    )
    log(f'  {row.look} vs {row.limit}: {row.ratio}')
    return [row]


# -- a 50 000-image index vs a small one -------------------------------------------


def _median_latency(server: Server, call: Call, seconds: float, max_requests: int) -> float:
    return statistics.median(
        latencies(server.port, call, seconds=seconds, max_requests=max_requests)
    )


def _compare_latency(
    ctx: Context,
    work: str,
    call: Call,
    large: Server,
    small: Server,
    *,
    target: float,
    small_label: str,
    max_requests: int,
) -> Row:
    """Interleave one-at-a-time latency rounds on a large and a small storage."""
    s = ctx.settings
    log(work)
    for server in (large, small):
        latencies(server.port, call, seconds=s.warmup / 2, max_requests=20)
    rounds = interleave(
        [
            ('large', lambda: _median_latency(large, call, s.seconds / 2, max_requests), NONE),
            ('small', lambda: _median_latency(small, call, s.seconds / 2, max_requests), NONE),
        ],
        s.rounds,
        ctx.retries,
    )
    row = slowdown_row(
        work,
        rounds.sides[0].values,
        rounds.sides[1].values,
        target=target,
        small_label=small_label,
        note=rounds.noise(),
    )
    log(f'  {row.look} vs {row.limit}: {row.ratio}')
    return row


def _list_page_row(ctx: Context, where: str, large: Server, small: Server) -> Row:
    """Compare a first list page of 100 on a large index with one on an index of 100."""
    return _compare_latency(
        ctx,
        f'list page (limit=100) at {ctx.settings.index_size} images{where} vs 100',
        Call('GET', '/images?limit=100'),
        large,
        small,
        target=1.5,
        small_label='100 images',
        max_requests=200,
    )


def index(ctx: Context) -> list[Row]:
    """List-page and upload times on a large index vs a small or empty one."""
    s = ctx.settings
    rows = []
    big, small, empty = (ctx.workdir / f'storage-{n}' for n in ('big', 'small', 'empty'))
    log(f'building a {s.index_size}-image storage directory')
    began = time.perf_counter()
    fixtures.build_storage(big, s.index_size, ctx.files['list-jpeg'], (640, 360), seed=1)
    fixtures.build_storage(small, 100, ctx.files['list-jpeg'], (640, 360), seed=2)
    log(f'  built in {time.perf_counter() - began:.1f}s')

    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                gunicorn(f'look-{name}', LOOK_APP, ctx.workdir, ctx.look_env(path, cache=False))
            )
            for name, path in (('big', big), ('small', small), ('empty', empty))
        }
        list_call = Call('GET', '/images?limit=100')
        listed = len(send(servers['big'].port, list_call).json())
        if listed != 100:
            raise BenchError(f'GET /images?limit=100 listed {listed} images, not 100')
        body = ctx.files['upload-png'].read_bytes()
        upload = Call('POST', '/images', body, {'Content-Type': 'image/png'}, expect=201)

        rows.append(_list_page_row(ctx, '', servers['big'], servers['small']))
        rows.append(
            _compare_latency(
                ctx,
                f'upload 640x360 PNG into {s.index_size} images vs empty (one at a time)',
                upload,
                servers['big'],
                servers['empty'],
                target=1.2,
                small_label='empty index',
                max_requests=500,
            )
        )
    return rows


# -- shared backends (S3 + PostgreSQL) vs the local ones ------------------------------


@contextlib.contextmanager
def _shared_servers() -> Iterator[tuple[SeaweedServer, PostgresDatabase]]:
    """Run a private SeaweedFS and a database of our own on the machine's PostgreSQL."""
    try:
        with SeaweedServer() as seaweed, PostgresDatabase() as database:
            yield seaweed, database
    except (pytest.skip.Exception, pytest.fail.Exception) as ex:
        raise BenchError(f'the shared backends cannot run here: {ex}') from ex


def _fill_index(url: str, count: int, seed: int) -> None:
    """Add ``count`` rows to the PostgreSQL index at ``url`` as one bulk import would."""
    index = PostgresIndex(url)
    index.open()
    try:
        index.import_entries(
            (image.id, image) for image in fixtures.stored_images(count, (640, 360), seed)
        )
        index.analyze()
    finally:
        index.close()


def shared(ctx: Context) -> list[Row]:
    """Uploads, renders, downloads and listing on SeaweedFS + PostgreSQL vs local disk.

    Look on the shared backends and look on the local ones answer the same
    requests in the same rounds; a third side, a shared host with no
    originals cache, shows what that cache saves a render and a download.
    The list rows read PostgreSQL indexes filled directly (rows only, no
    objects): listing never reads an object.
    """
    s = ctx.settings
    rows: list[Row] = []
    source, size = '1920x1080', (960, 540)
    with contextlib.ExitStack() as stack:
        seaweed, database = stack.enter_context(_shared_servers())

        def start(name: str, env: dict[str, str]) -> Server:
            return stack.enter_context(gunicorn(f'look-{name}', LOOK_APP, ctx.workdir, env))

        def on_shared(name: str, images: str, index: str, **extra: str) -> dict[str, str]:
            storage = ctx.workdir / f'storage-{name}'
            backends = {'LOOK_IMAGES_URL': images, 'LOOK_INDEX_URL': index, **seaweed.environ}
            return ctx.look_env(storage, cache=False, **backends, **extra)

        local = start('local', ctx.look_env(ctx.main_storage, cache=False))
        _seed(ctx, local)
        shared = start('shared', on_shared('shared', 's3://bench/images', database.url))
        cold = start(
            'shared-cold',
            on_shared(
                'shared-cold', 's3://bench/images', database.url, LOOK_ORIGINALS_CACHE_BYTES='0'
            ),
        )
        shared_ids = _upload_seeds(ctx, shared, [source])[source]
        local_ids = ctx.seeds[source]

        def compare(
            work: str, calls: Callable[[list[str]], list[Call]], target: float, concurrency: int
        ) -> None:
            rounds, note = _measure(
                ctx,
                work,
                [
                    _http('shared', shared, calls(shared_ids), concurrency),
                    _http('local', local, calls(local_ids), concurrency),
                    _http('no originals cache', cold, calls(shared_ids), concurrency),
                ],
            )
            rows.append(
                _versus(rounds, 1, work, target=target, limit_unit='req/s (local)', note=note)
            )
            rows.append(
                _versus(
                    rounds,
                    2,
                    f'{work}: a shared host with no originals cache vs one with',
                    target=None,
                    limit_unit='req/s (no cache)',
                    note='the rounds of the row above',
                )
            )

        compare(
            f'uncached thumbnail {_work(source, size, "jpeg")}, shared vs local',
            lambda ids: [Call('GET', f'/thumbnails/{i}/{size[0]}x{size[1]}.jpeg') for i in ids],
            0.7,
            s.pool_jobs,
        )
        kib = os.stat(_stored(ctx, local_ids[0])).st_size // 1024
        compare(
            f'original download {source} (~{kib} KiB), shared vs local',
            lambda ids: [Call('GET', f'/images/{i}.jpeg') for i in ids],
            0.8,
            s.concurrency,
        )
        body = ctx.files['upload-jpeg'].read_bytes()
        upload = [Call('POST', '/images', body, {'Content-Type': 'image/jpeg'}, expect=201)]
        work = 'upload 1920x1080 JPEG, shared vs local'
        rounds, note = _measure(
            ctx,
            work,
            [
                _http('shared', shared, upload, s.pool_jobs),
                _http('local', local, upload, s.pool_jobs),
            ],
        )
        rows.append(_versus(rounds, 1, work, target=0.7, limit_unit='req/s (local)', note=note))

        log(f'filling PostgreSQL indexes of {s.index_size} and 100 images')
        lists = {}
        for name, count in (('big', s.index_size), ('small', 100)):
            url = database.create_schema(name)
            _fill_index(url, count, seed=count)
            lists[name] = start(f'{name}-pg', on_shared(name, 's3://bench/list', url))
        rows.append(_list_page_row(ctx, ' in PostgreSQL', lists['big'], lists['small']))
    return rows


# -- web-worker memory during a 32 MiB upload --------------------------------------


def memory(ctx: Context) -> list[Row]:
    """Peak RSS of look's only web worker while a 32 MiB body arrives, vs its idle RSS."""
    rows = []
    storage = ctx.workdir / 'storage-memory'
    env = ctx.look_env(storage, cache=False, LOOK_MAX_UPLOAD_BYTES=str(32 * MiB))
    bodies = [
        (
            '32 MiB upload: BMP, stored (201)',
            fixtures.bmp_under(32 * MiB, seed=7),
            'image/bmp',
            201,
        ),
        (
            '32 MiB upload: random bytes, refused after streaming (415)',
            random.Random(8).randbytes(32 * MiB),
            'application/octet-stream',
            415,
        ),
    ]
    with gunicorn('look-memory', LOOK_APP, ctx.workdir, env, workers=1) as server:
        (worker,) = server.workers()
        small = ctx.files['upload-png'].read_bytes()
        for _ in range(3):  # imports, pool start, first-request paths
            send(server.port, Call('POST', '/images', small, {'Content-Type': 'image/png'}, 201))
            send(server.port, Call('GET', '/images?limit=10'))
        for work, body, content_type, status in bodies:
            log(f'web-worker memory: {work} ({len(body) / MiB:.2f} MiB)')
            call = Call('POST', '/images', body, {'Content-Type': content_type}, status)
            peaks, idles = [], []
            for _ in range(ctx.settings.rounds):
                time.sleep(0.3)
                idle = status_kib(worker, 'VmRSS')
                hwm_before = status_kib(worker, 'VmHWM')
                with PeakRss(worker) as sampler:
                    send(server.port, call)
                hwm_after = status_kib(worker, 'VmHWM')
                # VmHWM catches a peak between two samples, but only if it is new.
                peak = max(sampler.peak_kib, hwm_after if hwm_after > hwm_before else 0)
                peaks.append(peak)
                idles.append(idle)
            rows.append(memory_row(work, peaks, idles, limit_mib=5))
            log(f'  {rows[-1].look} vs {rows[-1].limit}: {rows[-1].ratio}')
    return rows


MEASUREMENTS: dict[str, Callable[[Context], list[Row]]] = {
    'uncached': uncached,
    'cached': cached,
    'herd': herd,
    'index': index,
    'shared': shared,
    'memory': memory,
}
# NOTE: BENCH_ONLY picks among these; a group is one function that starts the
#   servers it needs and returns its rows.
GROUPS = tuple(MEASUREMENTS)
