"""Admission over real gunicorn: ordinary batches are never refused, real overload is.

A worker admits an upload or a render while the work queued on its image
processes is expected to be done within LOOK_MAX_QUEUE_SECONDS, and an upload
whose body finds every receiving slot taken waits for one without holding a
thread. Each test of a limit here has one of ordinary use beside it, at the
default settings (but for one image process per worker, as on two cores).
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import random
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from support.gunicorn import Gunicorn, list_ids
from support.http import Response, get, request
from support.imagegen import photo
from support.processes import require_executable
from support.storage import image_files, temp_files

pytestmark = pytest.mark.e2e

PROMPT = 1.0  # a request that touches no image process is answered within this


def timed_upload(url: str, body: bytes) -> tuple[Response, float]:
    """POST ``body`` to ``url``/images on a new connection; return the answer and when it came."""
    response = request('POST', f'{url}/images', body, timeout=120)
    return response, time.monotonic()


def check_all_stored(server: Gunicorn, responses: list[Response]) -> None:
    """Assert every answer is a 201, and the images are listed and stored, nothing else."""
    statuses = [response.status for response in responses]
    assert statuses == [201] * len(responses), [
        (response.status, response.body[:200]) for response in responses if response.status != 201
    ]
    ids = {response.json()['id'] for response in responses}
    assert len(ids) == len(responses)
    assert set(list_ids(server)) == ids
    assert image_files(server.storage_path) == ids
    assert temp_files(server.storage_path) == []


def test_sixteen_people_uploading_48_photos_at_once_are_all_stored(
    tmp_path: pathlib.Path,
) -> None:
    """16 clients, 3 photos of 1600x1200 each, all at once, to 2 workers: 48 x 201."""
    photos = [photo((1600, 1200), seed=seed) for seed in range(4)]
    with Gunicorn(tmp_path / 'storage', workers=2) as server:
        with concurrent.futures.ThreadPoolExecutor(16) as people:
            answers = [
                people.submit(timed_upload, server.url, photos[number % len(photos)])
                for number in range(48)
            ]
            responses = [answer.result()[0] for answer in answers]
        check_all_stored(server, responses)


@pytest.fixture(scope='module')
def three_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """Three workers (one image process each), as the scripts that met 503s ran against."""
    with Gunicorn(tmp_path_factory.mktemp('storage'), workers=3) as server:
        yield server


def test_forty_uploads_from_eight_threads_to_three_workers_are_all_stored(
    three_workers: Gunicorn,
) -> None:
    """A script uploading 256x192 JPEGs eight at a time."""
    before = set(list_ids(three_workers))
    photos = [photo((256, 192), seed=seed) for seed in range(40)]
    with concurrent.futures.ThreadPoolExecutor(8) as script:
        responses = [
            answer[0]
            for answer in script.map(lambda body: timed_upload(three_workers.url, body), photos)
        ]
    assert [response.status for response in responses] == [201] * 40
    ids = {response.json()['id'] for response in responses}
    assert set(list_ids(three_workers)) == before | ids
    assert temp_files(three_workers.storage_path) == []


def test_a_folder_uploaded_with_xargs_and_curl_eight_at_a_time_is_all_stored(
    three_workers: Gunicorn, tmp_path: pathlib.Path
) -> None:
    """``ls *.png | xargs -P 8 curl -F image=@...``: 26 photos of 40 KB to 800 KB, all 201."""
    rng = random.Random(26)
    for number in range(26):
        width = rng.randrange(160, 830)
        size = (width, width * 3 // 4)
        (tmp_path / f'photo-{number:02d}.png').write_bytes(photo(size, seed=number, fmt='PNG'))
    curl = shlex.quote(require_executable('curl'))
    command = (
        f'ls *.png | xargs -P 8 -I{{}} {curl} -s -o /dev/null -w "%{{http_code}}\\n" '
        f'-F image=@{{}} {three_workers.url}/images'
    )
    result = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['201'] * 26, result.stdout


def test_uploaders_and_readers_together_for_eight_seconds_meet_no_503(
    tmp_path: pathlib.Path,
) -> None:
    """8 clients upload photos without pause while 8 read thumbnails, images and the list.

    No cache: every thumbnail read is a render, in the same queue as the uploads.
    """
    with Gunicorn(tmp_path / 'storage', workers=2) as server:
        seeded = [timed_upload(server.url, photo((1600, 1200), seed=seed))[0] for seed in range(4)]
        assert all(response.status == 201 for response in seeded)
        descriptions = [response.json() for response in seeded]
        described = threading.Lock()
        photos = [photo((1600, 1200), seed=seed) for seed in range(4, 8)]
        stop = time.monotonic() + 8.0
        rng = random.Random(8)

        def uploader(number: int) -> list[int]:
            statuses = []
            while time.monotonic() < stop:
                response, _ = timed_upload(server.url, photos[number % len(photos)])
                statuses.append(response.status)
                if response.status == 201:
                    with described:
                        descriptions.append(response.json())
                number += 1
            return statuses

        def reader(number: int) -> list[int]:
            statuses = []
            while time.monotonic() < stop:
                with described:
                    image = rng.choice(descriptions)
                paths = [
                    *image['thumbnails'],
                    image['formats']['webp']['srcset'].split(',')[-1].split()[0],
                    image['image'],
                    '/images?limit=20&order=newest',
                ]
                statuses.append(get(server.url + paths[number % len(paths)]).status)
                number += 1
            return statuses

        with concurrent.futures.ThreadPoolExecutor(16) as clients:
            uploads = [clients.submit(uploader, number) for number in range(8)]
            reads = [clients.submit(reader, number) for number in range(8)]
            uploaded = [status for future in uploads for status in future.result()]
            read = [status for future in reads for status in future.result()]

    assert uploaded and set(uploaded) == {201}, sorted(set(uploaded))
    assert read and set(read) == {200}, sorted(set(read))
    print(f'mixed load: {len(uploaded)} uploads and {len(read)} reads in 8 s, all answered')


def rss_bytes(pid: int, field: str) -> int:
    """Return a memory figure of a process from /proc (VmRSS now, VmHWM its peak), in bytes."""
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(f'{field}:'):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def test_real_overload_is_refused_with_an_honest_retry_after_and_nothing_half_stored(
    tmp_path: pathlib.Path,
) -> None:
    """64 clients upload a 24-megapixel photo (6.9 MB) each at once, to 2 workers.

    Those that would wait longer than LOOK_MAX_QUEUE_SECONDS get a 503 whose
    Retry-After is no later than the queue in fact drained; /health answers
    within a second throughout; web workers do not hold bodies in memory;
    every 201 is listed and stored, and nothing else is.
    """
    photos = [photo((6000, 4000), seed=seed) for seed in range(2)]
    with Gunicorn(tmp_path / 'storage', workers=2) as server:
        workers = server.worker_pids()
        idle = {pid: rss_bytes(pid, 'VmRSS') for pid in workers}
        health: list[float] = []
        burst_over = threading.Event()

        def watch_health() -> None:
            while not burst_over.is_set():
                started = time.monotonic()
                response = get(f'{server.url}/health')
                health.append(time.monotonic() - started if response.status == 200 else 99.0)
                burst_over.wait(0.25)

        with concurrent.futures.ThreadPoolExecutor(65) as clients:
            watcher = clients.submit(watch_health)
            started = time.monotonic()
            answers = [
                clients.submit(timed_upload, server.url, photos[number % len(photos)])
                for number in range(64)
            ]
            results = [answer.result() for answer in answers]
            burst_over.set()
            watcher.result()
        peaks = {pid: rss_bytes(pid, 'VmHWM') for pid in workers}
        listed = set(list_ids(server))

    stored = [(response, at) for response, at in results if response.status == 201]
    refused = [(response, at) for response, at in results if response.status == 503]
    assert len(stored) + len(refused) == 64, sorted({r.status for r, _ in results})
    assert stored and refused, (len(stored), len(refused))
    drained = max(at for _, at in stored)
    retry_afters = []
    for response, at in refused:
        assert response.json()['title'] in ('Too many uploads', 'Image processes busy')
        retry_after = int(response.header('Retry-After') or 0)
        assert 1 <= retry_after <= drained - at + 3, (retry_after, drained - at)
        retry_afters.append(retry_after)
    assert max(health) < PROMPT, f'/health took {max(health):.2f}s'
    for pid in workers:
        assert peaks[pid] - idle[pid] < 64 * 1024 * 1024, (pid, idle[pid], peaks[pid])
    ids = {response.json()['id'] for response, _ in stored}
    assert listed == ids
    assert image_files(tmp_path / 'storage') == ids
    assert temp_files(tmp_path / 'storage') == []
    print(
        f'overload: {len(stored)} stored, {len(refused)} refused with Retry-After '
        f'{min(retry_afters)}-{max(retry_afters)} s; the queue drained '
        f'{drained - started:.1f} s after the burst; /health at most {max(health):.2f} s'
    )
