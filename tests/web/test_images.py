"""The HTTP API as a user of ``create_app(config)`` sees it, through Falcon's TestClient.

Every test runs on both backends, but those about the local disk itself.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import io
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from falcon.testing import Result, TestClient
from PIL import Image

from look.config import Config
from look.core.index.journal import decode_line
from look.imaging import thumbhash

from support import imagegen
from support.http import form_body as multipart
from support.imagegen import encode, image_bytes, picture, solid
from support.storage import storage_state, stored_jpeg

pytestmark = pytest.mark.backends('local', 'shared')
# NOTE: cases that never reach the index or the image store run once.
ONCE = pytest.mark.backends('local')

MakeClient = Callable[..., TestClient]
UPLOAD = image_bytes('PNG', size=(640, 360))
# What the description's placeholder is: the ThumbHash and mean colour of the pixels stored.
PLACEHOLDER = thumbhash.placeholder(picture((640, 360)))


def ids(*numbers: int) -> Callable[[], uuid.UUID]:
    """Return a uuid_generator seam that hands out the given ids in turn."""
    pending: Iterator[uuid.UUID] = (uuid.UUID(int=n) for n in numbers)
    return lambda: next(pending)


def post_chunked(client: TestClient, data: bytes, **kwargs: Any) -> Result:
    """POST as gunicorn passes a chunked request on: no Content-Length, a stream that ends."""
    return client.simulate_post(
        '/images',
        headers={'Transfer-Encoding': 'chunked'},
        extras={'wsgi.input': io.BytesIO(data), 'wsgi.input_terminated': True},
        **kwargs,
    )


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == 'JPEG'
        image.load()
    return image


def stored_colour(client: TestClient, response: Result) -> tuple[int, ...]:
    image = decode(client.simulate_get(response.headers['Location']).content)
    return image.getpixel((image.width // 2, image.height // 2))


def is_colour(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 24 for a, b in zip(pixel, colour, strict=True))


# -- upload --------------------------------------------------------------------


@pytest.mark.parametrize(
    'content_type',
    [
        None,
        pytest.param('application/octet-stream', marks=ONCE),
        pytest.param('application/x-www-form-urlencoded', marks=ONCE),  # curl --data-binary
        pytest.param('image/png', marks=ONCE),
        pytest.param('image/jpeg', marks=ONCE),  # a wrong type: the bytes decide
    ],
)
def test_upload_raw_body(make_client: MakeClient, content_type: str | None) -> None:
    client = make_client(uuid_generator=ids(7))
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    response = client.simulate_post('/images', body=UPLOAD, content_type=content_type)

    image_id = '00000000-0000-0000-0000-000000000007'
    assert response.status_code == 201
    assert response.headers['Location'] == f'/images/{image_id}.jpeg'
    assert response.json == {
        'id': image_id,
        'image': f'/images/{image_id}.jpeg',
        'modified': response.json['modified'],
        'size': [640, 360],
        'alt': '',
        'thumbnails': [
            f'/thumbnails/{image_id}/320x180.jpeg',
            f'/thumbnails/{image_id}/160x90.jpeg',
        ],
        'formats': {
            format: {
                'type': f'image/{format}',
                'srcset': f'/thumbnails/{image_id}/320x180.{format} 320w, '
                f'/thumbnails/{image_id}/160x90.{format} 160w',
            }
            for format in ('avif', 'jxl', 'webp', 'jpeg')
        },
        'placeholder': {'thumbhash': PLACEHOLDER[0], 'color': PLACEHOLDER[1]},
        'delete_token': response.json['delete_token'],
    }
    assert len(response.json['delete_token']) >= 43  # 256 random bits
    modified = email.utils.parsedate_to_datetime(response.json['modified'])
    assert response.json['modified'].endswith(' GMT')
    assert before <= modified <= datetime.datetime.now(datetime.UTC)
    assert decode(client.simulate_get(response.headers['Location']).content).size == (640, 360)


def test_upload_with_chunked_body(client: TestClient) -> None:
    """curl -T - and most streaming clients send no Content-Length."""
    response = post_chunked(client, UPLOAD)

    assert response.status_code == 201
    assert response.json['size'] == [640, 360]


@ONCE
@pytest.mark.parametrize(
    'parts',
    [
        pytest.param([('image', 'photo.png', UPLOAD)], id='image-field'),
        pytest.param([('photo', 'photo.png', UPLOAD)], id='other-field-name'),
        pytest.param(
            [('title', None, b'Holiday'), ('image', 'photo.png', UPLOAD)], id='text-first'
        ),
        pytest.param(
            [('title', None, b'Holiday'), ('file', 'photo.png', UPLOAD), ('note', None, b'x')],
            id='text-around-file',
        ),
    ],
)
def test_upload_multipart(client: TestClient, parts: list[tuple[str, str | None, bytes]]) -> None:
    body, content_type = multipart(*parts)

    response = client.simulate_post('/images', body=body, content_type=content_type)

    assert response.status_code == 201
    assert response.json['size'] == [640, 360]


@ONCE
@pytest.mark.parametrize(
    ('names', 'stored'),
    [
        pytest.param(('thumbnail', 'image'), (0, 255, 0), id='image-field-wins'),
        pytest.param(('a', 'b'), (255, 0, 0), id='else-the-first-file'),
    ],
)
def test_multipart_takes_the_image_field_else_the_first_file(
    client: TestClient, names: tuple[str, str], stored: tuple[int, int, int]
) -> None:
    red, green = encode(solid((255, 0, 0)), 'PNG'), encode(solid((0, 255, 0)), 'PNG')
    body, content_type = multipart((names[0], 'red.png', red), (names[1], 'green.png', green))

    response = client.simulate_post('/images', body=body, content_type=content_type)

    assert response.status_code == 201
    assert is_colour(stored_colour(client, response), stored)


def test_uuid_generator_seam_and_list_oldest_first(make_client: MakeClient) -> None:
    client = make_client(uuid_generator=ids(9, 3, 5))
    for seed in range(3):
        assert client.simulate_post('/images', body=image_bytes(seed=seed)).status_code == 201

    response = client.simulate_get('/images')

    assert response.status_code == 200
    assert [image['id'] for image in response.json] == [str(uuid.UUID(int=n)) for n in (9, 3, 5)]


def test_list_is_empty_at_first(client: TestClient) -> None:
    response = client.simulate_get('/images')

    assert response.status_code == 200
    assert response.json == []


@ONCE
def test_upload_is_stored_upright_without_metadata(client: TestClient) -> None:
    response = client.simulate_post('/images', body=imagegen.exif_jpeg((640, 360), 6))

    assert response.json['size'] == [360, 640]
    data = client.simulate_get(response.json['image']).content
    assert not decode(data).getexif()
    assert imagegen.SECRET_CAMERA.encode() not in data


# -- download -------------------------------------------------------------------


def test_download_returns_the_stored_bytes(client: TestClient, config: Config) -> None:
    upload = client.simulate_post('/images', body=UPLOAD).json

    response = client.simulate_get(upload['image'])

    stored = stored_jpeg(config, upload['id'])
    assert response.status_code == 200
    assert response.headers['Content-Type'] == 'image/jpeg'
    assert response.headers['Content-Length'] == str(len(stored))
    assert response.content == stored
    assert client.simulate_get(upload['image']).content == stored


@pytest.mark.parametrize(
    'path',
    [
        '/images/00000000-0000-0000-0000-000000000001.jpeg',  # well-formed, unknown
        pytest.param('/images/not-an-id.jpeg', marks=ONCE),
        pytest.param('/images/1234.jpeg', marks=ONCE),
        pytest.param('/images/../index.jsonl', marks=ONCE),
        pytest.param('/images/%2e%2e%2findex.jsonl', marks=ONCE),
        pytest.param('/images/00000000-0000-0000-0000-000000000001.png', marks=ONCE),
        pytest.param('/images/00000000-0000-0000-0000-000000000001', marks=ONCE),
        pytest.param('/thumbnails/not-an-id/160x90.jpeg', marks=ONCE),
        '/thumbnails/00000000-0000-0000-0000-000000000001/160x90.jpeg',
        pytest.param('/index.jsonl', marks=ONCE),
    ],
)
def test_unknown_or_malformed_address_is_404(client: TestClient, path: str) -> None:
    client.simulate_post('/images', body=UPLOAD)

    response = client.simulate_get(path)

    assert response.status_code == 404
    assert set(response.json) == {'title', 'description'}


# -- thumbnails --------------------------------------------------------------------


def test_listed_thumbnails_have_exactly_their_size(client: TestClient) -> None:
    upload = client.simulate_post('/images', body=UPLOAD).json
    assert upload['thumbnails']

    for url in upload['thumbnails']:
        response = client.simulate_get(url)
        width, height = (int(n) for n in url.rsplit('/', 1)[1].removesuffix('.jpeg').split('x'))
        assert response.status_code == 200
        assert response.headers['Content-Type'] == 'image/jpeg'
        assert decode(response.content).size == (width, height)


@ONCE  # routing: the same on any backend
@pytest.mark.parametrize(
    'size',
    [
        '80x45',  # the next halving, below min_thumb_size
        '321x180',
        '320x181',
        '640x360',  # the image itself is no thumbnail
        '180x320',
        '0x0',
        '0x90',
        '-160x90',
        '99999999999x1',
        '9' * 5000 + 'x1',
        'axb',
        '160x90x1',
    ],
)
def test_unlisted_thumbnail_size_is_404(client: TestClient, size: str) -> None:
    image_id = client.simulate_post('/images', body=UPLOAD).json['id']

    response = client.simulate_get(f'/thumbnails/{image_id}/{size}.jpeg')

    assert response.status_code == 404
    assert set(response.json) == {'title', 'description'}


@ONCE  # routing: the same on any backend
@pytest.mark.parametrize(
    'spelling',
    [
        '{upper}/160x90',
        '{plain}/160x90',
        '{id}/0160x090',
        '{id}/000160x90',
        '{id}/+160x90',
        '{id}/1_60x90',
    ],
)
def test_a_thumbnail_has_one_address(client: TestClient, spelling: str) -> None:
    """Other spellings of a listed size would each be rendered and cached anew, without bound."""
    image_id = client.simulate_post('/images', body=UPLOAD).json['id']
    canonical = f'/thumbnails/{image_id}/160x90.jpeg'
    path = '/thumbnails/{}.jpeg'.format(
        spelling.format(id=image_id, upper=image_id.upper(), plain=image_id.replace('-', ''))
    )

    response = client.simulate_get(path)

    assert response.status_code != 200
    if 300 <= response.status_code < 400:
        assert response.headers['Location'] == canonical
    else:
        assert response.status_code == 404


def test_min_thumb_size_changes_the_list(make_client: MakeClient) -> None:
    small = make_client(min_thumb_size=16).simulate_post('/images', body=UPLOAD).json
    none = make_client(min_thumb_size=1000).simulate_post('/images', body=UPLOAD).json

    assert [url.rsplit('/', 1)[1] for url in small['thumbnails']] == [
        '320x180.jpeg',
        '160x90.jpeg',
        '80x45.jpeg',
        '40x22.jpeg',
    ]
    assert none['thumbnails'] == []


def test_smallest_thumbnail_of_a_low_min_size_renders(make_client: MakeClient) -> None:
    client = make_client(min_thumb_size=16)
    upload = client.simulate_post('/images', body=UPLOAD).json

    response = client.simulate_get(upload['thumbnails'][-1])

    assert decode(response.content).size == (40, 22)


def test_thumbnail_is_cached_after_the_first_request(client: TestClient) -> None:
    url = client.simulate_post('/images', body=UPLOAD).json['thumbnails'][0]

    first, second = client.simulate_get(url), client.simulate_get(url)

    assert (first.headers['X-Look-Cache'], second.headers['X-Look-Cache']) == ('Miss', 'Hit')
    assert first.content == second.content
    assert second.headers['Content-Type'] == 'image/jpeg'


# -- failures leave nothing behind ----------------------------------------------------

LIMIT = 4096
SMALL = image_bytes('PNG', size=(32, 32))
TOO_BIG = imagegen.random_bytes(LIMIT + 1)


@pytest.mark.parametrize(
    ('request_kwargs', 'status'),
    [
        pytest.param({'body': b''}, 400, id='empty'),
        pytest.param(
            {'body': multipart(('image', 'a.png', b''))}, 400, id='empty-file-part', marks=ONCE
        ),
        pytest.param(
            {'body': multipart(('title', None, b'x'))}, 400, id='no-file-part', marks=ONCE
        ),
        pytest.param({'body': imagegen.truncated(SMALL)}, 400, id='truncated', marks=ONCE),
        pytest.param({'body': imagegen.corrupt_png((64, 64))}, 400, id='corrupt'),
        pytest.param(
            {'body': b'garbage', 'content_type': 'multipart/form-data'}, 400, id='form', marks=ONCE
        ),
        pytest.param({'body': TOO_BIG}, 413, id='content-length'),
        pytest.param(
            {'body': multipart(('image', 'a.bin', TOO_BIG))}, 413, id='multipart', marks=ONCE
        ),
        pytest.param({'body': imagegen.png_bomb()}, 413, id='bomb'),
        pytest.param({'body': imagegen.isobmff_bomb('HEIF')}, 413, id='heic-bomb'),
        pytest.param({'body': imagegen.isobmff_bomb('AVIF')}, 413, id='avif-bomb', marks=ONCE),
        pytest.param({'body': imagegen.jxl_bomb()}, 413, id='jxl-bomb'),
        pytest.param({'body': image_bytes('PNG', size=(640, 360))}, 413, id='pixels', marks=ONCE),
        pytest.param({'body': b'{"image": "cat.jpg"}'}, 415, id='json', marks=ONCE),
        pytest.param({'body': imagegen.random_bytes(1000)}, 415, id='noise'),
    ],
)
def test_failed_upload_leaves_storage_unchanged(
    make_client: MakeClient,
    make_config: Callable[..., Config],
    request_kwargs: dict[str, Any],
    status: int,
) -> None:
    config = make_config(max_upload_bytes=LIMIT, max_pixels=10_000)
    client = make_client(config)
    assert (
        client.simulate_post('/images', body=image_bytes('PNG', size=(30, 30))).status_code == 201
    )
    before = storage_state(config)
    kwargs = dict(request_kwargs)
    if isinstance(kwargs['body'], tuple):
        kwargs['body'], kwargs['content_type'] = kwargs['body']

    response = client.simulate_post('/images', **kwargs)

    assert response.status_code == status
    assert set(response.json) == {'title', 'description'}
    assert storage_state(config) == before
    assert len(client.simulate_get('/images').json) == 1


def fail_fsyncs(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> None:
    """Make fsync raise EIO for every file descriptor that ``fails`` picks."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fails(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)


@pytest.mark.backends('local')
def test_disk_error_syncing_the_jpeg_is_507_and_leaves_nothing(
    make_client: MakeClient, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JPEG is synced before it gets a name, so an I/O error there leaves no trace."""
    config = make_config()
    client = make_client(config)
    assert client.simulate_post('/images', body=UPLOAD).status_code == 201
    before = storage_state(config)
    spool_dir = pathlib.Path(config.storage_path) / 'spool'
    fail_fsyncs(
        monkeypatch,
        lambda fd: pathlib.Path(os.readlink(f'/proc/self/fd/{fd}')).parent == spool_dir,
    )
    response = client.simulate_post('/images', body=UPLOAD)

    assert response.status_code == 507
    assert 'Input/output error' in response.json['description']
    assert storage_state(config) == before
    assert len(client.simulate_get('/images').json) == 1


@pytest.mark.backends('local')
def test_disk_error_syncing_the_index_line_is_507_and_the_line_is_undone(
    make_client: MakeClient, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other workers may have read the line already: it is undone by another, not cut off."""
    config = make_config()
    client = make_client(config)
    assert client.simulate_post('/images', body=UPLOAD).status_code == 201
    names_before, index_before = storage_state(config)
    index = pathlib.Path(config.storage_path) / 'index.jsonl'
    fail_fsyncs(monkeypatch, lambda fd: os.fstat(fd).st_ino == os.stat(index).st_ino)
    response = client.simulate_post('/images', body=UPLOAD)

    assert response.status_code == 507
    assert set(response.json) == {'title', 'description'}
    names, index_after = storage_state(config)
    assert names == names_before
    added, undone = (decode_line(line) for line in index_after[len(index_before) :].splitlines())
    assert (added['op'], undone) == ('add', {'op': 'delete', 'id': added['id']})
    assert len(client.simulate_get('/images').json) == 1


@pytest.mark.backends('local')
@pytest.mark.parametrize(
    ('code', 'why'),
    [
        (errno.EROFS, 'the storage is read-only'),
        (errno.ENOSPC, 'the disk is full'),
        (errno.EIO, f'the disk refused the write ({os.strerror(errno.EIO)})'),
    ],
)
def test_a_delete_the_disk_refuses_is_507_saying_what_happened(
    make_client: MakeClient,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    why: str,
) -> None:
    """Not "could not be stored": nothing was to be stored, and the image is still there."""
    config = make_config()
    client = make_client(config)
    created = client.simulate_post('/images', body=UPLOAD).json
    before = storage_state(config)
    index = pathlib.Path(config.storage_path) / 'index.jsonl'
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino == os.stat(index).st_ino:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, 'write', write)
    response = client.simulate_delete(created['image'])
    monkeypatch.undo()

    assert response.status_code == 507
    assert response.json == {
        'title': 'Storage unavailable',
        'description': f'The image could not be deleted because {why}; nothing changed.',
    }
    assert storage_state(config) == before
    assert client.simulate_get(created['image']).status_code == 200


def test_side_no_jpeg_can_have_is_413_and_leaves_nothing(
    make_client: MakeClient, make_config: Callable[..., Config]
) -> None:
    """140 000 pixels is within the pixel limit, but 70 000 pixels is no JPEG side."""
    config = make_config()
    client = make_client(config)
    before = storage_state(config)

    response = client.simulate_post('/images', body=image_bytes('PNG', size=(70_000, 2)))

    assert response.status_code == 413
    assert '65500' in response.json['description']
    assert storage_state(config) == before


def test_chunked_upload_over_the_limit_is_413(
    make_client: MakeClient, make_config: Callable[..., Config]
) -> None:
    """Without a Content-Length the limit is enforced while reading."""
    config = make_config(max_upload_bytes=LIMIT)
    client = make_client(config)
    before = storage_state(config)

    response = post_chunked(client, TOO_BIG)

    assert response.status_code == 413
    assert storage_state(config) == before


class CountingBody(io.BytesIO):
    """A request body that counts how many bytes the app read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_declared_length_over_the_limit_is_refused_before_reading(
    make_client: MakeClient, make_config: Callable[..., Config]
) -> None:
    """A client announcing a huge body is answered at once, not after sending it all."""
    config = make_config(max_upload_bytes=LIMIT)
    client = make_client(config)
    before = storage_state(config)
    body = CountingBody(TOO_BIG)

    response = client.simulate_post(
        '/images', headers={'Content-Length': str(len(TOO_BIG))}, extras={'wsgi.input': body}
    )

    assert response.status_code == 413
    assert body.bytes_read == 0
    assert storage_state(config) == before


@ONCE
@pytest.mark.parametrize(
    ('method', 'path'),
    [
        ('PUT', '/images'),
        ('DELETE', '/images'),
        ('POST', '/images/00000000-0000-0000-0000-000000000001.jpeg'),
        ('PUT', '/images/00000000-0000-0000-0000-000000000001.jpeg'),
        ('POST', '/thumbnails/00000000-0000-0000-0000-000000000001/160x90.jpeg'),
        ('DELETE', '/thumbnails/00000000-0000-0000-0000-000000000001/160x90.jpeg'),
    ],
)
def test_other_methods_are_405(client: TestClient, config: Config, method: str, path: str) -> None:
    before = storage_state(config)

    response = client.simulate_request(method, path, body=SMALL)

    assert response.status_code == 405
    assert 'Allow' in response.headers
    assert storage_state(config) == before
