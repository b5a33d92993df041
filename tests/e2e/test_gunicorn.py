"""End to end: look under real gunicorn (two workers), spoken to over HTTP on 127.0.0.1.

These promises only hold for the real thing: workers that share one store and
one Redis, the command-line clients people paste from the README, the limits
as a socket sees them, and a stop that leaves no process behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import io
import json
import os
import pathlib
import re
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from support.gunicorn import MAX_UPLOAD_BYTES, Gunicorn, MakeGunicorn, upload
from support.http import Response, connect, get, multipart, post, request
from support.imagegen import (
    animated_gif,
    cmyk_jpeg,
    exif_jpeg,
    grey16_png,
    image_bytes,
    palette_png,
    picture,
    png_bomb,
    random_bytes,
    rgba_png,
    truncated,
)
from support.processes import free_port, live_processes, require_executable, wait_until
from support.redis import RedisServer
from support.storage import storage_state

pytestmark = pytest.mark.e2e


JPEG = image_bytes('JPEG')  # a seeded 640x360 photo


# -- helpers ------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    """Return the fully decoded image in ``data``."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def stored_path(server: Gunicorn, image_id: str) -> pathlib.Path:
    """Return where the server keeps the JPEG of ``image_id``."""
    return server.storage_path / 'images' / f'{image_id}.jpeg'


def thumbnail_size(path: str) -> tuple[int, int]:
    """Return the size a thumbnail path names."""
    match = re.search(r'/(\d+)x(\d+)\.jpeg$', path)
    assert match, path
    return int(match[1]), int(match[2])


def check_description(description: Any, size: tuple[int, int]) -> str:
    """Assert the JSON of an uploaded image and return its id."""
    assert set(description) >= {'id', 'image', 'modified', 'size', 'thumbnails', 'formats'}, (
        description
    )
    image_id = description['id']
    assert str(uuid.UUID(image_id)) == image_id
    assert description['image'] == f'/images/{image_id}.jpeg'
    assert description['size'] == list(size)
    modified = email.utils.parsedate_to_datetime(description['modified'])
    assert abs(datetime.now(UTC) - modified) < timedelta(minutes=5)
    assert isinstance(description['thumbnails'], list)
    for path in description['thumbnails']:
        assert path.startswith(f'/thumbnails/{image_id}/'), path
        width, height = thumbnail_size(path)
        assert width < size[0] and height < size[1], path
    return image_id


def check_created(server: Gunicorn, response: Response, size: tuple[int, int]) -> str:
    """Assert a 201 answer to an upload and what it stored; return the id."""
    assert response.status == 201, response.body
    assert response.header('Content-Type') == 'application/json'
    description = response.json()
    image_id = check_description(description, size)
    location = response.header('Location')
    assert location is not None
    assert urllib.parse.urljoin(server.url, location) == server.url + description['image']
    check_stored(server, image_id, size)
    return image_id


def check_stored(server: Gunicorn, image_id: str, size: tuple[int, int]) -> Image.Image:
    """Assert the stored file is an RGB JPEG of ``size``; return it decoded."""
    stored = decode(stored_path(server, image_id).read_bytes())
    assert (stored.format, stored.mode, stored.size) == ('JPEG', 'RGB', size)
    return stored


def check_error(response: Response, status: int) -> None:
    """Assert an error answer: its status and the one JSON shape."""
    assert response.status == status, response.body
    assert response.header('Content-Type') == 'application/json'
    error = response.json()
    assert set(error) == {'title', 'description'}, error
    assert all(isinstance(value, str) and value for value in error.values()), error


def parse_http_output(output: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split what ``curl -i`` or ``http --print=hb`` printed into status, headers and body."""
    rest = output
    while True:
        head, _, rest = rest.partition(b'\r\n\r\n')
        status_line, *header_lines = head.decode('latin-1').split('\r\n')
        status = int(status_line.split()[1])
        if status >= 200:  # past interim answers such as 100 Continue
            break
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(':')
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


# -- uploads --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Upload:
    """An image to upload, and the size its stored JPEG must have."""

    make: Callable[[], bytes]
    content_type: str
    size: tuple[int, int]


def _animated_picture_gif() -> bytes:
    frames = [picture((240, 160), seed=seed) for seed in (7, 8)]
    return image_bytes(
        'GIF', (240, 160), seed=6, save_all=True, append_images=frames, duration=80, loop=0
    )


UPLOADS = {
    'jpeg': Upload(lambda: image_bytes('JPEG', (640, 360)), 'image/jpeg', (640, 360)),
    'jpeg-grey': Upload(lambda: image_bytes('JPEG', (500, 400), 'L', 1), 'image/jpeg', (500, 400)),
    'jpeg-cmyk': Upload(lambda: cmyk_jpeg((480, 320)), 'image/jpeg', (480, 320)),
    'jpeg-exif-rotated': Upload(lambda: exif_jpeg((400, 300), 6), 'image/jpeg', (300, 400)),
    'png-rgb': Upload(lambda: image_bytes('PNG', (320, 240), seed=3), 'image/png', (320, 240)),
    'png-grey': Upload(lambda: image_bytes('PNG', (330, 250), 'L', 4), 'image/png', (330, 250)),
    'png-rgba': Upload(lambda: rgba_png((300, 200)), 'image/png', (300, 200)),
    'png-16-bit-grey': Upload(lambda: grey16_png(40000, (256, 192)), 'image/png', (256, 192)),
    'png-palette-transparency': Upload(lambda: palette_png((200, 150)), 'image/png', (200, 150)),
    'gif': Upload(lambda: image_bytes('GIF', (240, 160), seed=5), 'image/gif', (240, 160)),
    'gif-animated': Upload(_animated_picture_gif, 'image/gif', (240, 160)),
    'gif-animated-solid': Upload(lambda: animated_gif((128, 96)), 'image/gif', (128, 96)),
    'bmp': Upload(lambda: image_bytes('BMP', (200, 120), seed=6), 'image/bmp', (200, 120)),
    'tiff': Upload(lambda: image_bytes('TIFF', (210, 130), seed=7), 'image/tiff', (210, 130)),
    'webp': Upload(lambda: image_bytes('WEBP', (220, 140), seed=8), 'image/webp', (220, 140)),
}


@pytest.mark.parametrize('upload_case', UPLOADS.values(), ids=UPLOADS.keys())
def test_upload_every_format(gunicorn: Gunicorn, upload_case: Upload) -> None:
    """Every readable format is stored as an upright RGB JPEG of the right size."""
    response = post(f'{gunicorn.url}/images', upload_case.make(), upload_case.content_type)
    check_created(gunicorn, response, upload_case.size)


def test_listed_thumbnails_render_at_their_size(gunicorn: Gunicorn) -> None:
    """Each listed thumbnail is a JPEG of the size its path names; other sizes are 404."""
    created = upload(gunicorn, JPEG)
    assert created['thumbnails'], 'a 640x360 image has thumbnails'
    for path in created['thumbnails']:
        response = get(gunicorn.url + path)
        assert response.status == 200, response.body
        assert response.header('Content-Type') == 'image/jpeg'
        thumbnail = decode(response.body)
        assert (thumbnail.format, thumbnail.size) == ('JPEG', thumbnail_size(path))
    width, height = thumbnail_size(created['thumbnails'][0])
    unlisted = f'/thumbnails/{created["id"]}/{width + 1}x{height}.jpeg'
    check_error(get(gunicorn.url + unlisted), 404)


# -- command-line clients -------------------------------------------------------

CLIENTS = {
    'curl-raw': ['curl', '-sS', '-i', '--data-binary', '@{file}', '{url}'],
    'curl-form': ['curl', '-sS', '-i', '-F', 'image=@{file}', '{url}'],
    'httpie-raw': ['http', '--ignore-stdin', '--print=hb', 'POST', '{url}', '@{file}'],
    'httpie-form': ['http', '--ignore-stdin', '--print=hb', '-f', 'POST', '{url}', 'image@{file}'],
}


@pytest.fixture(scope='module')
def httpie_config(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An httpie config dir that turns off its update check (a network call and a daemon)."""
    directory = tmp_path_factory.mktemp('httpie')
    (directory / 'config.json').write_text('{"disable_update_warnings": true}')
    return directory


@pytest.mark.parametrize('argv', CLIENTS.values(), ids=CLIENTS.keys())
def test_upload_with_command_line_clients(
    gunicorn: Gunicorn, tmp_path: pathlib.Path, httpie_config: pathlib.Path, argv: list[str]
) -> None:
    """The commands from the README upload raw bodies and forms alike."""
    photo = tmp_path / 'photo.png'
    photo.write_bytes(image_bytes('PNG', (400, 260), seed=11))
    command = [require_executable(argv[0])]
    command += [part.format(file=photo, url=f'{gunicorn.url}/images') for part in argv[1:]]
    environ = {**os.environ, 'HTTPIE_CONFIG_DIR': str(httpie_config)}
    result = subprocess.run(
        command, capture_output=True, env=environ, stdin=subprocess.DEVNULL, timeout=60
    )
    stderr = result.stderr.decode(errors='replace')
    assert result.returncode == 0, f'{stderr}\n{gunicorn.log_tail()}'

    status, headers, body = parse_http_output(result.stdout)
    assert status == 201, result.stdout
    assert headers['content-type'] == 'application/json'
    description = json.loads(body)
    image_id = check_description(description, (400, 260))
    assert headers['location'].endswith(description['image'])
    check_stored(gunicorn, image_id, (400, 260))


# -- workers share one store ------------------------------------------------------


def test_every_upload_visible_from_every_worker(gunicorn: Gunicorn) -> None:
    """An upload taken by one worker is listed and served by all of them, byte for byte."""
    created = upload(gunicorn, image_bytes('PNG', (360, 240), seed=12))
    created.pop('delete_token')  # shown in the 201 only, never in a listing
    stored = stored_path(gunicorn, created['id']).read_bytes()
    workers = gunicorn.worker_pids()
    assert len(workers) == 2

    listed_by: set[int | None] = set()
    served_by: set[int | None] = set()
    for _ in gunicorn.until_every_worker(listed_by, served_by):
        # NOTE: the largest page, so the newest image is on it however many came first.
        listing, worker = gunicorn.request_worker('GET', '/images?limit=1000')
        assert listing.status == 200, listing.body
        assert created in listing.json(), f'worker {worker} does not list the upload'
        listed_by.add(worker)

        download, worker = gunicorn.request_worker('GET', created['image'])
        assert download.status == 200, download.body
        assert download.header('Content-Type') == 'image/jpeg'
        assert download.header('Content-Length') == str(len(stored))
        assert download.body == stored, f'worker {worker} sent other bytes'
        served_by.add(worker)
    assert workers <= listed_by, f'only {listed_by} of {workers} answered a listing'
    assert workers <= served_by, f'only {served_by} of {workers} answered a download'


@pytest.mark.redis
def test_thumbnails_cached_across_workers(
    make_gunicorn: MakeGunicorn, redis_server: RedisServer
) -> None:
    """One worker renders a thumbnail; every worker then answers it from Redis."""
    server = make_gunicorn(redis_url=redis_server.url)
    created = upload(server, JPEG)
    path = created['thumbnails'][0]

    first, first_worker = server.request_worker('GET', path)
    assert first.status == 200, first.body
    assert first.header('X-Look-Cache') == 'Miss'
    assert decode(first.body).size == thumbnail_size(path)

    answered_by = {first_worker}
    workers = server.worker_pids()
    for _ in server.until_every_worker(answered_by):
        response, worker = server.request_worker('GET', path)
        assert response.status == 200, response.body
        assert response.header('X-Look-Cache') == 'Hit', f'worker {worker} missed'
        assert response.header('Content-Type') == 'image/jpeg'
        assert response.body == first.body
        answered_by.add(worker)
    assert workers <= answered_by, f'only {answered_by} of {workers} answered'


@pytest.mark.redis
def test_delete_reaches_every_worker_and_the_cache(
    make_gunicorn: MakeGunicorn, redis_server: RedisServer
) -> None:
    """After a DELETE no worker serves the image or a cached thumbnail of it."""
    server = make_gunicorn(redis_url=redis_server.url)
    created = upload(server, JPEG)
    thumbnail = created['thumbnails'][0]
    for expected in ('Miss', 'Hit'):
        response = get(server.url + thumbnail)
        assert (response.status, response.header('X-Look-Cache')) == (200, expected)

    deleted = request('DELETE', server.url + created['image'])
    assert deleted.status == 204, deleted.body

    workers = server.worker_pids()
    answered_by: set[int | None] = set()
    for _ in server.until_every_worker(answered_by):
        response, worker = server.request_worker('GET', thumbnail)
        assert response.status == 404, f'worker {worker}: {response.header("X-Look-Cache")}'
        check_error(response, 404)
        response, _ = server.request_worker('GET', created['image'])
        check_error(response, 404)
        listing, _ = server.request_worker('GET', '/images')
        assert created['id'] not in [image['id'] for image in listing.json()]
        answered_by.add(worker)
    assert workers <= answered_by, f'only {answered_by} of {workers} answered'
    assert not stored_path(server, created['id']).exists()


def test_redis_down_under_gunicorn(make_gunicorn: MakeGunicorn) -> None:
    """With no Redis behind LOOK_REDIS_URL, uploads and thumbnails work, uncached and quick."""
    missing = f'unix:///tmp/look-no-redis-{uuid.uuid4().hex}/redis.sock'
    server = make_gunicorn(redis_url=missing)
    created = upload(server, JPEG)
    for path in created['thumbnails'] * 2:
        started = time.monotonic()
        response = get(server.url + path)
        elapsed = time.monotonic() - started
        assert response.status == 200, response.body
        assert response.header('X-Look-Cache') == 'Miss'
        assert decode(response.body).size == thumbnail_size(path)
        # A bound on "never hangs on a dead cache", not a performance target.
        assert elapsed < 2.0, f'{path} took {elapsed:.2f}s'

    health = get(f'{server.url}/health')
    assert health.status == 200, health.body
    assert health.json()['cache']['status'] == 'unavailable'


# -- bad input --------------------------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    while total > 0:
        yield b'\xff' * min(size, total)
        total -= size


def _form_with_file(size: int) -> tuple[bytes, str]:
    return multipart('image', 'big.jpg', b'\xff' * size, 'image/jpeg', 'look-boundary')


def _form_without_file() -> bytes:
    return (
        b'--look-boundary\r\n'
        b'Content-Disposition: form-data; name="comment"\r\n\r\n'
        b'no file here\r\n'
        b'--look-boundary--\r\n'
    )


@dataclasses.dataclass(frozen=True)
class BadRequest:
    """A request look must refuse, and the status it must refuse it with."""

    method: str
    path: str
    status: int
    body: Callable[[], bytes | Iterable[bytes] | None] = lambda: None
    content_type: str | None = None
    chunked: bool = False


FORM = 'multipart/form-data; boundary=look-boundary'
BAD_REQUESTS = {
    'empty-body': BadRequest('POST', '/images', 400, lambda: b'', 'image/jpeg'),
    'form-without-file': BadRequest('POST', '/images', 400, _form_without_file, FORM),
    'truncated-jpeg': BadRequest(
        'POST', '/images', 400, lambda: truncated(image_bytes('JPEG')), 'image/jpeg'
    ),
    'random-bytes': BadRequest(
        'POST', '/images', 415, lambda: random_bytes(4096, 7), 'image/jpeg'
    ),
    'text': BadRequest('POST', '/images', 415, lambda: b'not an image\n' * 100, 'text/plain'),
    'too-large-content-length': BadRequest(
        'POST', '/images', 413, lambda: b'\xff' * (MAX_UPLOAD_BYTES + 1), 'image/jpeg'
    ),
    'too-large-chunked': BadRequest(
        'POST', '/images', 413, lambda: _chunks(2 * MAX_UPLOAD_BYTES), 'image/jpeg', chunked=True
    ),
    'too-large-form': BadRequest(
        'POST', '/images', 413, lambda: _form_with_file(MAX_UPLOAD_BYTES + 1)[0], FORM
    ),
    'decompression-bomb': BadRequest(
        'POST', '/images', 413, lambda: png_bomb(30000, 30000), 'image/png'
    ),
    'unknown-id': BadRequest('GET', '/images/{unknown}.jpeg', 404),
    'unknown-id-thumbnail': BadRequest('GET', '/thumbnails/{unknown}/320x180.jpeg', 404),
    'malformed-id': BadRequest('GET', '/images/not-an-id.jpeg', 404),
    'malformed-id-thumbnail': BadRequest('GET', '/thumbnails/1234/320x180.jpeg', 404),
    'traversal-encoded': BadRequest('GET', '/images/..%2f..%2fetc%2fpasswd', 404),
    'traversal-index': BadRequest('GET', '/images/../index.jsonl', 404),
    'traversal-dots-encoded': BadRequest('GET', '/images/%2e%2e/index.jsonl', 404),
    'traversal-thumbnail': BadRequest('GET', '/thumbnails/{id}/..%2f..%2findex.jsonl', 404),
    'patch-image-not-json': BadRequest(
        'PATCH', '/images/{id}.jpeg', 415, lambda: b'{}', 'text/plain'
    ),
    'patch-image-not-alt': BadRequest(
        'PATCH', '/images/{id}.jpeg', 400, lambda: b'{"size": [1, 1]}', 'application/json'
    ),
    'patch-thumbnail': BadRequest(
        'PATCH', '/thumbnails/{id}/320x180.jpeg', 405, lambda: b'{}', 'application/json'
    ),
    'delete-thumbnail': BadRequest('DELETE', '/thumbnails/{id}/320x180.jpeg', 405),
    'delete-list': BadRequest('DELETE', '/images', 405),
    'put-images': BadRequest('PUT', '/images', 405, lambda: image_bytes('JPEG'), 'image/jpeg'),
    'post-thumbnail': BadRequest('POST', '/thumbnails/{id}/320x180.jpeg', 405),
}


@pytest.fixture(scope='module')
def existing_image(gunicorn: Gunicorn) -> dict[str, Any]:
    """An image the bad requests can aim at."""
    return upload(gunicorn, JPEG)


@pytest.mark.parametrize('bad', BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_refused_and_nothing_left(
    gunicorn: Gunicorn, existing_image: dict[str, Any], bad: BadRequest
) -> None:
    """Bad input gets its status and the JSON error shape, and leaves no trace on disk."""
    before = storage_state(gunicorn.storage_path)
    path = bad.path.format(id=existing_image['id'], unknown=uuid.uuid4())
    headers = {'Content-Type': bad.content_type} if bad.content_type else {}
    response = request(bad.method, gunicorn.url + path, bad.body(), headers, chunked=bad.chunked)

    check_error(response, bad.status)
    if bad.status == 405:
        allowed = response.header('Allow') or ''
        assert allowed and bad.method not in allowed, allowed
    names, index = storage_state(gunicorn.storage_path)
    assert not [name for name in names if name.startswith('.')], 'a temp file was left'
    assert (names, index) == before


@pytest.mark.parametrize('form', [False, True], ids=['raw', 'form'])
def test_chunked_upload_accepted(gunicorn: Gunicorn, form: bool) -> None:
    """An upload sent with Transfer-Encoding: chunked (no Content-Length) is stored."""
    data = image_bytes('JPEG', (330, 220), seed=13)
    content_type = 'image/jpeg'
    if form:
        data, content_type = multipart('image', 'photo.jpg', data, content_type)
    chunks = [data[start : start + 4096] for start in range(0, len(data), 4096)]
    response = request(
        'POST',
        f'{gunicorn.url}/images',
        iter(chunks),
        {'Content-Type': content_type},
        chunked=True,
    )
    check_created(gunicorn, response, (330, 220))


# -- the server itself --------------------------------------------------------------


def test_restart_keeps_images(make_gunicorn: MakeGunicorn) -> None:
    """A new gunicorn on the same storage lists and serves what the old one took."""
    server = make_gunicorn(workers=1)
    created = [upload(server, image_bytes(fmt, seed=n)) for n, fmt in enumerate(('PNG', 'JPEG'))]
    for image in created:
        image.pop('delete_token')  # shown in the 201 only, never in a listing
    originals = [get(server.url + image['image']).body for image in created]
    old_master = server.pid

    server.restart()

    assert server.pid != old_master
    listing = get(f'{server.url}/images')
    assert listing.status == 200
    assert listing.json() == created
    for image, original in zip(created, originals, strict=True):
        download = get(server.url + image['image'])
        assert download.status == 200
        assert download.body == original
        thumbnail = get(server.url + image['thumbnails'][0])
        assert thumbnail.status == 200
        assert decode(thumbnail.body).size == thumbnail_size(image['thumbnails'][0])


def test_gunicorn_cmd_args_overrides_bind(make_gunicorn: MakeGunicorn) -> None:
    """GUNICORN_CMD_ARGS='--bind ...' wins over the bind in gunicorn.conf.py."""
    config_port = free_port()
    server = make_gunicorn(
        workers=1, bind_from_env=True, environ={'LOOK_BIND': f'127.0.0.1:{config_port}'}
    )
    argv, environ = server.command()
    assert '--bind' not in argv
    assert environ['GUNICORN_CMD_ARGS'] == f'--bind 127.0.0.1:{server.port}'

    assert get(f'{server.url}/images').status == 200
    with pytest.raises(ConnectionRefusedError):
        get(f'http://127.0.0.1:{config_port}/images')


def test_graceful_stop_leaves_no_process(make_gunicorn: MakeGunicorn) -> None:
    """SIGTERM stops the master, the workers, their pool processes and helpers."""
    server = make_gunicorn(workers=2)
    workers = server.worker_pids()
    uploaded_by: set[int | None] = set()
    for seed in server.until_every_worker(uploaded_by):
        data = image_bytes('JPEG', (200, 150), seed=seed)
        response, worker = server.request_worker(
            'POST', '/images', data, {'Content-Type': 'image/jpeg'}
        )
        assert response.status == 201, response.body
        uploaded_by.add(worker)
    processes = server.processes()
    pools = {p.ppid for p in processes if p.is_image_process}
    assert pools == workers, f'every worker should run a pool process: {processes}'

    server.stop()

    assert server.process is not None and server.process.returncode == 0
    pids = {process.pid for process in processes}
    assert not [p for p in live_processes() if p.pid in pids], 'a process outlived gunicorn'


def test_graceful_stop_finishes_an_upload_in_flight(make_gunicorn: MakeGunicorn) -> None:
    """SIGTERM lets an upload that is half sent finish and be stored before the workers go."""
    server = make_gunicorn(workers=1)
    data = image_bytes('PNG', (300, 200), seed=14)
    half = len(data) // 2
    connection = connect(server.url)
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        try:
            connection.putrequest('POST', '/images')
            connection.putheader('Content-Type', 'image/png')
            connection.putheader('Content-Length', str(len(data)))
            connection.endheaders(data[:half])
            # NOTE: give the worker time to take the request before the SIGTERM.
            time.sleep(0.3)
            stopping = background.submit(server.stop)
            assert wait_until(lambda: 'Handling signal: term' in server.log(), 5.0), server.log()
            connection.send(data[half:])
            response = connection.getresponse()
            body = response.read()
        finally:
            # NOTE: closed before waiting for the stop: gunicorn lingers up to
            #   2 s for the client to close a connection it is shutting down.
            connection.close()
        stopping.result()

    assert response.status == 201, body
    image_id = json.loads(body)['id']
    check_stored(server, image_id, (300, 200))
    index = (server.storage_path / 'index.jsonl').read_text()
    assert image_id in index


def test_pools_started_before_first_request(make_gunicorn: MakeGunicorn) -> None:
    """post_worker_init starts each worker's pool, so no request waits for a spawn."""
    server = make_gunicorn(workers=2)
    workers = server.worker_pids()

    def pool_owners() -> set[int]:
        return {p.ppid for p in server.processes() if p.is_image_process}

    started = wait_until(lambda: workers <= pool_owners(), 3.0)
    assert started, f'of workers {workers}, only {pool_owners()} run a pool before any request'


CORES = os.cpu_count() or 1


@pytest.mark.parametrize(
    ('workers', 'environ', 'expected'),
    [
        (2, {'WEB_CONCURRENCY': '2'}, max(1, CORES // 2)),
        (1, {}, CORES),  # --workers 1, with gunicorn.conf.py's own count at one per core
        (2, {'WEB_CONCURRENCY': '2', 'GUNICORN_CMD_ARGS': '-e LOOK_OTHER=1'}, max(1, CORES // 2)),
        (2, {'WEB_CONCURRENCY': '2', 'GUNICORN_CMD_ARGS': '--preload'}, max(1, CORES // 2)),
        (1, {'GUNICORN_CMD_ARGS': '--preload'}, CORES),  # the app is made before the fork
        (1, {'LOOK_PROCESSES': '3'}, 3),
    ],
    ids=[
        'two-workers',
        'workers-flag',
        'env-flag',
        'preload',
        'preload-workers-flag',
        'LOOK_PROCESSES-wins',
    ],
)
def test_pools_share_the_cores(
    make_gunicorn: MakeGunicorn, workers: int, environ: dict[str, str], expected: int
) -> None:
    """gunicorn.conf.py gives each worker's pool its share of the cores, unless told otherwise."""
    server = make_gunicorn(workers=workers, environ={'LOOK_PROCESSES': None, **environ})

    def pool_sizes() -> dict[int, int]:
        sizes = dict.fromkeys(server.worker_pids(), 0)
        for process in server.processes():
            if process.is_image_process and process.ppid in sizes:
                sizes[process.ppid] += 1
        return sizes

    every_pool_full = wait_until(lambda: set(pool_sizes().values()) == {expected}, 10.0)
    assert every_pool_full, f'pool processes per worker: {pool_sizes()}, not {expected} each'
    health = get(f'{server.url}/health').json()
    assert health['thumbnailer']['processes'] == expected


def test_each_log_line_written_once(gunicorn: Gunicorn) -> None:
    """gunicorn's own messages appear once in its output, not once per handler."""
    log = gunicorn.log()
    for pid in gunicorn.worker_pids():
        line = f'Booting worker with pid: {pid}'
        assert log.count(line) == 1, f'{line!r} appears {log.count(line)} times:\n{log[:2000]}'


def test_log_says_where_images_go_and_has_no_access_lines(gunicorn: Gunicorn) -> None:
    """look's messages reach gunicorn's log; requests are not logged unless asked for."""
    assert get(f'{gunicorn.url}/images').status == 200

    log = gunicorn.log()
    line = f'[INFO] storing images in {gunicorn.storage_path.resolve()}'
    assert log.count(line) == gunicorn.workers, log[:2000]
    assert 'GET /images' not in log


def test_preloaded_app_logs_once_and_serves(make_gunicorn: MakeGunicorn) -> None:
    """With --preload the master makes the app before forking: its messages are kept too."""
    server = make_gunicorn(workers=2, environ={'GUNICORN_CMD_ARGS': '--preload'})

    description = upload(server, JPEG)
    assert get(f'{server.url}{description["thumbnails"][0]}').status == 200

    line = f'[INFO] storing images in {server.storage_path.resolve()}'
    assert server.log().count(line) == 1, server.log_tail()


def test_access_log_on_request(make_gunicorn: MakeGunicorn) -> None:
    """gunicorn's own --access-logfile flag turns the access log on."""
    server = make_gunicorn(workers=1, environ={'GUNICORN_CMD_ARGS': '--access-logfile -'})

    assert get(f'{server.url}/images?limit=1').status == 200

    assert wait_until(lambda: '"GET /images?limit=1 HTTP/1.1" 200' in server.log(), 5.0), (
        server.log_tail()
    )
