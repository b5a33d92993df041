"""Hostile input over real HTTP: bombs, lies, garbage, slow clients, paths that climb out.

A public upload endpoint gets all of these sooner or later. Each must get its
4xx quickly, leave nothing on disk, never read a file outside the storage, and
leave the worker serving everyone else. The fuzz test at the end throws mutated
images at the app in-process, where a hundred uploads take a second or two.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import io
import json
import os
import pathlib
import random
import select
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from look.config import Config
from look.core.index.journal import decode_line

from support import imagegen
from support.gunicorn import Gunicorn
from support.http import Response, get, multipart, request
from support.imagegen import image_bytes
from support.storage import image_files, indexed_ids, storage_state, temp_files

MakeConfig = Callable[..., Config]
MakeClient = Callable[..., falcon.testing.TestClient]

MiB = 1024 * 1024
UPLOAD_TIMEOUT = 2.0
MAX_UPLOAD_BYTES = 32 * MiB  # look's default, so a 30 MiB upload is allowed
# A bound on "answered at once", far above a normal answer (a few milliseconds).
PROMPT = 5.0
CANARY = b'look-test canary: this file must never be served\n'


# -- the server and its surroundings ---------------------------------------------------


@dataclasses.dataclass
class Site:
    """A one-worker gunicorn, an image it stores, and canary files around its storage."""

    server: Gunicorn
    image: dict[str, Any]
    beside: str  # the id in the name of a canary next to the storage directory
    inside: str  # the id in the name of a canary in the storage root, beside images/
    canaries: list[pathlib.Path]

    @property
    def storage(self) -> pathlib.Path:
        """The storage directory."""
        return self.server.storage_path


@pytest.fixture(scope='module')
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One worker with LOOK_UPLOAD_TIMEOUT=2, canaries planted where a traversal would land."""
    root = tmp_path_factory.mktemp('hostile')
    storage = root / 'storage'
    storage.mkdir()
    beside, inside = str(uuid.uuid4()), str(uuid.uuid4())
    canaries = [root / f'{beside}.jpeg', root / 'secret.txt', storage / f'{inside}.jpeg']
    for canary in canaries:
        canary.write_bytes(CANARY)
    environ = {
        'LOOK_UPLOAD_TIMEOUT': str(UPLOAD_TIMEOUT),
        'LOOK_MAX_UPLOAD_BYTES': str(MAX_UPLOAD_BYTES),
    }
    with Gunicorn(storage, workers=1, environ=environ) as server:
        created = request('POST', f'{server.url}/images', image_bytes('JPEG', (640, 360)))
        assert created.status == 201, created.body
        yield Site(server, created.json(), beside, inside, canaries)
    for canary in canaries:
        assert canary.read_bytes() == CANARY, f'{canary} was changed'


def check_error(response: Response, status: int) -> None:
    """Assert an error answer with the one JSON shape."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.header('Content-Type') == 'application/json', response.headers
    error = response.json()
    assert set(error) == {'title', 'description'}, error


def raw_request(port: int, head: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``head`` (a request with no body) as written; return the status and the body.

    No client library in between: targets such as ``/images/..%2f`` or a NUL go as they are.
    """
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b''
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b'\r\n')
    _, _, body = rest.partition(b'\r\n\r\n')
    return int(status_line.split()[1]), body


# -- decompression bombs ---------------------------------------------------------------


def gif_frame_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """Return a GIF whose screen is 8x8 but whose first frame claims ``width`` x ``height``."""
    data = bytearray(image_bytes('GIF', size=(8, 8)))
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the global palette
    while data[at] == 0x21:  # extension blocks: label, then sub-blocks up to an empty one
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    assert data[at] == 0x2C, 'no image descriptor'
    data[at + 5 : at + 9] = struct.pack('<HH', width, height)
    return bytes(data)


def progressive_jpeg_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """Return a tiny progressive JPEG whose start-of-frame claims ``width`` x ``height``."""
    data = bytearray(image_bytes('JPEG', size=(8, 8), progressive=True))
    sof = data.index(b'\xff\xc2')
    data[sof + 5 : sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)


def tiff_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """Return a tiny deflated TIFF whose ImageWidth and ImageLength claim a huge size."""
    data = bytearray(image_bytes('TIFF', size=(8, 8), compression='tiff_deflate'))
    order = '<' if data[:2] == b'II' else '>'
    (ifd,) = struct.unpack_from(order + 'I', data, 4)
    (count,) = struct.unpack_from(order + 'H', data, ifd)
    patched = 0
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, _type, _count = struct.unpack_from(order + 'HHI', data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: rewritten as LONG
            struct.pack_into(order + 'H', data, entry + 2, 4)
            struct.pack_into(order + 'I', data, entry + 8, width if tag == 256 else height)
            patched += 1
    assert patched == 2
    return bytes(data)


def webp_bomb(width: int = 16_384, height: int = 16_384) -> bytes:
    """Return a tiny lossless WebP whose VP8L header claims ``width`` x ``height`` (<= 16384)."""
    data = bytearray(image_bytes('WEBP', size=(8, 8), lossless=True))
    assert data[12:16] == b'VP8L' and data[20] == 0x2F
    # After the signature byte: 14 bits of width - 1, 14 bits of height - 1, alpha, version.
    (bits,) = struct.unpack_from('<I', data, 21)
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    struct.pack_into('<I', data, 21, bits)
    return bytes(data)


def webp_canvas_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """Return an extended (VP8X) WebP: an 8x8 picture on a canvas of ``width`` x ``height``."""
    picture = image_bytes('WEBP', size=(8, 8), lossless=True)[12:]
    canvas = (width - 1).to_bytes(3, 'little') + (height - 1).to_bytes(3, 'little')
    body = b'WEBP' + b'VP8X' + struct.pack('<I', 10) + bytes(4) + canvas + picture
    return b'RIFF' + struct.pack('<I', len(body)) + body


# Over 2x LOOK_MAX_PIXELS, Pillow refuses in open(); just over it, look's own check must.
JUST_OVER = (8193, 8192)
BOMBS = {
    'png': imagegen.png_bomb,
    'png-just-over': lambda: imagegen.png_bomb(*JUST_OVER),
    'gif-screen': imagegen.gif_bomb,
    'gif-frame': gif_frame_bomb,
    'gif-just-over': lambda: imagegen.gif_bomb(*JUST_OVER),
    'jpeg': imagegen.jpeg_bomb,
    'jpeg-progressive': progressive_jpeg_bomb,
    'jpeg-just-over': lambda: imagegen.jpeg_bomb(*JUST_OVER),
    'tiff': tiff_bomb,
    'tiff-just-over': lambda: tiff_bomb(*JUST_OVER),
    'webp': webp_bomb,
    'webp-canvas': webp_canvas_bomb,
    'webp-just-over': lambda: webp_bomb(*JUST_OVER),
    'heic': imagegen.isobmff_bomb,
    'heic-just-over': lambda: imagegen.isobmff_bomb('HEIF', *JUST_OVER),
    'avif': lambda: imagegen.isobmff_bomb('AVIF'),
    'avif-just-over': lambda: imagegen.isobmff_bomb('AVIF', *JUST_OVER),
    'jxl': imagegen.jxl_bomb,
    'jxl-just-over': lambda: imagegen.jxl_bomb(*JUST_OVER),
}


@pytest.mark.e2e
@pytest.mark.parametrize('make_bomb', BOMBS.values(), ids=BOMBS.keys())
def test_decompression_bomb_is_413_at_once_and_leaves_nothing(
    site: Site, make_bomb: Callable[[], bytes]
) -> None:
    """A few hundred bytes that claim billions of pixels are refused before decoding."""
    bomb = make_bomb()
    assert len(bomb) < 2000
    before = storage_state(site.storage)

    started = time.monotonic()
    response = request('POST', f'{site.server.url}/images', bomb)
    elapsed = time.monotonic() - started

    check_error(response, 413)
    assert elapsed < PROMPT, f'the bomb took {elapsed:.1f}s to refuse: it was decoded'
    assert storage_state(site.storage) == before


# -- images that cost far more than their bytes ----------------------------------------


def post_when_not_busy(url: str, body: bytes) -> tuple[Response, float]:
    """POST ``body`` to ``url``, again after Retry-After while the worker is busy.

    Return the last answer and how long it took from the first send.
    """
    started = time.monotonic()
    while True:
        response = request('POST', url, body, timeout=30)
        if response.status != 503 or response.json()['title'] != 'Image processes busy':
            return response, time.monotonic() - started
        time.sleep(int(response.header('Retry-After') or 1))


def check_stored_only(site: Site, before: tuple[list[str], bytes], ids: set[str]) -> None:
    """Assert that the storage holds what it held ``before`` and the images ``ids``, no more."""
    names, index = storage_state(site.storage)
    assert set(names) == set(before[0]) | {f'{image_id}.jpeg' for image_id in ids}
    assert index.startswith(before[1])
    added = [decode_line(line) for line in index[len(before[1]) :].splitlines()]
    assert {line['id'] for line in added if line['op'] == 'add'} == ids
    assert len(added) == len(ids)


@pytest.mark.e2e
def test_progressive_jpegs_of_600_empty_scans_are_refused_and_uploads_go_on(site: Site) -> None:
    """Two 10000x10000 JPEGs of 600 scans each among six photos: the photos are stored at once.

    Decoded, each would hold the worker's only image process for ~40 s: past the
    20 s limit, so the uploads queued behind it were cancelled with 503s too.
    """
    bomb = imagegen.progressive_scan_bomb((10_000, 10_000), 600)
    photos = [image_bytes('JPEG', (1280, 720), seed=seed) for seed in range(6)]
    before = storage_state(site.storage)

    with concurrent.futures.ThreadPoolExecutor(8) as clients:
        url = f'{site.server.url}/images'
        bombs = [clients.submit(post_when_not_busy, url, bomb) for _ in range(2)]
        stored = [clients.submit(post_when_not_busy, url, photo) for photo in photos]
        refusals = [future.result() for future in bombs]
        answers = [future.result() for future in stored]

    for response, elapsed in refusals:
        check_error(response, 422)
        assert 'scans' in response.json()['description']
        assert elapsed < PROMPT, f'the bomb took {elapsed:.1f}s to refuse: it was decoded'
    for response, elapsed in answers:
        assert response.status == 201, response.body
        assert elapsed < PROMPT, f'a photo took {elapsed:.1f}s behind the bombs'
    check_stored_only(site, before, {response.json()['id'] for response, _ in answers})


def post_until_stored(url: str, bodies: list[bytes]) -> list[tuple[Response, float]]:
    """POST each body in turn; stop after the first that is stored or is slow to answer."""
    answers = []
    for body in bodies:
        response, elapsed = post_when_not_busy(url, body)
        answers.append((response, elapsed))
        if response.status == 201 or elapsed >= PROMPT:
            break
    return answers


@pytest.mark.e2e
def test_a_burst_of_38_byte_lossless_webps_is_refused_at_once(site: Site) -> None:
    """48 blank WebPs of 8192x8192 and 10000x10000, 38 bytes each: each costs nothing.

    Decoded, each would take 1-5 s and gigabytes: 48 of them kept two cores busy for 50 s.
    """
    blanks = [imagegen.blank_lossless_webp((8192, 8192)), imagegen.blank_lossless_webp()]
    assert {len(blank) for blank in blanks} == {38}
    before = storage_state(site.storage)
    url = f'{site.server.url}/images'

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        bursts = [clients.submit(post_until_stored, url, blanks * 6) for _ in range(4)]
        answers = [answer for burst in bursts for answer in burst.result()]
    elapsed = time.monotonic() - started

    assert len(answers) == 48, [response.status for response, _ in answers]
    for response, _ in answers:
        check_error(response, 413)
    assert elapsed < PROMPT, f'48 refusals took {elapsed:.1f}s'
    assert storage_state(site.storage) == before
    photo, took = post_when_not_busy(url, image_bytes('JPEG', (1280, 720), seed=7))
    assert photo.status == 201 and took < PROMPT, (photo.status, took)
    check_stored_only(site, before, {photo.json()['id']})


@pytest.mark.e2e
def test_a_6_kb_webp_that_would_be_stored_as_a_54_mb_jpeg_is_refused(site: Site) -> None:
    """8000x8000 of one 16-pixel square of noise repeated: lossless WebP copies it, JPEG cannot."""
    webp = imagegen.encode(imagegen.tiled_noise((8000, 8000)), 'WEBP', lossless=True, method=0)
    assert len(webp) < 6500
    before = storage_state(site.storage)

    response, elapsed = post_when_not_busy(f'{site.server.url}/images', webp)

    check_error(response, 413)
    assert 'pixels per byte' in response.json()['description']
    assert elapsed < PROMPT, f'refused after {elapsed:.1f}s: it was decoded'
    assert storage_state(site.storage) == before


# -- bodies over the limit -------------------------------------------------------------


@pytest.mark.e2e
def test_declared_body_over_the_limit_is_refused_before_it_is_sent(site: Site) -> None:
    """Content-Length over the limit gets a 413 with no body sent: look never waits for it.

    Had it waited, the upload deadline would have answered 408 instead.
    """
    head = (
        b'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n'
        b'Content-Length: %d\r\nConnection: close\r\n\r\n' % (MAX_UPLOAD_BYTES + 1)
    )
    before = storage_state(site.storage)

    started = time.monotonic()
    status, body = raw_request(site.server.port, head, timeout=UPLOAD_TIMEOUT * 3)
    elapsed = time.monotonic() - started

    assert status == 413, body
    assert set(json.loads(body)) == {'title', 'description'}
    assert elapsed < UPLOAD_TIMEOUT, f'answered after {elapsed:.1f}s: it waited for the body'
    assert storage_state(site.storage) == before


@pytest.mark.e2e
@pytest.mark.parametrize('form', [False, True], ids=['raw', 'form'])
def test_chunked_body_over_the_limit_is_refused_while_it_streams(site: Site, form: bool) -> None:
    """A chunked body without end gets a 413 soon after passing the limit; nothing is kept."""
    content_type = b'multipart/form-data; boundary=look' if form else b'image/jpeg'
    opening = (
        b'--look\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        if form
        else b''
    )
    piece = b'\xff' * (64 * 1024)
    frame = b'%x\r\n%s\r\n' % (len(piece), piece)
    before = storage_state(site.storage)

    sent = 0
    with socket.create_connection(('127.0.0.1', site.server.port), timeout=30) as sock:
        sock.sendall(
            b'POST /images HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n'
            b'Content-Type: %s\r\n\r\n' % content_type
        )
        if opening:
            sock.sendall(b'%x\r\n%s\r\n' % (len(opening), opening))
        # NOTE: stop sending as soon as the answer is there (or the server stops reading).
        while sent < 4 * MAX_UPLOAD_BYTES and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except OSError:
                break
            sent += len(piece)
        answer = b''
        while b'\r\n\r\n' not in answer or not answer.rstrip().endswith(b'}'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk

    assert answer.startswith(b'HTTP/1.1 413 '), answer[:300]
    assert sent < 2 * MAX_UPLOAD_BYTES, f'{sent / MiB:.0f} MiB were read before the 413'
    assert storage_state(site.storage) == before


# -- broken files and files that are no image at all -----------------------------------


def garbled(data: bytes, start: int, length: int = 64, seed: int = 0) -> bytes:
    """Return ``data`` with ``length`` bytes from ``start`` replaced by seeded noise."""
    mutable = bytearray(data)
    mutable[start : start + length] = random.Random(seed).randbytes(length)
    return bytes(mutable)


def jpeg_segment(data: bytes, marker: bytes) -> int:
    """Return where the payload of the first ``marker`` segment starts (past its length)."""
    return data.index(marker) + 4


def png_idat_garbled() -> bytes:
    """A PNG whose zlib stream is garbled: the header reads, the pixels do not."""
    data = image_bytes('PNG', (320, 200), seed=1)
    return garbled(data, data.index(b'IDAT') + 4 + 10, 50)


def bmp_with(offset: int, value: bytes) -> bytes:
    """A BMP with bytes at ``offset`` overwritten (a header field)."""
    data = bytearray(image_bytes('BMP', (320, 200), seed=1))
    data[offset : offset + len(value)] = value
    return bytes(data)


JPEG = image_bytes('JPEG', (320, 200), seed=1)
BAD_UPLOADS: dict[str, tuple[Callable[[], bytes], int]] = {
    # Cut off mid-way: a partial download, an interrupted copy.
    **{
        f'truncated-{fmt.lower()}': (
            lambda fmt=fmt: imagegen.truncated(image_bytes(fmt, (320, 200), seed=1)),
            400,
        )
        for fmt in ('JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WEBP')
    },
    # The header reads as the format says; what follows is broken beyond decoding.
    'corrupt-jpeg-huffman-table': (
        lambda: (
            JPEG[: jpeg_segment(JPEG, b'\xff\xc4') + 1]
            + bytes(16)
            + JPEG[jpeg_segment(JPEG, b'\xff\xc4') + 17 :]
        ),
        400,
    ),
    'corrupt-jpeg-scan-header': (
        lambda: garbled(JPEG, jpeg_segment(JPEG, b'\xff\xda') + 1, 2, seed=3),
        400,
    ),
    'corrupt-png-pixel-data': (png_idat_garbled, 400),
    'corrupt-gif-pixel-data': (
        lambda: garbled(image_bytes('GIF', (320, 200), seed=1), 2000),
        400,
    ),
    'corrupt-bmp-pixel-offset': (lambda: bmp_with(10, struct.pack('<I', 10**6)), 400),
    'corrupt-bmp-pixel-depth': (lambda: bmp_with(28, struct.pack('<H', 7)), 400),
    'corrupt-tiff-lzw-data': (
        lambda: garbled(image_bytes('TIFF', (320, 200), seed=1, compression='tiff_lzw'), 20000),
        400,
    ),
    'corrupt-tiff-deflate-data': (
        lambda: garbled(
            image_bytes('TIFF', (320, 200), seed=1, compression='tiff_deflate'), 20000
        ),
        400,
    ),
    'corrupt-webp-lossless-data': (
        lambda: garbled(image_bytes('WEBP', (320, 200), seed=1, lossless=True), 200),
        400,
    ),
    # Not an image at all.
    'random-bytes': (lambda: imagegen.random_bytes(64 * 1024, seed=5), 415),
    'pdf': (
        lambda: (
            b'%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n'
            b'trailer << /Root 1 0 R >>\n%%EOF\n'
        ),
        415,
    ),
    'html': (
        lambda: b'<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>',
        415,
    ),
    'text': (lambda: b'Dear diary, today I uploaded a poem.\n' * 50, 415),
    'svg': (
        lambda: (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10"/></svg>'
        ),
        415,
    ),
    'zip': (lambda: b'PK\x03\x04' + bytes(26) + b'PK\x05\x06' + bytes(18), 415),
    'gzip': (lambda: zlib.compress(b'not an image' * 100), 415),
}


@pytest.mark.e2e
@pytest.mark.parametrize(('make_body', 'status'), BAD_UPLOADS.values(), ids=BAD_UPLOADS.keys())
def test_broken_or_foreign_upload_is_refused_and_leaves_nothing(
    site: Site, make_body: Callable[[], bytes], status: int
) -> None:
    """A truncated or corrupt image is a 400, what is no image a 415; neither leaves a trace."""
    before = storage_state(site.storage)

    response = request('POST', f'{site.server.url}/images', make_body())

    check_error(response, status)
    assert storage_state(site.storage) == before


# -- slow clients and big bodies -------------------------------------------------------


def trickle(port: int, chunked: bool) -> tuple[int, bytes, float, float]:
    """Upload a small PNG one byte every 0.2 s until the server answers.

    Return the status, the body, how long the answer took and when it came.
    """
    body = image_bytes('PNG', (64, 64))
    if chunked:
        framing = b'Transfer-Encoding: chunked'
        payload = b''.join(b'1\r\n%c\r\n' % byte for byte in body)
    else:
        framing = b'Content-Length: %d' % len(body)
        payload = body
    head = (
        b'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n%s\r\n\r\n'
        % framing
    )
    answer = b''
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:
        sock.sendall(head)
        for byte in payload:
            if select.select([sock], [], [], 0.2)[0]:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        while b'\r\n\r\n' not in answer or not answer.rstrip().endswith(b'}'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    answered_at = time.monotonic()
    status_line, _, rest = answer.partition(b'\r\n')
    status = int(status_line.split()[1])
    return status, rest.partition(b'\r\n\r\n')[2], answered_at - started, answered_at


@pytest.mark.e2e
@pytest.mark.parametrize('chunked', [False, True], ids=['content-length', 'chunked'])
def test_slow_upload_is_408_at_the_deadline_and_the_worker_serves_others(
    site: Site, chunked: bool
) -> None:
    """A client sending a byte every 0.2 s gets a 408 at LOOK_UPLOAD_TIMEOUT; others are served."""
    before = storage_state(site.storage)
    served_at = []
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        slow = background.submit(trickle, site.server.port, chunked)
        for _ in range(3):
            time.sleep(UPLOAD_TIMEOUT / 5)
            # The only worker answers while one of its threads waits on the trickle.
            listing = get(f'{site.server.url}/images')
            assert listing.status == 200
            served_at.append(time.monotonic())
        status, body, elapsed, answered_at = slow.result(timeout=UPLOAD_TIMEOUT + 30)

    assert status == 408, body
    assert set(json.loads(body)) == {'title', 'description'}
    assert elapsed < UPLOAD_TIMEOUT + PROMPT, f'the 408 came after {elapsed:.1f}s'
    assert served_at[0] < answered_at, 'nobody else was served while the upload trickled'
    assert storage_state(site.storage) == before


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmHWM (peak) and VmRSS of ``pid``, in KiB."""
    found = {}
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            name, _, value = line.partition(':')
            if name in ('VmHWM', 'VmRSS'):
                found[name] = int(value.split()[0])
    return found


BIG_BODY = 30 * MiB


@pytest.mark.e2e
@pytest.mark.parametrize('framing', ['content-length', 'chunked', 'form'])
def test_worker_memory_stays_flat_during_a_30_mib_upload(site: Site, framing: str) -> None:
    """The web worker streams a 30 MiB body to disk: its peak memory grows by far less."""
    (worker,) = site.server.worker_pids()
    body = random.Random(30).randbytes(BIG_BODY)  # no image: 415, after all of it is read
    headers = {'Content-Type': 'application/octet-stream'}
    if framing == 'form':
        form, content_type = multipart('image', 'noise.bin', body, 'application/octet-stream')
        upload: Any = form
        headers = {'Content-Type': content_type}
    elif framing == 'chunked':
        upload = (body[start : start + MiB] for start in range(0, len(body), MiB))
    else:
        upload = body
    try:
        # NOTE: '5' resets the peak (VmHWM) to the current size (Linux >= 4.0).
        pathlib.Path(f'/proc/{worker}/clear_refs').write_text('5')
    except OSError as ex:
        pytest.skip(f'cannot reset the peak memory of the worker: {ex}')
    before = memory_kib(worker)

    response = request(
        'POST', f'{site.server.url}/images', upload, headers, chunked=framing == 'chunked'
    )

    after = memory_kib(worker)
    check_error(response, 415)
    growth = (after['VmHWM'] - before['VmHWM']) / 1024
    assert growth < 10, f'the worker peaked {growth:.1f} MiB higher ({before} -> {after})'


# -- paths -----------------------------------------------------------------------------


IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_OPEN = 0x1, 0x2, 0x4, 0x20
IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x80, 0x100, 0x200
_WATCHED = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_OPEN | IN_MOVED_TO | IN_CREATE | IN_DELETE


class FileWatch:
    """Report what any process does to the files of some directories (Linux inotify)."""

    def __init__(self, *directories: pathlib.Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), 'inotify_init1 failed')
        self._directories: dict[int, pathlib.Path] = {}
        for directory in directories:
            watch = libc.inotify_add_watch(self._fd, os.fsencode(directory), _WATCHED)
            if watch < 0:
                os.close(self._fd)
                raise OSError(ctypes.get_errno(), f'cannot watch {directory}')
            self._directories[watch] = directory

    def events(self) -> list[tuple[pathlib.Path, int]]:
        """Return (path, event mask) of everything done since the last call."""
        found = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                watch, mask, _cookie, length = struct.unpack_from('iIII', data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b'\0')
                found.append((self._directories[watch] / os.fsdecode(name), mask))
                offset += 16 + length

    def close(self) -> None:
        """Stop watching."""
        os.close(self._fd)


@pytest.fixture(scope='module')
def watch(site: Site) -> Iterator[FileWatch]:
    """Watch the storage root and the directory around it, where the canaries are."""
    file_watch = FileWatch(site.storage.parent, site.storage)
    try:
        yield file_watch
    finally:
        file_watch.close()


# (method, target, status); {id} is a stored image, {beside} and {inside} name canaries.
HOSTILE_PATHS = {
    # Climbing out of images/, plainly and encoded every way a decoder might undo.
    'dot-dot': ('GET', '/images/../{inside}.jpeg', 404),
    'dot-dot-twice': ('GET', '/images/../../{beside}.jpeg', 404),
    'encoded-slash': ('GET', '/images/..%2f{inside}.jpeg', 404),
    'encoded-slash-twice': ('GET', '/images/..%2f..%2f{beside}.jpeg', 404),
    'encoded-dots': ('GET', '/images/%2e%2e/{inside}.jpeg', 404),
    'encoded-everything': ('GET', '/images/%2e%2e%2f%2e%2e%2f{beside}.jpeg', 404),
    'double-encoded': ('GET', '/images/%252e%252e%252f{inside}.jpeg', 404),
    'backslash': ('GET', '/images/..%5c{inside}.jpeg', 404),
    'overlong-utf8-dots': ('GET', '/images/%c0%ae%c0%ae/{inside}.jpeg', 404),
    'after-an-id': ('GET', '/images/{id}%2f..%2f..%2f{beside}.jpeg', 404),
    'nul-suffix': ('GET', '/images/{id}.jpeg%00.png', 404),
    'canary-by-id': ('GET', '/images/{inside}.jpeg', 404),
    'canary-beside-by-id': ('GET', '/images/{beside}.jpeg', 404),
    'head-encoded': ('HEAD', '/images/..%2f{inside}.jpeg', 404),
    'delete-encoded': ('DELETE', '/images/..%2f{inside}.jpeg', 404),
    'delete-canary-by-id': ('DELETE', '/images/{inside}.jpeg', 404),
    'thumbnail-id-climbs': ('GET', '/thumbnails/..%2f..%2f{beside}/160x90.jpeg', 404),
    'thumbnail-size-climbs': ('GET', '/thumbnails/{id}/..%2f..%2f{beside}.jpeg', 404),
    'thumbnail-of-canary': ('GET', '/thumbnails/{inside}/160x90.jpeg', 404),
    'index': ('GET', '/index.jsonl', 404),
    'index-via-images': ('GET', '/images/..%2findex.jsonl', 404),
    'after-climbs': ('GET', '/images?after=..%2f..%2f{beside}', 400),
    # Malformed ids.
    'not-an-id': ('GET', '/images/not-an-id.jpeg', 404),
    'id-too-short': ('GET', '/images/{short}.jpeg', 404),
    'id-too-long': ('GET', '/images/{id}0.jpeg', 404),
    'other-suffix': ('GET', '/images/{id}.png', 404),
    'no-suffix': ('GET', '/images/{id}', 404),
    'double-suffix': ('GET', '/images/{id}.jpeg.jpeg', 404),
    'encoded-nul-id': ('GET', '/images/%00.jpeg', 404),
    'thumbnail-not-an-id': ('GET', '/thumbnails/not-an-id/160x90.jpeg', 404),
    'thumbnail-other-suffix': ('GET', '/thumbnails/{id}/160x90.png', 404),
    # Absurd thumbnail sizes: only the listed ones exist.
    'size-zero': ('GET', '/thumbnails/{id}/0x0.jpeg', 404),
    'size-negative': ('GET', '/thumbnails/{id}/-160x-90.jpeg', 404),
    'size-one': ('GET', '/thumbnails/{id}/1x1.jpeg', 404),
    'size-original': ('GET', '/thumbnails/{id}/640x360.jpeg', 404),
    'size-double': ('GET', '/thumbnails/{id}/1280x720.jpeg', 404),
    'size-off-by-one': ('GET', '/thumbnails/{id}/160x91.jpeg', 404),
    'size-huge': ('GET', f'/thumbnails/{{id}}/{10**40}x{10**40}.jpeg', 404),
    'size-2-pow-64': ('GET', f'/thumbnails/{{id}}/{2**64}x{2**64 + 1}.jpeg', 404),
    'size-float': ('GET', '/thumbnails/{id}/160.0x90.0.jpeg', 404),
    'size-exponent': ('GET', '/thumbnails/{id}/1e2x1e2.jpeg', 404),
    'size-nan': ('GET', '/thumbnails/{id}/NaNxNaN.jpeg', 404),
    'size-three-sides': ('GET', '/thumbnails/{id}/160x90x1.jpeg', 404),
    'size-encoded-space': ('GET', '/thumbnails/{id}/%20160x90.jpeg', 404),
    'size-missing': ('GET', '/thumbnails/{id}/x.jpeg', 404),
    # Not even HTTP: gunicorn refuses it before look sees it.
    'raw-nul': ('GET', '/images/\0{inside}.jpeg', 400),
}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ('method', 'target', 'status'), HOSTILE_PATHS.values(), ids=HOSTILE_PATHS.keys()
)
def test_hostile_path_is_refused_and_nothing_outside_storage_is_touched(
    site: Site, watch: FileWatch, method: str, target: str, status: int
) -> None:
    """Traversals, malformed ids and absurd sizes get their error; no canary is opened."""
    image_id = site.image['id']
    target = target.format(
        id=image_id, short=image_id[:-1], beside=site.beside, inside=site.inside
    )
    head = f'{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
    before = storage_state(site.storage)
    watch.events()

    answered, body = raw_request(site.server.port, head.encode('latin-1'))

    touched = [
        (path, hex(mask))
        for path, mask in watch.events()
        if path in site.canaries or (path.parent == site.storage.parent and path != site.storage)
    ]
    assert answered == status, body[:300]
    # NOTE: gunicorn answers a request line that is not HTTP itself, in HTML.
    if method != 'HEAD' and '\0' not in target:
        assert set(json.loads(body)) == {'title', 'description'}, body[:300]
    assert CANARY not in body
    assert b'"op"' not in body, 'the index was served'
    assert not touched, f'files outside the images were touched: {touched}'
    assert storage_state(site.storage) == before
    for canary in site.canaries:
        assert canary.read_bytes() == CANARY


@pytest.mark.e2e
def test_the_stored_image_is_still_served(site: Site) -> None:
    """Whatever was thrown at it, the worker still serves the image it stored, byte for byte."""
    stored = (site.storage / 'images' / f'{site.image["id"]}.jpeg').read_bytes()
    response = get(site.server.url + site.image['image'])
    assert response.status == 200
    assert response.body == stored
    thumbnail = get(site.server.url + site.image['thumbnails'][-1])
    assert thumbnail.status == 200
    assert Image.open(io.BytesIO(thumbnail.body)).format == 'JPEG'
    assert site.server.running


# -- fuzzing ---------------------------------------------------------------------------

FUZZ_SEEDS = [
    image_bytes(fmt, (48, 32), seed=number)
    for number, fmt in enumerate(('PNG', 'JPEG', 'GIF', 'WEBP', 'BMP', 'TIFF'))
]


@pytest.fixture
def fuzz_target(
    make_config: MakeConfig, make_client: MakeClient
) -> tuple[falcon.testing.TestClient, pathlib.Path]:
    """One app for all the examples (its pool starts once), and its storage."""
    config = make_config(processes=1)
    return make_client(config), pathlib.Path(config.storage_path)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.one_of(st.binary(max_size=4096), imagegen.mutations(FUZZ_SEEDS)))
def test_fuzzed_upload_is_201_or_4xx_and_leaves_nothing_half_done(
    fuzz_target: tuple[falcon.testing.TestClient, pathlib.Path], data: bytes
) -> None:
    """Random bytes and mutated images: stored whole, or refused with a 4xx and no trace."""
    client, storage = fuzz_target
    listed_before = [image['id'] for image in client.simulate_get('/images?limit=1000').json]

    response = client.simulate_post('/images', body=data)

    assert response.status_code == 201 or 400 <= response.status_code < 500, (
        response.status_code,
        response.text,
    )
    listed = [image['id'] for image in client.simulate_get('/images?limit=1000').json]
    assert not temp_files(storage), f'temp files left: {temp_files(storage)}'
    assert indexed_ids(storage) == listed, 'the index and the list disagree'
    assert sorted(image_files(storage)) == sorted(listed)
    if response.status_code == 201:
        image_id = response.json['id']
        assert listed == [*listed_before, image_id]
        stored = Image.open(storage / 'images' / f'{image_id}.jpeg')
        stored.load()
        assert (stored.format, stored.mode) == ('JPEG', 'RGB')
    else:
        assert listed == listed_before
        assert set(response.json) == {'title', 'description'}
