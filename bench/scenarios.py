"""The measurements: each group starts the servers it needs and compares look with its limit."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import random
import runpy
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from bench import fixtures, limits
from bench.harness import GUNICORN_CONF, BenchError, Server, gunicorn, log
from bench.load import Call, Rate, latencies, send, throughput
from bench.procfs import PeakRss, status_kib
from bench.report import Row, memory_row, slowdown_row, throughput_row
from bench.rounds import BENCH, SERVICES, interleave

MiB = 1024 * 1024
LOOK_APP = 'look.wsgi:app'
BARE_APP = 'bench.bare:create_app()'
SEED_COUNT = 4  # distinct stored images per source size, cycled by the load
# NOTE: 1921x1081 has odd sides: its halving rounds down where the JPEG
#   decoder's 1/2 scale rounds up (961x541 for a 960x540).
SOURCES = {'1920x1080': (1920, 1080), '1921x1081': (1921, 1081), '4000x3000': (4000, 3000)}
DOWNLOADS = ['1920x1080', '4000x3000']
UNCACHED = [
    ('1920x1080', (960, 540)),
    ('1921x1081', (960, 540)),
    ('1920x1080', (240, 135)),
    ('4000x3000', (500, 375)),
]
CACHED = [('1920x1080', (240, 135)), ('1920x1080', (960, 540))]
GROUPS = ('uncached', 'cached', 'index', 'memory')


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclasses.dataclass
class Settings:
    """Knobs, from BENCH_* environment variables, for quick runs while developing."""

    seconds: float = 2.0
    warmup: float = 1.0
    rounds: int = 5
    concurrency: int = 8
    # NOTE: pool-bound work (renders, uploads) is loaded with as many requests
    #   as the Pillow limit has jobs queued, so both sides wait alike.
    pool_jobs: int = 2 * (os.cpu_count() or 1)
    index_size: int = 50_000
    groups: tuple[str, ...] = GROUPS

    @classmethod
    def from_env(cls) -> Settings:
        groups = tuple(g for g in os.environ.get('BENCH_ONLY', '').split(',') if g) or GROUPS
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise BenchError(f'BENCH_ONLY names unknown groups {sorted(unknown)}; use {GROUPS}')
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
                f'{self.rounds} x {self.seconds:g} s per side (+ {self.warmup:g} s warm-up)',
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
            ('large index', f'{self.index_size} images'),
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
    # NOTE: noisy rounds are measured again only this early, so that a busy
    #   machine cannot push the whole run past ten minutes.
    retry_until: float = dataclasses.field(default_factory=lambda: time.monotonic() + 400)
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


def _seed(ctx: Context, server: Server) -> None:
    """Upload the seed images through look, once, so both sides read look's stored JPEGs."""
    if ctx.seeds:
        return
    log(f'uploading {SEED_COUNT * len(SOURCES)} seed images')
    for name in SOURCES:
        ids = []
        for seed in range(SEED_COUNT):
            body = ctx.files[f'{name}-{seed}'].read_bytes()
            answer = send(
                server.port,
                Call('POST', '/images', body, {'Content-Type': 'image/jpeg'}, expect=201),
            )
            ids.append(answer.json()['id'])
        ctx.seeds[name] = ids


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


def _compare_http(
    ctx: Context,
    work: str,
    look: tuple[Server, list[Call]],
    other: tuple[Server, list[Call]] | tuple[Callable[[float], float], None],
    *,
    concurrency: int,
    target: float | None,
    limit_unit: str,
) -> Row:
    """Interleave look's rounds with its limit's (HTTP or Pillow); return the table row."""
    s = ctx.settings
    log(work)
    look_server, look_calls = look
    look_stats, other_stats = LoadStats(), LoadStats()

    def look_side(seconds: float) -> float:
        return _http_rate(look_server, look_calls, concurrency, seconds, look_stats)

    other_target, other_calls = other
    if isinstance(other_target, Server):
        bare_server, bare_calls = other_target, other_calls or []

        def other_side(seconds: float) -> float:
            return _http_rate(bare_server, bare_calls, concurrency, seconds, other_stats)

    else:
        other_side = other_target

    look_side(s.warmup)
    other_side(s.warmup)
    look_stats.clear()  # the warm-up does not count
    other_stats.clear()
    paired = interleave(
        lambda: look_side(s.seconds),
        lambda: other_side(s.seconds),
        s.rounds,
        cpu=(SERVICES, SERVICES if isinstance(other_target, Server) else BENCH),
        retry=time.monotonic() < ctx.retry_until,
    )
    note = f'look: {look_stats.describe()}'
    if other_stats.rates:
        note += f'; bare: {other_stats.describe()}'
    note += '; ' + paired.noise('look', 'limit')
    row = throughput_row(
        work,
        paired.first,
        paired.second,
        target=target,
        limit_unit=limit_unit,
        note=note,
        cpu=(paired.cpu_first, paired.cpu_second),
    )
    log(f'  {row.look} vs {row.limit}: {row.ratio}')
    return row


# -- uncached thumbnails and uploads vs Pillow alone -----------------------------

# The Pillow limit's function, its jobs, and what this process does with each result.
PillowWork = tuple[Callable[..., Any], list[tuple[Any, ...]], Callable[[Any], object] | None]


def uncached(ctx: Context) -> list[Row]:
    """Thumbnails with the cache off, and uploads, vs Pillow alone in a pool.

    Each row is followed by a reference row: look vs the bare app doing the
    same render or conversion in its own pool under the same gunicorn, which
    shows how much of the gap to Pillow alone is HTTP itself.
    """
    s = ctx.settings
    rows = []
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
            function, jobs, finish = pillow

            def pillow_side(seconds: float) -> float:
                return limits.pool_throughput(
                    pool, function, jobs, seconds=seconds, in_flight=s.pool_jobs, finish=finish
                )

            look = (server, calls)
            rows.append(
                _compare_http(
                    ctx,
                    work,
                    look,
                    (pillow_side, None),
                    concurrency=s.pool_jobs,
                    target=target,
                    limit_unit=limit_unit,
                )
            )
            rows.append(
                _compare_http(
                    ctx,
                    f'{work}: the same {same} behind a bare Falcon app',
                    look,
                    (bare, bare_calls),
                    concurrency=s.pool_jobs,
                    target=None,
                    limit_unit='req/s (bare)',
                )
            )

        for source, (width, height) in UNCACHED:
            ids = ctx.seeds[source]
            compare(
                f'uncached thumbnail {source} → {width}x{height}',
                [Call('GET', f'/thumbnails/{i}/{width}x{height}.jpeg') for i in ids],
                (limits.render, [(_stored(ctx, i), (width, height)) for i in ids], None),
                [Call('GET', f'/rendered/{i}.jpeg/{width}x{height}') for i in ids],
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
            for source, (width, height) in CACHED:
                look_calls, bare_calls = [], []
                for image_id in ctx.seeds[source]:
                    path = f'/thumbnails/{image_id}/{width}x{height}.jpeg'
                    send(look.port, Call('GET', path))  # a Miss fills the cache
                    hit = send(look.port, Call('GET', path))
                    if hit.headers.get('x-look-cache') != 'Hit':
                        raise BenchError(f'{path} was not a cache hit: {hit.headers}')
                    key = f'{image_id}-{width}x{height}.jpeg'
                    client.set(f'bench:{key}', hit.body)
                    look_calls.append(Call('GET', path))
                    bare_calls.append(Call('GET', f'/cached/{key}'))
                size = len(hit.body) // 1024
                work = f'cached thumbnail {source} → {width}x{height} (~{size} KiB)'
                comparisons.append((work, look_calls, bare_calls))
            for source in DOWNLOADS:
                ids = ctx.seeds[source]
                size = os.stat(_stored(ctx, ids[0])).st_size // 1024
                comparisons.append(
                    (
                        f'original download {source} (~{size} KiB)',
                        [Call('GET', f'/images/{i}.jpeg') for i in ids],
                        [Call('GET', f'/files/{i}.jpeg') for i in ids],
                    )
                )

            for work, look_calls, bare_calls in comparisons:
                rows.append(
                    _compare_http(
                        ctx,
                        work,
                        (look, look_calls),
                        (bare, bare_calls),
                        concurrency=ctx.settings.concurrency,
                        target=0.9,
                        limit_unit='req/s (bare)',
                    )
                )
    finally:
        client.close()
    return rows


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
    paired = interleave(
        lambda: _median_latency(large, call, s.seconds / 2, max_requests),
        lambda: _median_latency(small, call, s.seconds / 2, max_requests),
        s.rounds,
        retry=time.monotonic() < ctx.retry_until,
    )
    row = slowdown_row(
        work,
        paired.first,
        paired.second,
        target=target,
        small_label=small_label,
        note=paired.noise('large', 'small'),
    )
    log(f'  {row.look} vs {row.limit}: {row.ratio}')
    return row


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

        rows.append(
            _compare_latency(
                ctx,
                f'list page (limit=100) at {s.index_size} images vs 100',
                list_call,
                servers['big'],
                servers['small'],
                target=1.5,
                small_label='100 images',
                max_requests=200,
            )
        )
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
    'index': index,
    'memory': memory,
}
