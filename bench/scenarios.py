"""The groups: each starts the tests' servers it needs and measures the rows of its table.

A row is look against its limit in the same rounds, with the rule it is met by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bench import limits
from bench.load import BenchError, Call, answer, at_once, latency, post, throughput
from bench.report import Row, herd_row, ratio_row, settle
from bench.rounds import BENCH, CpuMeter, Figure, RetryBudget, Side, describe, interleave, serves
from look.core.index import StoredImage
from look.core.index.journal import encode_line
from look.core.index.postgres import PostgresIndex

from support.gunicorn import Gunicorn
from support.imagegen import image_bytes, metadata_jpeg, modern, moving_picture, picture
from support.postgres import PostgresDatabase
from support.redis import RedisServer
from support.seaweed import SeaweedServer

# NOTE: 1921x1081 has odd sides: its halving rounds down where the JPEG
#   decoder's 1/2 scale rounds up (961x541 for a 960x540), so look crops.
SOURCES = {'1920x1080': (1920, 1080), '1921x1081': (1921, 1081), '4000x3000': (4000, 3000)}
SEEDS = 4  # stored images per source, cycled by the load
_jpeg = functools.partial(image_bytes, 'JPEG', quality=90)  # as a camera or an editor saves
LOOK = 'look.wsgi:app'
# What a group may fail with: the other groups still run, and the table says so.
FAILURES = (BenchError, AssertionError, OSError, pytest.fail.Exception, pytest.skip.Exception)


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """A thumbnail of every seed image of one source size."""

    source: str
    width: int
    height: int
    format: str

    def path(self, image_id: str, root: str = '/thumbnails/{}') -> str:
        return f'{root.format(image_id)}/{self.width}x{self.height}.{self.format}'

    def __str__(self) -> str:
        name = {'webp': 'WebP', 'avif': 'AVIF', 'jxl': 'JPEG XL'}.get(
            self.format, self.format.upper()
        )
        return f'{self.source} → {self.width}x{self.height} {name}'


@dataclasses.dataclass(frozen=True)
class Upload:
    """An upload's seeded bytes and type, and its Pillow limit (a key of limits.UPLOADS)."""

    name: str
    content_type: str
    make: Callable[[], bytes]
    limit: str = 'convert'
    # NOTE: an upload of a second or more of work gets one connection per image
    #   process: two queued would ask each to wait longer than look lets a
    #   request wait (LOOK_MAX_QUEUE_SECONDS), and be answered 503.
    one_per_process: bool = False

    @functools.cached_property
    def body(self) -> bytes:
        return self.make()

    def call(self, path: str = '/images') -> Call:
        return post(path, self.body, self.content_type)


# Uncached thumbnails and uploads: look vs Pillow alone and vs the bare app in
# the same rounds, met at the target against Pillow or at ≥ 0.9x the bare app.
RENDER_TARGET, UPLOAD_TARGET = 0.85, 0.8
UNCACHED = [
    Thumbnail('1920x1080', 960, 540, 'jpeg'),
    Thumbnail('1921x1081', 960, 540, 'jpeg'),
    Thumbnail('1920x1080', 240, 135, 'jpeg'),
    Thumbnail('4000x3000', 500, 375, 'jpeg'),
    Thumbnail('1920x1080', 960, 540, 'webp'),
    Thumbnail('1920x1080', 240, 135, 'webp'),
    Thumbnail('1920x1080', 960, 540, 'avif'),
    Thumbnail('1920x1080', 240, 135, 'avif'),
    # JPEG XL beside AVIF in the same rounds: what its encode costs decides
    # whether it is served by default (look.imaging.formats).
    Thumbnail('1920x1080', 960, 540, 'jxl'),
    Thumbnail('1920x1080', 240, 135, 'jxl'),
]
PNG_UPLOAD = Upload('640x360 PNG', 'image/png', lambda: image_bytes('PNG', (640, 360), seed=101))
# A camera's JPEG (EXIF with GPS, XMP, IPTC, a comment), which look keeps as
# it was made less that metadata: against Pillow alone decoding and encoding
# it (what look did before, and what an app that re-encodes does), in the
# same rounds, at twice its rate or more.
KEPT_JPEG = Upload(
    '1920x1080 JPEG (kept as made)',
    'image/jpeg',
    lambda: metadata_jpeg(image=picture((1920, 1080), seed=100)),
)
KEPT_JPEG_TARGET = 2.0
# An iPhone's photo, converted: against Pillow alone (with pillow-heif) converting it.
HEIC = Upload('1920x1080 HEIC', 'image/heic', lambda: modern('HEIF', (1920, 1080), seed=102))


# An animated GIF: look stores its first frame as a JPEG, its frames as an animated WebP.
ANIMATION_UPLOAD = Upload(
    '480x270 animated GIF, 60 frames',
    'image/gif',
    lambda: moving_picture((480, 270), frames=60),
    limit='animation',
    one_per_process=True,
)
UPLOADS = [PNG_UPLOAD, ANIMATION_UPLOAD]
# Cache hits and original downloads: look vs the bare app.
# NOTE: 0.85 for hits, not 0.9: metrics and strict routing cost what they are worth.
HIT_TARGET, DOWNLOAD_TARGET = 0.85, 0.9
CACHED = [
    Thumbnail('1920x1080', 240, 135, 'jpeg'),
    Thumbnail('1920x1080', 960, 540, 'jpeg'),
    Thumbnail('1920x1080', 960, 540, 'webp'),
    Thumbnail('1920x1080', 960, 540, 'avif'),
]
DOWNLOADS = ['1920x1080', '4000x3000']
# The herd: this many requests at once for one uncached thumbnail, vs one alone.
HERD, HERD_SIZE = Thumbnail('1920x1080', 960, 540, 'webp'), 32
# NOTE: on two cores, 32 arrivals and 31 answers cost about 20 ms of CPU
#   beside a 27 ms render: about 1.5x is the floor here.
HERD_TARGET = 1.7
# A large index vs a small one (times, one request at a time).
LIST_TARGET, INDEX_UPLOAD_TARGET = 1.5, 1.2
# Shared backends (SeaweedFS + PostgreSQL) vs local disk in the same rounds:
# (work, its request for one of a host's seed images, target, bound by the pool).
SHARED: list[tuple[str, Callable[[str], Call], float, bool]] = [
    ('upload 1920x1080 JPEG', lambda i: KEPT_JPEG.call(), 0.7, True),
    (f'uncached thumbnail {UNCACHED[0]}', lambda i: Call('GET', UNCACHED[0].path(i)), 0.7, True),
    ('original download 1920x1080', lambda i: Call('GET', f'/images/{i}.jpeg'), 0.8, False),
]

_STARTED = time.monotonic()


def log(message: str) -> None:
    """Print progress to stderr, so stdout keeps only the table."""
    print(f'[bench {time.monotonic() - _STARTED:5.0f}s] {message}', file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Knobs, from BENCH_* environment variables (BENCH_SECONDS...), for quicker runs."""

    # NOTE: 1.5 s rounds hold about 80 WebP 960x540 renders on two cores, and keep
    #   the run, three sides for each render and upload, within ten minutes.
    seconds: float = 1.5
    warmup: float = 0.5
    rounds: int = 5  # the herd has twice as many; one-at-a-time rounds last seconds / 2
    concurrency: int = 8  # connections for cache hits and downloads
    # NOTE: renders and uploads get as many connections as Pillow alone has
    #   jobs queued, so every side waits alike.
    pool_jobs: int = 2 * (os.cpu_count() or 1)
    index_size: int = 50_000
    groups: tuple[str, ...] = ()
    # NOTE: as `make run` has them (look/server/settings.py): a worker per core,
    #   cores ÷ workers image processes each, set so the bare app's pool is as large.
    workers: int = os.cpu_count() or 1

    @property
    def processes(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    @classmethod
    def from_env(cls) -> Settings:
        groups = tuple(g for g in os.environ.get('BENCH_ONLY', '').split(',') if g) or GROUPS
        if set(groups) - set(GROUPS):
            raise SystemExit(f'BENCH_ONLY names unknown groups; use {", ".join(GROUPS)}')
        knobs = {
            field.name: type(field.default)(os.environ[f'BENCH_{field.name.upper()}'])
            for field in dataclasses.fields(cls)
            if os.environ.get(f'BENCH_{field.name.upper()}') and field.name != 'groups'
        }
        return cls(groups=groups, **knobs)

    def describe(self) -> list[tuple[str, object]]:
        """Return the knobs, and what look and its limits run with, for results.md."""
        pool = ('Pillow alone', f'ProcessPoolExecutor({os.cpu_count()}), spawn')
        return [*dataclasses.asdict(self).items(), ('LOOK_PROCESSES', self.processes), pool]


def http(name: str, server: Gunicorn, calls: list[Call], concurrency: int) -> Side:
    """A side that keeps ``concurrency`` connections busy with ``calls``."""
    return Side(name, functools.partial(throughput, server, calls, concurrency))


def one_at_a_time(servers: list[Gunicorn], call: Call) -> list[Side]:
    """Sides that send ``call`` one at a time to a large index and to a small one."""
    names = ('large', 'small')
    return [
        Side(n, functools.partial(latency, s, call)) for n, s in zip(names, servers, strict=True)
    ]


@dataclasses.dataclass
class Context:
    """What the groups share: settings, the work directory, Redis, seed images, the rows."""

    settings: Settings
    workdir: pathlib.Path
    redis: RedisServer
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    # NOTE: a run takes eight minutes or so; measuring noisy rounds again may
    #   add this much, so that it stays under ten.
    retries: RetryBudget = dataclasses.field(default_factory=lambda: RetryBudget(45.0))
    stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    seeds: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def stored(self, image_id: str = '') -> str:
        """Return where look keeps a seed image: Pillow alone and the bare app read it there."""
        return str(self.workdir / 'storage' / 'images' / (image_id and f'{image_id}.jpeg'))

    def start(self, storage: str = 'storage', app: str = LOOK, **environ: str) -> Gunicorn:
        """Start look (or ``app``) under gunicorn, with look's settings, until the group ends."""
        s, environ = self.settings, {'LOOK_PROCESSES': str(self.settings.processes), **environ}
        server = Gunicorn(self.workdir / storage, app=app, workers=s.workers, environ=environ)
        self.stack.enter_context(server)
        serves(server.pid)  # its CPU is ours, not noise
        self.stack.callback(self._note_cache_skips, server)
        return server

    def bare(self, **environ: str) -> Gunicorn:
        """Start the bare app under the same gunicorn, serving the seed images' files."""
        environ['BENCH_BARE_FILES'] = self.stored()
        return self.start('bare', app='bench.bare:create_app()', **environ)

    def _note_cache_skips(self, server: Gunicorn) -> None:
        if skips := server.log().count('serving uncached'):
            late = f'Redis did not answer look on port {server.port} in time {skips} times'
            self.notes.append(f'{late}; it served uncached meanwhile, which counts against it')

    def upload_seeds(self, server: Gunicorn, source: str) -> list[str]:
        """Upload the seed images of ``source`` through ``server``; return their ids."""
        bodies = [_jpeg(SOURCES[source], seed=n) for n in range(SEEDS)]
        return [answer(server, post('/images', b, 'image/jpeg')).json()['id'] for b in bodies]

    def seed(self, server: Gunicorn) -> None:
        """Upload the seed images through look once a run, so every side reads look's JPEGs."""
        if not self.seeds:
            log(f'uploading {SEEDS * len(SOURCES)} seed images')
            self.seeds = {source: self.upload_seeds(server, source) for source in SOURCES}

    def measure(self, work: str, sides: list[Side], rounds: int = 0, scale: float = 1) -> str:
        """Measure the sides in interleaved rounds; return their figures for results.md."""
        s = self.settings
        log(work)
        again = interleave(sides, rounds or s.rounds, s.seconds, s.warmup, self.retries)
        return describe(sides, again, scale, ' ms' if scale != 1 else '')

    def add(self, *rows: Row) -> None:
        self.rows += rows
        log('  ' + '; '.join(f'{r.look} vs {r.limit}: {r.ratio} {r.verdict}' for r in rows))

    def versus(
        self, work: str, sides: list[Side], target: float, label: str, at_most: bool = False
    ) -> None:
        """Add look (the first side) against the second; with a third, the bare app's rule."""
        text = self.measure(work, sides, scale=1e3 if at_most else 1)
        row = ratio_row(work, *sides[:2], target=target, label=label, at_most=at_most)
        row.rounds = text
        if len(sides) == 2:
            self.add(row)
        else:
            same = f'{work}: the same work behind a bare Falcon app'
            reference = ratio_row(same, sides[0], sides[2], target=None, label='req/s (bare)')
            self.add(*settle(row, dataclasses.replace(reference, rounds='the rounds above')))


def uncached(ctx: Context) -> None:
    """Thumbnails with the cache off, and uploads: look vs Pillow alone vs the bare app."""
    n, uploads = ctx.settings.pool_jobs, ctx.workdir / 'uploads'
    uploads.mkdir()
    look, bare = ctx.start(), ctx.bare(BENCH_BARE_UPLOADS=str(uploads))
    ctx.seed(look)
    pool = limits.start_pool()
    ctx.stack.callback(pool.shutdown, wait=True, cancel_futures=True)

    def pillow(
        function: Callable[..., Any],
        jobs: list[tuple[Any, ...]],
        in_flight: int = n,
        **finish: Any,
    ) -> Side:
        measure = functools.partial(
            limits.pool_throughput, pool, function, jobs, in_flight, **finish
        )
        return Side('Pillow', measure, BENCH)

    for t in UNCACHED:
        ids, size = ctx.seeds[t.source], (t.width, t.height)
        sides = [
            http('look', look, [Call('GET', t.path(i)) for i in ids], n),
            pillow(limits.render, [(ctx.stored(i), size, t.format) for i in ids]),
            http('bare', bare, [Call('GET', t.path(i, '/rendered/{}.jpeg')) for i in ids], n),
        ]
        ctx.versus(f'uncached thumbnail {t}', sides, RENDER_TARGET, 'renders/s')
    for u in [*UPLOADS, HEIC]:
        path = uploads / f'upload-{u.name.replace(" ", "-")}'
        path.write_bytes(u.body)
        jobs = ctx.settings.workers * ctx.settings.processes if u.one_per_process else n
        sides = [
            http('look', look, [u.call()], jobs),
            pillow(
                limits.UPLOADS[u.limit],
                [(str(path), str(uploads))],
                in_flight=jobs,
                finish=limits.fsync,
            ),
            http('bare', bare, [u.call(f'/converted/{u.limit}')], jobs),
        ]
        ctx.versus(f'upload {u.name}', sides, UPLOAD_TARGET, 'conversions/s')
    kept_jpeg_upload(
        ctx,
        look,
        pillow(
            limits.reencode, [(_written(uploads, KEPT_JPEG), str(uploads))], finish=limits.fsync
        ),
    )


def _written(directory: pathlib.Path, upload: Upload) -> str:
    """Write an upload's bytes into ``directory`` for Pillow alone; return the path."""
    path = directory / f'upload-{upload.name.replace(" ", "-")}'
    path.write_bytes(upload.body)
    return str(path)


def kept_jpeg_upload(ctx: Context, look: Gunicorn, pillow: Side) -> None:
    """A JPEG look keeps as made vs Pillow alone decoding and encoding it: no bare rule.

    NOTE: the bare app runs the same decode and encode as Pillow alone, so
      its floor would judge look by the work it no longer does.
    """
    sides = [http('look', look, [KEPT_JPEG.call()], ctx.settings.pool_jobs), pillow]
    ctx.versus(f'upload {KEPT_JPEG.name}', sides, KEPT_JPEG_TARGET, 'conversions/s')


def cached(ctx: Context) -> None:
    """Redis hits and original downloads: look vs the bare app after one GET or a sendfile."""
    look = ctx.start(LOOK_REDIS_URL=ctx.redis.url)
    bare = ctx.bare(BENCH_BARE_REDIS_URL=ctx.redis.url, BENCH_BARE_KEY_PREFIX='bench:')
    ctx.seed(look)
    client = ctx.stack.enter_context(redis.Redis.from_url(ctx.redis.url))
    n, bare_label = ctx.settings.concurrency, 'req/s (bare)'
    for t in CACHED:
        look_calls, bare_calls = [], []
        for image_id in ctx.seeds[t.source]:
            look_calls.append(Call('GET', t.path(image_id)))
            answer(look, look_calls[-1])  # a miss fills the cache
            if (hit := answer(look, look_calls[-1])).header('X-Look-Cache') != 'Hit':
                raise BenchError(f'{t.path(image_id)} was not a cache hit')
            key = t.path(image_id, '{}').replace('/', '-')
            client.set(f'bench:{key}', hit.body)
            bare_calls.append(Call('GET', f'/cached/{key}'))
        sides = [http('look', look, look_calls, n), http('bare', bare, bare_calls, n)]
        kib = len(hit.body) // 1024
        ctx.versus(f'cached thumbnail {t} (~{kib} KiB)', sides, HIT_TARGET, bare_label)
    for source in DOWNLOADS:
        ids = ctx.seeds[source]
        sides = [
            http('look', look, [Call('GET', f'/images/{i}.jpeg') for i in ids], n),
            http('bare', bare, [Call('GET', f'/files/{i}.jpeg') for i in ids], n),
        ]
        kib = os.stat(ctx.stored(ids[0])).st_size // 1024
        ctx.versus(f'original download {source} (~{kib} KiB)', sides, DOWNLOAD_TARGET, bare_label)


def _renders(server: Gunicorn) -> float:
    """Return how many thumbnails of the herd's format look has rendered, from /metrics."""
    lines = answer(server, Call('GET', '/metrics')).body.decode().splitlines()
    series = f'look_renders_total{{format="{HERD.format}"'
    return sum(float(line.split()[-1]) for line in lines if line.startswith(series))


def herd(ctx: Context) -> None:
    """Many requests at once for one uncached thumbnail vs one alone: one render, little more time.

    Each herd and each request alone asks for a thumbnail of an image uploaded just before.
    """
    look = ctx.start(LOOK_REDIS_URL=ctx.redis.url)
    upload = post('/images', _jpeg(SOURCES[HERD.source]), 'image/jpeg')
    renders: list[int] = []  # by every herd, the warm-up's included

    def ask(count: int, seconds: float) -> Figure:
        call = Call('GET', HERD.path(answer(look, upload).json()['id']))
        before = _renders(look)
        with CpuMeter() as meter:
            wall = at_once(look, call, count)
        made = round(_renders(look) - before)
        if count == 1 and made != 1:
            raise BenchError(f'one request alone for {call.path} made {made} renders')
        if count > 1:
            renders.append(made)
        return Figure(wall, 1, cpu=meter.services)

    work = f'{HERD_SIZE} requests at once for an uncached thumbnail {HERD}'
    sides = [Side(name, functools.partial(ask, count)) for name, count in
             (('herd', HERD_SIZE), ('alone', 1))]  # fmt: skip
    text = ctx.measure(work, sides, 2 * ctx.settings.rounds, 1e3)
    row = herd_row(work, *sides, renders, HERD_TARGET)
    row.rounds = f'{text}; renders per herd {renders}'
    ctx.add(row)


def _list_page(ctx: Context, where: str, servers: list[Gunicorn]) -> None:
    call = Call('GET', '/images?limit=100')
    if (listed := len(answer(servers[0], call).json())) != 100:
        raise BenchError(f'GET /images?limit=100 listed {listed} images, not 100')
    work = f'list page (limit=100) at {ctx.settings.index_size} images{where} vs 100'
    ctx.versus(work, one_at_a_time(servers, call), LIST_TARGET, '100 images', at_most=True)


def _index_entries(count: int, seed: int) -> Iterator[tuple[str, StoredImage]]:
    """Yield ``count`` 640x360 images with seeded ids, uploaded a second apart until now."""
    rng, now = random.Random(seed), int(time.time())
    for n in range(count):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        yield image_id, StoredImage(image_id, now - count + n, (640, 360))


def _build_storage(root: pathlib.Path, count: int, jpeg: pathlib.Path, seed: int) -> None:
    """Write a storage of ``count`` images in look's own format, in seconds: links to one JPEG."""
    (root / 'images').mkdir(parents=True)
    (root / 'index.lock').touch()
    lines = []
    for image_id, image in _index_entries(count, seed):
        os.link(jpeg, root / 'images' / f'{image_id}.jpeg')
        record = {'op': 'add', 'id': image_id, 'modified': image.modified, 'size': [640, 360]}
        lines.append(encode_line(record))
    (root / 'index.jsonl').write_bytes(b''.join(lines))


def index(ctx: Context) -> None:
    """A list page and an upload on a large local index vs a small or empty one."""
    size = ctx.settings.index_size
    log(f'building a {size}-image storage directory')
    jpeg = ctx.workdir / 'list.jpeg'
    jpeg.write_bytes(image_bytes('JPEG', (640, 360), seed=102, quality=85))
    _build_storage(ctx.workdir / 'big', size, jpeg, seed=1)
    _build_storage(ctx.workdir / 'small', 100, jpeg, seed=2)
    big, small, empty = (ctx.start(name) for name in ('big', 'small', 'empty'))
    _list_page(ctx, '', [big, small])
    work = f'upload 640x360 PNG into {size} images vs empty (one at a time)'
    sides = one_at_a_time([big, empty], PNG_UPLOAD.call())
    ctx.versus(work, sides, INDEX_UPLOAD_TARGET, 'empty index', at_most=True)


def shared(ctx: Context) -> None:
    """Uploads, renders, downloads and a list page on SeaweedFS + PostgreSQL vs local disk."""
    s = ctx.settings
    seaweed = ctx.stack.enter_context(SeaweedServer())
    database = ctx.stack.enter_context(PostgresDatabase())
    assert seaweed.process is not None
    serves(seaweed.process.pid, database.name)

    def on_shared(name: str, images: str, index: str) -> Gunicorn:
        return ctx.start(name, LOOK_IMAGES_URL=images, LOOK_INDEX_URL=index, **seaweed.environ)

    local = ctx.start()
    ctx.seed(local)
    remote = on_shared('shared', 's3://bench/images', database.url)
    ids = ctx.upload_seeds(remote, '1920x1080'), ctx.seeds['1920x1080']
    for work, call, target, pool_bound in SHARED:
        n = s.pool_jobs if pool_bound else s.concurrency
        sides = [http(name, server, [call(i) for i in host_ids], n) for name, server, host_ids in
                 (('shared', remote, ids[0]), ('local', local, ids[1]))]  # fmt: skip
        ctx.versus(f'{work}, shared vs local', sides, target, 'req/s (local)')
    log(f'filling PostgreSQL indexes of {s.index_size} and 100 images')
    lists = []
    for name, count in (('big', s.index_size), ('small', 100)):
        index = PostgresIndex(database.create_schema(name))  # rows only: listing reads no object
        index.open()
        ctx.stack.callback(index.close)
        index.import_entries(_index_entries(count, seed=count))
        index.analyze()
        lists.append(on_shared(f'{name}-pg', 's3://bench/list', index.url))
    _list_page(ctx, ' in PostgreSQL', lists)


# BENCH_ONLY picks among these, by name; this is the order a run measures them in.
MEASUREMENTS = {group.__name__: group for group in (uncached, cached, herd, index, shared)}
GROUPS = tuple(MEASUREMENTS)
