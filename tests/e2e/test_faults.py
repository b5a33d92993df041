"""Fault injection against the real pieces: gunicorn, its workers, their pools, Redis, the disk.

Each test breaks one part the way production breaks it (SIGKILL, a full disk, a
Redis that never answers, a decoder process that dies mid-render) and checks the
promise that must survive it: nothing acknowledged is lost, nothing half-written
is left, nobody waits long, and the service heals by itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import http.client
import inspect
import io
import itertools
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from PIL import Image

from look.core.spool import TEMP_GRACE_SECONDS
from look.web.cache import RedisCache

from support.gunicorn import Gunicorn, MakeGunicorn, list_ids, upload
from support.http import ClientThreads, Response, connect, get, request, send
from support.imagegen import encode, image_bytes
from support.processes import STOP_TIMEOUT, live_processes, process_group, tmpfs, wait_until
from support.redis import RedisServer
from support.storage import image_files, indexed_ids, storage_state, temp_files

pytestmark = pytest.mark.e2e

# A bound on "never waits long", far above a normal answer (a few milliseconds).
PROMPT = 1.5
# How long a test client waits before it sends again an upload a busy worker refused.
BUSY_PAUSE = 0.05
_CACHE_DEFAULTS = inspect.signature(RedisCache.__init__).parameters
# After a failure the cache leaves Redis alone this long, per worker.
RETRY_INTERVAL: float = _CACHE_DEFAULTS['retry_interval'].default
# The longest a request may wait on Redis.
REDIS_TIMEOUT: float = _CACHE_DEFAULTS['timeout'].default
# Small uploads of several formats, so the threads of a crash test upload many.
SMALL_UPLOADS = [
    image_bytes(fmt, (160, 120), seed=seed)
    for seed, fmt in enumerate(['JPEG', 'PNG', 'WEBP', 'GIF', 'JPEG', 'PNG'])
]


# -- helpers ---------------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    """Return the fully decoded image in ``data`` (raises if it is not one)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def check_error(response: Response, status: int) -> dict[str, str]:
    """Assert an error answer with the one JSON shape; return it."""
    assert response.status == status, (response.status, response.body)
    assert response.header('Content-Type') == 'application/json', response.headers
    error: dict[str, str] = response.json()
    assert set(error) == {'title', 'description'}, error
    return error


def is_busy(response: Response) -> bool:
    """Return whether a worker refused an upload because it has too many already."""
    busy = ('Image processes busy', 'Too many uploads')
    return response.status == 503 and response.json()['title'] in busy


def check_retry_later(response: Response) -> None:
    """Assert a 503 that says, in seconds, when to come back."""
    check_error(response, 503)
    retry_after = response.header('Retry-After')
    assert retry_after is not None and retry_after.isdigit(), response.headers


def thumbnail_size(path: str) -> tuple[int, int]:
    """Return the size a thumbnail path names."""
    width, height = path.removesuffix('.jpeg').rsplit('/', 1)[1].split('x')
    return int(width), int(height)


def is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie has exited)."""
    return any(process.pid == pid for process in live_processes())


def children(pid: int) -> set[int]:
    """Return the pids of the live children of ``pid``."""
    return {process.pid for process in live_processes() if process.ppid == pid}


def pool_pids(worker: int) -> set[int]:
    """Return the pids of the image processes of one gunicorn worker."""
    return {
        process.pid
        for process in live_processes()
        if process.ppid == worker and process.is_image_process
    }


def chars_read(pid: int) -> int:
    """Return how many bytes ``pid`` has read so far (pipes and files alike)."""
    with open(f'/proc/{pid}/io') as io_counters:
        for line in io_counters:
            name, _, value = line.partition(':')
            if name == 'rchar':
                return int(value)
    raise AssertionError(f'/proc/{pid}/io has no rchar')


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    """Call ``function``; return its result and how long it took."""
    started = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - started


@contextlib.contextmanager
def connection_to_each_worker(server: Gunicorn) -> Iterator[dict[int, http.client.HTTPConnection]]:
    """Yield one open keep-alive connection per worker, keyed by the worker's pid."""
    workers = server.worker_pids()
    found: dict[int, http.client.HTTPConnection] = {}
    try:
        for _ in server.until_every_worker(found.keys()):
            connection = connect(server.url)
            response = send(connection, 'GET', '/images?limit=1')
            worker = server.answering_worker(connection)
            if response.status != 200 or worker is None or worker in found:
                connection.close()
            else:
                found[worker] = connection
        assert workers <= set(found), f'reached only {set(found)} of {workers}'
        yield found
    finally:
        for connection in found.values():
            connection.close()


def discard(server: Gunicorn) -> None:
    """Kill what is left of a gunicorn a test killed or stopped itself, and tidy up."""
    if server.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(STOP_TIMEOUT)
    shutil.rmtree(server.runtime_dir, ignore_errors=True)


class Uploaders(ClientThreads):
    """Client threads uploading without pause; they remember what the server acknowledged."""

    def __init__(self, server: Gunicorn, threads: int) -> None:
        self.server = server
        self.acknowledged: set[str] = set()
        self.refusals: list[str] = []  # answers other than 201 or busy: there should be none
        self.busy = 0  # 503s of a worker with more uploads waiting than it takes: sent again
        self.cut_off = 0  # connections refused or cut: expected once a process is killed
        super().__init__([(number,) for number in range(threads)])

    def count(self) -> int:
        """Return how many uploads got a 201 so far."""
        with self._lock:
            return len(self.acknowledged)

    def _run(self, number: int) -> None:
        while not self._stop.is_set():
            body = SMALL_UPLOADS[number % len(SMALL_UPLOADS)]
            number += 1
            try:
                response = request(
                    'POST',
                    f'{self.server.url}/images',
                    body,
                    {'Content-Type': 'application/octet-stream'},
                    timeout=30,
                )
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.cut_off += 1
                self._stop.wait(0.02)
                continue
            except Exception as ex:  # reported, not lost in a thread
                with self._lock:
                    self.refusals.append(repr(ex))
                continue
            with self._lock:
                if response.status == 201:
                    self.acknowledged.add(response.json()['id'])
                elif is_busy(response):
                    self.busy += 1
                else:
                    self.refusals.append(f'{response.status}: {response.body[:300]!r}')
            if is_busy(response):
                self._stop.wait(BUSY_PAUSE)  # sooner than Retry-After: the test is short


# -- nothing acknowledged is lost: a crash of the whole server -------------------------


def test_sigkill_of_the_whole_server_mid_upload_loses_nothing_acknowledged(
    tmp_path: pathlib.Path,
) -> None:
    """8 clients upload without pause; the whole process group is SIGKILLed mid-flight.

    After a restart on the same storage every acknowledged upload is listed and
    decodes, every listed image decodes, the index has no half line, and no
    temporary file survives start-up once older than the grace period.
    """
    storage = tmp_path / 'storage'
    server = Gunicorn(storage, workers=2)
    server.start()
    try:
        with Uploaders(server, threads=8) as uploaders:
            assert wait_until(lambda: uploaders.count() >= 100, 60), server.log_tail()
            cut_before_the_crash = uploaders.cut_off
            os.killpg(server.pid, signal.SIGKILL)
            assert server.process is not None
            server.process.wait(STOP_TIMEOUT)
        assert not uploaders.refusals, uploaders.refusals[:5]
        assert cut_before_the_crash == 0, 'uploads failed before the crash'
        assert wait_until(lambda: not process_group(server.pid), 10), process_group(server.pid)
    finally:
        discard(server)

    acknowledged = uploaders.acknowledged
    left_by_crash = temp_files(storage)
    half_line = not (storage / 'index.jsonl').read_bytes().endswith(b'\n')
    # NOTE: start-up leaves temp files younger than the grace period alone (their
    #   writer may be alive); these are old enough once aged past it.
    past = time.time() - TEMP_GRACE_SECONDS - 10
    for name in left_by_crash:
        os.utime(storage / name, (past, past))

    with Gunicorn(storage, workers=2) as restarted:
        listed = list_ids(restarted)
        found = acknowledged & set(listed)
        figures = (
            f'crash test: {len(acknowledged)} uploads acknowledged, {len(found)} found after '
            f'restart; {len(listed)} listed in all ({len(set(listed) - acknowledged)} committed '
            f'but never acknowledged); {len(left_by_crash)} temp files and '
            f'{"a" if half_line else "no"} half index line left by the crash; '
            f'{uploaders.busy} uploads sent again after a busy 503'
        )
        print(figures)
        assert found == acknowledged, f'{figures}; lost: {sorted(acknowledged - found)[:10]}'
        assert len(listed) == len(set(listed)), f'{figures}; an image is listed twice'

        undecodable = []
        for image_id in listed:
            response = get(f'{restarted.url}/images/{image_id}.jpeg')
            try:
                assert response.status == 200, response.status
                assert decode(response.body).format == 'JPEG'
            except Exception as ex:  # collected, reported below
                undecodable.append(f'{image_id}: {ex!r}')
        assert not undecodable, f'{figures}; listed but unreadable: {undecodable[:10]}'

        assert indexed_ids(storage) == listed, figures
        assert image_files(storage) == set(listed), f'{figures}; files on disk differ from list'
        assert temp_files(storage) == [], f'{figures}; temp files survived start-up'


# -- several workers at once -----------------------------------------------------------


@pytest.fixture(scope='module')
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """Four workers on one storage: more writers than cores, so they really interleave."""
    with Gunicorn(tmp_path_factory.mktemp('cluster'), workers=4) as server:
        yield server


def test_four_workers_uploading_at_once_lose_nothing_and_all_list_it(cluster: Gunicorn) -> None:
    """32 clients upload at once; each upload is listed at once by whichever worker is asked.

    The list ends up with exactly the acknowledged ids, once each.
    """
    threads, rounds = 4 * 8, 4
    before = list_ids(cluster)

    def client(number: int) -> list[tuple[str, int | None, int | None, bool]]:
        checks = []
        for round_ in range(rounds):
            body = SMALL_UPLOADS[(number + round_) % len(SMALL_UPLOADS)]
            while True:
                created, uploader = cluster.request_worker(
                    'POST', '/images', body, {'Content-Type': 'application/octet-stream'}
                )
                if not is_busy(created):
                    break
                time.sleep(BUSY_PAUSE)  # more uploads reached one worker than it lets wait
            assert created.status == 201, created.body
            image_id = created.json()['id']
            listing, lister = cluster.request_worker('GET', '/images?limit=1000')
            assert listing.status == 200, listing.body
            listed = image_id in {image['id'] for image in listing.json()}
            checks.append((image_id, uploader, lister, listed))
        return checks

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        checks = [check for result in pool.map(client, range(threads)) for check in result]

    acknowledged = {image_id for image_id, *_ in checks}
    assert len(acknowledged) == threads * rounds
    unseen = [(image_id, up, lister) for image_id, up, lister, listed in checks if not listed]
    assert not unseen, f'listings right after the upload missed: {unseen[:5]}'
    elsewhere = [c for c in checks if None not in c[1:3] and c[1] != c[2]]
    assert elsewhere, 'no listing came from another worker than the upload'

    after = list_ids(cluster)
    assert after[: len(before)] == before
    assert sorted(after[len(before) :]) == sorted(acknowledged)
    assert indexed_ids(cluster.storage_path) == after
    with connection_to_each_worker(cluster) as connections:
        for worker, connection in connections.items():
            assert list_ids(cluster, connection) == after, f'worker {worker} lists otherwise'


def test_worker_killed_mid_upload_loses_nothing_acknowledged(cluster: Gunicorn) -> None:
    """SIGKILL one worker while clients upload; its replacement and the others list everything."""
    workers = cluster.worker_pids()
    with Uploaders(cluster, threads=8) as uploaders:
        assert wait_until(lambda: uploaders.count() >= 30, 30), cluster.log_tail()
        victim = max(workers, key=lambda pid: len(pool_pids(pid)))
        victim_pools = pool_pids(victim)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: len(now := cluster.worker_pids()) == 4 and victim not in now, 30
        )
        assert replaced, f'no worker replaced {victim}:\n{cluster.log_tail()}'
        enough = uploaders.count() + 30
        assert wait_until(lambda: uploaders.count() >= enough, 30), cluster.log_tail()

    assert not uploaders.refusals, uploaders.refusals[:5]
    killed = victim_pools | {victim}
    gone = wait_until(lambda: not any(is_alive(pid) for pid in killed), 10)
    assert gone, f'the killed worker or its image processes linger: {killed}'

    acknowledged = uploaders.acknowledged
    with connection_to_each_worker(cluster) as connections:
        for worker, connection in connections.items():
            missing = acknowledged - set(list_ids(cluster, connection))
            assert not missing, f'worker {worker} does not list {sorted(missing)[:5]}'
    for image_id in acknowledged:
        response = get(f'{cluster.url}/images/{image_id}.jpeg')
        assert response.status == 200, response.body
        assert decode(response.body).format == 'JPEG'


def test_sighup_reload_keeps_serving_and_replaces_the_workers(cluster: Gunicorn) -> None:
    """During and after a SIGHUP reload every request is answered; new workers take over."""
    old_workers = cluster.worker_pids()
    old_processes = {p.pid for p in cluster.processes() if p.pid != cluster.pid}
    failures: list[str] = []
    answered: list[tuple[float, str]] = []
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            number += 1
            try:
                if number % 2:
                    response = get(f'{cluster.url}/images?limit=1')
                    ok = response.status == 200
                else:
                    body = SMALL_UPLOADS[number % len(SMALL_UPLOADS)]
                    response = request('POST', f'{cluster.url}/images', body)
                    ok = response.status == 201
                    if ok:
                        answered.append((time.monotonic(), response.json()['id']))
            except Exception as ex:  # collected, reported below
                failures.append(repr(ex))
                continue
            if not ok:
                failures.append(f'{response.status}: {response.body[:200]!r}')

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client, number) for number in range(4)]
        try:
            time.sleep(0.3)
            os.kill(cluster.pid, signal.SIGHUP)
            reloaded = wait_until(
                lambda: len(now := cluster.worker_pids()) == 4 and not now & old_workers, 30
            )
            done_at = time.monotonic()
            # NOTE: new workers import look and start their pools before
            #   they answer; on a busy machine that takes seconds.
            wait_until(lambda: any(at > done_at for at, _ in answered), 30)
        finally:
            stop.set()
            for future in running:
                future.result()

    assert reloaded, f'workers after SIGHUP: {cluster.worker_pids()}\n{cluster.log_tail()}'
    assert not failures, f'requests failed during the reload: {failures[:5]}'
    assert any(at > done_at for at, _ in answered), 'nothing was uploaded after the reload'
    new_workers = cluster.worker_pids()
    for _ in range(8):
        response, worker = cluster.request_worker('GET', '/images?limit=1')
        assert response.status == 200
        assert worker in new_workers
    gone = wait_until(lambda: not any(is_alive(pid) for pid in old_processes), 15)
    assert gone, f'old processes linger: {[pid for pid in old_processes if is_alive(pid)]}'
    missing = {image_id for _, image_id in answered} - set(list_ids(cluster))
    assert not missing, f'uploads acknowledged during the reload are not listed: {missing}'


# -- a full disk -----------------------------------------------------------------------


@pytest.fixture(scope='module')
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A 2 MiB tmpfs, so the disk can be filled for real."""
    with tmpfs(tmp_path_factory.mktemp('small-disk'), '2m') as mount_point:
        yield mount_point


@dataclasses.dataclass
class FullDiskSetup:
    """A gunicorn storing on a small disk, and the images it held before the disk filled."""

    server: Gunicorn
    disk: pathlib.Path
    earlier: dict[str, bytes]  # id -> the JPEG served for it


@pytest.fixture(scope='module')
def full_disk_setup(small_disk: pathlib.Path) -> Iterator[FullDiskSetup]:
    """One worker on the small disk, with two images stored while there was room."""
    with Gunicorn(small_disk / 'storage', workers=1) as server:
        earlier = {}
        for seed in (1, 2):
            image_id = upload(server, image_bytes('JPEG', (320, 200), seed=seed))['id']
            earlier[image_id] = get(f'{server.url}/images/{image_id}.jpeg').body
        yield FullDiskSetup(server, small_disk, earlier)


@contextlib.contextmanager
def disk_filled(disk: pathlib.Path, leave: int = 0) -> Iterator[None]:
    """Fill the file system at ``disk`` but for about ``leave`` bytes; free it all after."""
    filler = disk / 'filler'
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (bytes(64 * 1024), bytes(4096), bytes(1)):
            try:
                while True:
                    os.write(fd, block)
            except OSError as ex:
                if ex.errno != errno.ENOSPC:
                    raise
        statvfs = os.statvfs(disk)
        assert statvfs.f_bavail == 0, 'the disk did not fill up'
        os.ftruncate(fd, os.fstat(fd).st_size - leave)
        yield
    finally:
        os.close(fd)
        filler.unlink()


FULL_DISK = {
    # The body fits in the write buffer: the failure comes at the flush.
    'small-body': (lambda: image_bytes('PNG', (320, 200), seed=3), 0),
    # The body is written as it arrives: the failure comes mid-stream.
    'large-body': (lambda: image_bytes('JPEG', (2400, 1800), seed=4), 0),
    # The 11 KB body fits; the 70 KB JPEG it is converted to does not.
    'conversion': (lambda: image_bytes('PNG', (1600, 1200), seed=5), 24 * 1024),
}


@pytest.mark.parametrize(('make_body', 'leave'), FULL_DISK.values(), ids=FULL_DISK.keys())
def test_full_disk_refuses_the_upload_cleanly_and_heals(
    full_disk_setup: FullDiskSetup, make_body: Any, leave: int
) -> None:
    """A full disk gets a 507 JSON error, leaves no trace, keeps earlier images; then heals."""
    server, storage = full_disk_setup.server, full_disk_setup.server.storage_path
    body = make_body()
    files_before, index_before = image_files(storage), (storage / 'index.jsonl').read_bytes()
    temps_before = set(temp_files(storage))  # an earlier case may have left some
    problems = []

    with disk_filled(full_disk_setup.disk, leave):
        response = request('POST', f'{server.url}/images', body, {'Content-Type': 'image/png'})
        if response.status != 507:
            problems.append(f'a full disk answered {response.status} {response.body[:200]!r}')
        elif set(response.json()) != {'title', 'description'}:
            problems.append(f'the 507 is not the JSON error shape: {response.body!r}')
        if left := set(temp_files(storage)) - temps_before:
            problems.append(f'temporary files left behind: {sorted(left)}')
        if image_files(storage) != files_before:
            problems.append(f'image files changed: {image_files(storage) ^ files_before}')
        if (storage / 'index.jsonl').read_bytes() != index_before:
            problems.append('the index changed')
        listed = list_ids(server)
        for image_id, jpeg in full_disk_setup.earlier.items():
            download = get(f'{server.url}/images/{image_id}.jpeg')
            if image_id not in listed or download.status != 200 or download.body != jpeg:
                problems.append(f'earlier image {image_id} is not served as before')

    created = request('POST', f'{server.url}/images', body, {'Content-Type': 'image/png'})
    if created.status != 201:
        problems.append(f'with room again the upload got {created.status} {created.body[:200]!r}')
    else:
        image_id = created.json()['id']
        if image_id not in list_ids(server):
            problems.append('with room again the upload is not listed')
        if decode(get(f'{server.url}/images/{image_id}.jpeg').body).format != 'JPEG':
            problems.append('with room again the upload does not download')
    assert not problems, '\n'.join(problems) + f'\n{server.log_tail(30)}'


def test_health_on_a_full_disk_is_degraded_while_downloads_work(
    full_disk_setup: FullDiskSetup,
) -> None:
    """A full disk stops uploads, not downloads: a load balancer must keep the host.

    /health says so without writing anything.
    """
    server, storage = full_disk_setup.server, full_disk_setup.server.storage_path
    image_id = next(iter(full_disk_setup.earlier))
    names_before = storage_state(storage)[0]
    with disk_filled(full_disk_setup.disk):
        answers = [get(f'{server.url}/health') for _ in range(4)]
        download = get(f'{server.url}/images/{image_id}.jpeg')
        names = storage_state(storage)[0]
    assert [answer.status for answer in answers] == [200] * 4
    assert {answer.json()['status'] for answer in answers} == {'degraded'}
    assert {answer.json()['storage']['status'] for answer in answers} == {'full'}
    assert download.status == 200
    assert names == names_before, 'health checks wrote to the disk'
    assert get(f'{server.url}/health').json()['storage']['status'] == 'ok'  # room again


# -- Redis that hangs ------------------------------------------------------------------


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections, reads what comes, never answers.

    It counts connections and bytes: each is a time a worker asked Redis, and waited.
    Given a ``reply``, it answers every read with it instead, a byte every ``pace``
    seconds: a Redis that is slow, or a server that is not Redis at all.
    """

    def __init__(self, reply: bytes = b'', pace: float = 0.0) -> None:
        self._reply = reply
        self._pace = pace
        self._listener = socket.create_server(('127.0.0.1', 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._received = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        """The LOOK_REDIS_URL that points at this server."""
        return f'redis://127.0.0.1:{self.port}/0'

    def counts(self) -> tuple[int, int]:
        """Return the connections accepted and the bytes received so far."""
        with self._lock:
            return len(self._connections), self._received

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            reader = threading.Thread(target=self._read, args=(connection,), daemon=True)
            with self._lock:
                self._connections.append(connection)
                self._threads.append(reader)
            reader.start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._received += len(data)
            for at in range(len(self._reply)):
                time.sleep(self._pace)
                try:
                    connection.sendall(self._reply[at : at + 1] if self._pace else self._reply)
                except OSError:
                    return
                if not self._pace:
                    break

    def close(self) -> None:
        """Stop accepting, drop every connection and wait for the threads."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture(scope='module')
def silent_redis() -> Iterator[SilentServer]:
    """A Redis stand-in that never answers."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope='module')
def slow_cache(
    silent_redis: SilentServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gunicorn, str]]:
    """Two workers whose Redis never answers, and a thumbnail path of a stored image."""
    storage = tmp_path_factory.mktemp('slow-cache')
    with Gunicorn(storage, workers=2, redis_url=silent_redis.url) as server:
        created = upload(server, image_bytes('JPEG', (640, 360), seed=7))
        yield server, created['thumbnails'][0]


def test_slow_redis_costs_each_worker_one_short_wait_per_retry_interval(
    slow_cache: tuple[Gunicorn, str], silent_redis: SilentServer
) -> None:
    """Redis accepts and never answers: every thumbnail is served (Miss) within a short bound.

    Each worker asks once, waits its short timeout, then leaves Redis alone for
    the retry interval: the requests in between send Redis nothing at all.
    """
    server, path = slow_cache
    started = time.monotonic()
    probes: dict[int | None, list[float]] = {}  # worker -> when it contacted Redis
    quiet = 0  # requests answered without contacting Redis
    for _ in range(20):
        before = silent_redis.counts()
        asked_at = time.monotonic()
        (response, worker), elapsed = timed(server.request_worker, 'GET', path)
        assert response.status == 200, response.body
        assert response.header('X-Look-Cache') == 'Miss'
        assert decode(response.body).size == thumbnail_size(path)
        assert elapsed < PROMPT, f'a request waited {elapsed:.2f}s on a silent Redis'
        if silent_redis.counts() != before:
            probes.setdefault(worker, []).append(asked_at)
        else:
            quiet += 1
    elapsed = time.monotonic() - started

    too_soon = {
        worker: times
        for worker, times in probes.items()
        if any(
            later - earlier < RETRY_INTERVAL - 0.5 for earlier, later in itertools.pairwise(times)
        )
    }
    assert not too_soon, f'workers asked Redis again within the retry interval: {too_soon}'
    connections, _ = silent_redis.counts()
    allowed = len(server.worker_pids()) * (1 + int(elapsed // RETRY_INTERVAL))
    assert connections <= allowed, (
        f'{connections} connections to Redis in {elapsed:.1f}s; at most {allowed} allowed'
    )
    assert quiet >= 10, f'only {quiet} of 20 requests were answered without asking Redis'


def test_slow_redis_is_probed_once_per_worker_by_a_burst(
    slow_cache: tuple[Gunicorn, str], silent_redis: SilentServer
) -> None:
    """After the retry interval a burst of requests sends one probe per worker, not one each.

    Otherwise every request of the burst waits the Redis timeout, and the retry
    interval protects nobody when it matters most: under load.
    """
    server, _ = slow_cache
    workers = server.worker_pids()
    tripped: set[int | None] = set()
    for _ in server.until_every_worker(tripped):
        response, worker = server.request_worker('GET', f'/thumbnails/{uuid.uuid4()}/64x64.jpeg')
        check_error(response, 404)
        tripped.add(worker)
    assert workers <= tripped, f'reached only {tripped} of {workers}'
    time.sleep(RETRY_INTERVAL + 0.5)  # every worker may ask Redis again now

    before, _ = silent_redis.counts()
    paths = [f'/thumbnails/{uuid.uuid4()}/64x64.jpeg' for _ in range(16)]
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(lambda path: timed(get, server.url + path), paths))
    probes = silent_redis.counts()[0] - before

    for response, elapsed in answers:
        check_error(response, 404)
        assert response.header('X-Look-Cache') == 'Miss'
        assert elapsed < PROMPT, f'a request waited {elapsed:.2f}s on a silent Redis'
    assert probes <= len(workers), (
        f'{probes} connections to a silent Redis from a burst of {len(paths)} requests '
        f'on {len(workers)} workers: every request waited {REDIS_TIMEOUT}s for it'
    )


@pytest.mark.parametrize(
    ('reply', 'pace'),
    [
        pytest.param(b'+OK\r\n', 0.2, id='a byte every 0.2 s'),
        pytest.param(
            b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n', 0.0, id='not redis'
        ),
    ],
)
def test_a_cache_that_trickles_or_is_not_redis_costs_a_request_one_short_wait(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path, reply: bytes, pace: float
) -> None:
    """Each call to the cache has one deadline for the whole of it, not one per byte.

    The issue: a Redis answering a byte every 0.2 s made a thumbnail take 13.4 s,
    and a server on the cache URL that is not Redis turned /health into a 500.
    """
    cache = SilentServer(reply, pace)
    try:
        server = make_gunicorn(tmp_path / 'storage', workers=1, redis_url=cache.url)
        created = upload(server, image_bytes('JPEG', (640, 360), seed=8))
        for path in [*created['thumbnails'], '/health', created['thumbnails'][0]]:
            response, elapsed = timed(get, server.url + path)
            assert response.status == 200, response.body
            assert elapsed < PROMPT, f'{path} waited {elapsed:.2f}s on the cache'
            if path == '/health':
                assert response.json()['cache']['status'] == 'unavailable'
                assert response.json()['status'] == 'degraded'
            else:
                assert response.header('X-Look-Cache') == 'Miss'
                assert decode(response.body).size == thumbnail_size(path)
        assert cache.counts()[0] >= 1  # the cache was asked, and let go
    finally:
        cache.close()


# -- Redis down, then back, under gunicorn ---------------------------------------------


def wait_for_every_worker_to_hit(server: Gunicorn, path: str) -> set[int | None]:
    """Request ``path`` until every worker has answered it from the cache; return those that did.

    Every answer along the way must be a prompt, valid thumbnail.
    """
    workers = server.worker_pids()
    hits: set[int | None] = set()
    deadline = time.monotonic() + RETRY_INTERVAL + 10
    while not workers <= hits and time.monotonic() < deadline:
        (response, worker), elapsed = timed(server.request_worker, 'GET', path)
        assert response.status == 200, response.body
        assert elapsed < PROMPT, f'{path} took {elapsed:.2f}s'
        assert decode(response.body).size == thumbnail_size(path)
        if response.header('X-Look-Cache') == 'Hit':
            hits.add(worker)
        time.sleep(0.05)
    return hits


def check_prompt_misses(server: Gunicorn, path: str, times: int) -> None:
    """Assert ``times`` prompt, uncached, valid answers for ``path``."""
    for _ in range(times):
        response, elapsed = timed(get, server.url + path)
        assert response.status == 200, response.body
        assert response.header('X-Look-Cache') == 'Miss'
        assert decode(response.body).size == thumbnail_size(path)
        assert elapsed < PROMPT, f'{path} took {elapsed:.2f}s with Redis down'


@pytest.mark.redis
def test_redis_down_at_start_then_killed_every_worker_resumes_caching(
    make_gunicorn: Any,
) -> None:
    """Down at start, then up, then killed, then back: served throughout; caching resumes.

    Each worker has its own circuit breaker, so each must find Redis again on its own.
    """
    redis_server = RedisServer()  # not started yet: nothing listens at its socket
    try:
        server = make_gunicorn(workers=2, redis_url=redis_server.url)
        workers = server.worker_pids()
        path = upload(server, image_bytes('JPEG', (640, 360), seed=8))['thumbnails'][0]
        check_prompt_misses(server, path, 6)

        redis_server.start()
        hits = wait_for_every_worker_to_hit(server, path)
        assert workers <= hits, f'after Redis came up, only {hits} of {workers} use it'

        redis_server.kill()
        check_prompt_misses(server, path, 6)

        redis_server.restart()
        hits = wait_for_every_worker_to_hit(server, path)
        assert workers <= hits, f'after Redis came back, only {hits} of {workers} use it'
    finally:
        redis_server.close()


@pytest.mark.redis
def test_wrong_typed_cache_key_is_a_miss_and_replaced(
    make_gunicorn: Any, redis_server: RedisServer
) -> None:
    """A key of another type under a thumbnail's name: Redis answers an error, not bytes.

    The request is served (Miss) and the key is replaced, so caching resumes for that
    thumbnail; otherwise it would be rendered on every request for good.
    """
    server = make_gunicorn(workers=1, redis_url=redis_server.url)
    path = upload(server, image_bytes('JPEG', (640, 360), seed=11))['thumbnails'][0]
    key = f'look:{path}'
    inspector = redis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        inspector.rpush(key, b'not a thumbnail')

        check_prompt_misses(server, path, 1)
        again = get(server.url + path)

        kind = inspector.type(key)
    finally:
        inspector.close()
    assert again.status == 200, again.body
    assert decode(again.body).size == thumbnail_size(path)
    assert (kind, again.header('X-Look-Cache')) == (b'string', 'Hit'), (
        f'the {kind.decode()} under {key} was kept: the thumbnail is never cached again'
    )


# -- the image processes ---------------------------------------------------------------


def noisy_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """Return a JPEG of seeded noise: costly to decode and encode, so its renders take a while.

    A tile of noise, repeated: quick to make, and no easier for JPEG.
    """
    tile = Image.frombytes('RGB', (500, 500), random.Random(seed).randbytes(500 * 500 * 3))
    image = Image.new('RGB', size)
    for left in range(0, size[0], tile.width):
        for top in range(0, size[1], tile.height):
            image.paste(tile, (left, top))
    return encode(image, 'JPEG', quality=75)


def render_frozen_mid_way(
    background: concurrent.futures.ThreadPoolExecutor, process: int, url: str
) -> concurrent.futures.Future[Response]:
    """Request a slow thumbnail and SIGSTOP the image process in the middle of its render.

    Return the request, still waiting. The process reads its task from a pipe,
    then the image: once it has read anything, the render has begun.
    """
    for _ in range(3):
        idle = chars_read(process)
        rendering = background.submit(get, url)
        begun = wait_until(lambda idle=idle: chars_read(process) > idle, 10, interval=0.002)
        assert begun, f'image process {process} never took the render'
        os.kill(process, signal.SIGSTOP)
        time.sleep(0.2)
        if not rendering.done():
            return rendering
        os.kill(process, signal.SIGCONT)  # it finished before it was caught; again
        rendering.result()
    pytest.fail('every render finished before its process could be stopped')


@dataclasses.dataclass
class RenderSetup:
    """A one-worker gunicorn (one image process, no cache) with a big and a small image."""

    server: Gunicorn
    big: dict[str, Any]  # its largest thumbnail takes a while to render
    small: dict[str, Any]

    @property
    def slow_path(self) -> str:
        """The largest thumbnail of the big image: the slowest render there is here."""
        path: str = self.big['thumbnails'][0]
        return path


# LOOK_MAX_QUEUE_SECONDS of the render server: short, so a queue past it is quick to build.
RENDER_QUEUE_SECONDS = 0.5
# NOTE: no thumbnail too large for Redis is kept on disk either, so each
#   request for the slow one renders it again.
RENDER_EVERY_TIME = {'LOOK_PROCESSES': '1', 'LOOK_LARGE_THUMBNAILS_BYTES': '0'}


@pytest.fixture(scope='module')
def renders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderSetup]:
    """One worker, LOOK_PROCESSES=1, no Redis nor disk cache: every thumbnail request renders."""
    storage = tmp_path_factory.mktemp('renders')
    environ = {**RENDER_EVERY_TIME, 'LOOK_MAX_QUEUE_SECONDS': str(RENDER_QUEUE_SECONDS)}
    with Gunicorn(storage, workers=1, environ=environ) as server:
        big = upload(server, noisy_jpeg((6000, 4500), seed=9))
        small = upload(server, image_bytes('JPEG', (640, 360), seed=10))
        yield RenderSetup(server, big, small)


def test_image_process_killed_mid_render_fails_that_request_only(renders: RenderSetup) -> None:
    """SIGKILL the image process while it renders: that request gets a 503; the pool heals."""
    server = renders.server
    (worker,) = server.worker_pids()
    warm = get(server.url + renders.small['thumbnails'][-1])
    assert warm.status == 200, warm.body

    (victim,) = pool_pids(worker)
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        rendering = render_frozen_mid_way(background, victim, server.url + renders.slow_path)
        os.kill(victim, signal.SIGKILL)
        response = rendering.result(timeout=30)

    check_retry_later(response)
    assert wait_until(lambda: not is_alive(victim), 5), f'image process {victim} lingers'
    again = get(server.url + renders.slow_path)
    assert again.status == 200, again.body
    assert decode(again.body).size == thumbnail_size(renders.slow_path)
    assert pool_pids(worker) - {victim}, 'no new image process took over'
    small = get(server.url + renders.small['thumbnails'][0])
    assert small.status == 200, small.body


def test_overload_refuses_renders_at_once_and_downloads_stay_prompt(renders: RenderSetup) -> None:
    """Many slow renders at once: once the work queued would outlast LOOK_MAX_QUEUE_SECONDS,
    the rest get a 503 at once, with a Retry-After of that work; the rest 200.

    Downloads, which never touch the pool, are answered meanwhile without waiting behind renders.
    """
    server = renders.server
    thumbnail_url = server.url + renders.slow_path
    alone, render_seconds = timed(get, thumbnail_url)  # the worker learns what one costs
    assert alone.status == 200, alone.body
    others = [renders.small['image'], '/images?limit=5', renders.small['image']]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        thumbnails = [pool.submit(timed, get, thumbnail_url) for _ in range(16)]
        downloads = [pool.submit(timed, get, server.url + path) for path in others]
        rendered = [future.result() for future in thumbnails]
        downloaded = [future.result() for future in downloads]

    statuses = sorted(response.status for response, _ in rendered)
    assert set(statuses) <= {200, 503}, statuses
    refused = [elapsed for response, elapsed in rendered if response.status == 503]
    served = [elapsed for response, elapsed in rendered if response.status == 200]
    assert refused, f'no render was refused: {statuses}'
    # NOTE: one render is queued whatever waits ahead of it; more, up to what
    #   LOOK_MAX_QUEUE_SECONDS of them takes (a render here takes ~0.1-0.3 s).
    assert len(served) >= 2, f'renders of {render_seconds:.2f}s: {statuses}'
    for response, _ in rendered:
        if response.status == 503:
            check_retry_later(response)
            assert is_busy(response), response.body
            # The work queued ahead of it, rounded up to whole seconds.
            assert int(response.header('Retry-After') or 0) >= RENDER_QUEUE_SECONDS
        else:
            assert decode(response.body).size == thumbnail_size(renders.slow_path)
    # A refusal that waited for a render to finish would not be "at once".
    assert max(refused) < min(served), f'refusals took {refused}, renders {served}'
    for (response, elapsed), path in zip(downloaded, others, strict=True):
        assert response.status == 200, (path, response.body)
        assert elapsed < min(served), f'{path} took {elapsed:.2f}s, held behind renders'
    after = get(thumbnail_url)
    assert after.status == 200, after.body


def test_uploads_beyond_the_body_slots_wait_without_a_thread_then_are_refused(
    renders: RenderSetup,
) -> None:
    """The only image process is stopped: of ten uploads, six (LOOK_MAX_CONCURRENT_UPLOADS)
    are received and wait for it on their threads, four wait for a body slot on none.

    Those four are answered 503 with Retry-After once LOOK_MAX_QUEUE_SECONDS is over; a
    listing is answered at once meanwhile, since uploads hold six threads, not all twelve.
    Once the process runs again the six are stored; the refused ones left nothing.
    """
    server = renders.server
    (worker,) = server.worker_pids()
    assert get(server.url + renders.small['thumbnails'][-1]).status == 200  # the process runs
    (process,) = pool_pids(worker)
    listed_before = list_ids(server)
    bodies = [image_bytes('PNG', (64, 48), seed=seed) for seed in range(10)]

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as clients:
        os.kill(process, signal.SIGSTOP)
        try:
            sent = time.monotonic()
            uploads = [
                clients.submit(timed, request, 'POST', f'{server.url}/images', body)
                for body in bodies
            ]

            def answered() -> list[concurrent.futures.Future[tuple[Response, float]]]:
                return [upload for upload in uploads if upload.done()]

            listing, elapsed = timed(get, f'{server.url}/images?limit=1')
            assert wait_until(lambda: len(answered()) >= 4, 10), 'uploads were not refused'
            time.sleep(0.2)  # time for a fifth answer to come, were there one
            refused = answered()
            waiting = [upload for upload in uploads if not upload.done()]
        finally:
            os.kill(process, signal.SIGCONT)
        stored = [upload.result(timeout=30)[0] for upload in waiting]

    assert len(refused) == 4 and len(waiting) == 6, (len(refused), len(waiting))
    for future in refused:
        response, took = future.result()
        check_retry_later(response)
        assert is_busy(response), response.body
        # They waited their turn, then were told; the main loop looks once a second.
        assert RENDER_QUEUE_SECONDS <= took < RENDER_QUEUE_SECONDS + 1.5, took
    assert time.monotonic() - sent < 10
    assert listing.status == 200 and elapsed < PROMPT, (listing.status, elapsed)
    assert all(response.status == 201 for response in stored), [r.body for r in stored]
    ids = {response.json()['id'] for response in stored}
    listed = list_ids(server)
    assert listed[: len(listed_before)] == listed_before
    assert set(listed[len(listed_before) :]) == ids
    assert image_files(server.storage_path) == set(listed)
    assert temp_files(server.storage_path) == []


def test_render_over_the_timeout_is_503_and_its_process_is_gone(renders: RenderSetup) -> None:
    """A render past LOOK_RENDER_TIMEOUT gets a 503 and the process that ran it is killed."""
    environ = {**RENDER_EVERY_TIME, 'LOOK_RENDER_TIMEOUT': '0.05'}
    with Gunicorn(renders.server.storage_path, workers=1, environ=environ) as server:
        (worker,) = server.worker_pids()
        # /health gives the pool its own, longer timeout: it starts the process.
        health = get(f'{server.url}/health')
        assert health.status == 200, health.body
        (process,) = pool_pids(worker)
        children_before = children(worker)

        response = get(server.url + renders.slow_path)

        check_retry_later(response)
        assert wait_until(lambda: not is_alive(process), 5), f'process {process} still runs'
        lingering = children(worker) - (children_before - {process})
        assert not lingering, f'processes started for the render linger: {lingering}'
        assert not pool_pids(worker), f'image processes linger: {pool_pids(worker)}'
        download = get(server.url + renders.big['image'])
        assert download.status == 200
        assert get(f'{server.url}/health').json()['thumbnailer']['status'] == 'ok'


def test_graceful_stop_finishes_a_render_in_flight(renders: RenderSetup) -> None:
    """SIGTERM while a thumbnail renders: it is still answered, then nothing is left running."""
    server = Gunicorn(renders.server.storage_path, workers=1, environ=RENDER_EVERY_TIME)
    server.start()
    try:
        (worker,) = server.worker_pids()
        assert get(server.url + renders.small['thumbnails'][-1]).status == 200
        (process,) = pool_pids(worker)
        with concurrent.futures.ThreadPoolExecutor(2) as background:
            rendering = render_frozen_mid_way(background, process, server.url + renders.slow_path)
            try:
                stopping = background.submit(server.stop)
                assert wait_until(lambda: 'Handling signal: term' in server.log(), 10)
                time.sleep(0.3)  # the worker has been told to stop too
                assert not rendering.done(), 'the render was cut short by the stop'
            finally:
                os.kill(process, signal.SIGCONT)
            response = rendering.result(timeout=30)
            stopping.result(timeout=30)  # asserts a clean exit, no process left
    finally:
        discard(server)

    assert response.status == 200, response.body
    assert decode(response.body).size == thumbnail_size(renders.slow_path)
    assert not process_group(server.pid)
