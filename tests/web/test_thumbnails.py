"""Thumbnails in JPEG, WebP, AVIF and JPEG XL: explicit URLs, the negotiated one, turned off."""

from __future__ import annotations

import io
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from falcon.testing import TestClient
from PIL import Image

from look.config import Config, ConfigError
from look.core.diskcache import DiskCache
from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.imaging.renditions import Rendition, Renditions
from look.web import thumbnails
from look.web.cache import CACHE_HEADER, PURGED_MARKER
from look.web.conditional import IMMUTABLE
from look.web.thumbnails import Thumbnails

from support.client import upload
from support.imagegen import image_bytes, register_plugins

MakeClient = Callable[..., TestClient]
UPLOAD = image_bytes('JPEG', size=(640, 360))
PIL_FORMATS = {'jpeg': 'JPEG', 'webp': 'WEBP', 'avif': 'AVIF', 'jxl': 'JXL'}


def decoded(data: bytes) -> Image.Image:
    register_plugins()  # JPEG XL
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize('format', ['jpeg', 'webp', 'avif', 'jxl'])
def test_each_format_has_its_own_url_type_etag_and_caching(
    client: TestClient, format: str
) -> None:
    image = upload(client, UPLOAD)
    url = f'/thumbnails/{image["id"]}/320x180.{format}'

    miss, hit = client.simulate_get(url), client.simulate_get(url)
    head = client.simulate_head(url)
    not_modified = client.simulate_get(url, headers={'If-None-Match': miss.headers['ETag']})

    assert (miss.status_code, hit.status_code) == (200, 200)
    assert (miss.headers[CACHE_HEADER], hit.headers[CACHE_HEADER]) == ('Miss', 'Hit')
    assert (
        miss.headers['Content-Type'] == hit.headers['Content-Type'] == FORMAT_MEDIA_TYPES[format]
    )
    assert miss.content == hit.content
    thumbnail = decoded(miss.content)
    assert (thumbnail.format, thumbnail.size, thumbnail.mode) == (
        PIL_FORMATS[format],
        (320, 180),
        'RGB',
    )
    assert miss.headers['Cache-Control'] == IMMUTABLE
    assert miss.headers['ETag'] == hit.headers['ETag']
    assert head.status_code == 200 and head.content == b''
    assert head.headers['ETag'] == miss.headers['ETag']
    assert head.headers['Content-Type'] == FORMAT_MEDIA_TYPES[format]
    assert not_modified.status_code == 304 and not_modified.content == b''
    assert 'Vary' not in miss.headers  # an explicit URL is the same whatever the Accept


def test_every_format_has_an_etag_of_its_own(client: TestClient) -> None:
    image = upload(client, UPLOAD)
    etags = {
        client.simulate_get(f'/thumbnails/{image["id"]}/160x90.{format}').headers['ETag']
        for format in FORMAT_MEDIA_TYPES
    }
    assert len(etags) == len(FORMAT_MEDIA_TYPES) == 4


@pytest.mark.parametrize('format', ['webp', 'avif', 'jxl'])
def test_sizes_the_image_lacks_are_404_in_every_format(client: TestClient, format: str) -> None:
    image = upload(client, UPLOAD)
    response = client.simulate_get(f'/thumbnails/{image["id"]}/300x300.{format}')
    assert response.status_code == 404
    assert set(response.json) == {'title', 'description'}


@pytest.mark.parametrize(
    ('accept', 'format'),
    [
        (None, 'jpeg'),
        ('*/*', 'jpeg'),
        ('image/avif,image/webp,image/apng,image/*,*/*;q=0.8', 'avif'),
        ('image/webp,*/*', 'webp'),
        ('image/avif;q=0.4,image/webp;q=0.9', 'webp'),
        ('image/jxl,image/webp,*/*', 'jxl'),
        ('image/jxl,image/avif,image/webp,*/*', 'avif'),
    ],
)
def test_the_url_without_extension_serves_what_accept_asks_for(
    client: TestClient, accept: str | None, format: str
) -> None:
    image = upload(client, UPLOAD)
    headers = {'Accept': accept} if accept else {}
    path = f'/thumbnails/{image["id"]}/160x90'
    explicit = f'{path}.{format}'

    answers = [client.simulate_get(path, headers=headers) for _ in range(2)]
    head = client.simulate_head(path, headers=headers)

    for answer in [*answers, head]:
        assert answer.status_code == 200
        assert answer.headers['Vary'] == 'Accept'
        assert answer.headers['Content-Location'] == explicit
        assert answer.headers['Content-Type'] == FORMAT_MEDIA_TYPES[format]
    assert [a.headers[CACHE_HEADER] for a in answers] == ['Miss', 'Hit']
    # The negotiated answer is the explicit one: same bytes, same ETag, same cache entry.
    direct = client.simulate_get(explicit)
    assert direct.headers[CACHE_HEADER] == 'Hit'
    assert 'Vary' not in direct.headers and 'Content-Location' not in direct.headers
    assert direct.content == answers[0].content
    assert direct.headers['ETag'] == answers[0].headers['ETag']
    assert decoded(answers[1].content).format == PIL_FORMATS[format]


def test_a_worker_keeps_the_cache_names_of_so_many_thumbnails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(thumbnails, 'CACHEABLES_KEPT', 2)
    renditions = Renditions(formats=['jpeg'], encodings={'jpeg': 'q85'}, min_thumb_size=64)
    resource = Thumbnails(None, None, renditions, None)  # type: ignore[arg-type]
    ids = [str(uuid.UUID(int=n)) for n in range(3)]

    no_request: Any = None  # an address with a format asks nothing of the request
    named = [resource.cacheable(no_request, image_id, 160, 90, 'jpeg') for image_id in ids * 2]

    assert [entry.key for entry in named if entry] == [
        f'/thumbnails/{image_id}/160x90.jpeg' for image_id in ids * 2
    ]
    assert resource._cacheable.cache_info().currsize <= 2


def test_the_description_lists_every_format_with_a_srcset(client: TestClient) -> None:
    image = upload(client, UPLOAD)
    assert list(image['formats']) == ['avif', 'jxl', 'webp', 'jpeg']
    for format, entry in image['formats'].items():
        assert entry['type'] == FORMAT_MEDIA_TYPES[format]
        candidates = [candidate.split() for candidate in entry['srcset'].split(', ')]
        for url, width in candidates:
            assert client.simulate_get(url).headers['Content-Type'] == entry['type']
            assert width == f'{decoded(client.simulate_get(url).content).width}w'
        assert [url for url, _ in candidates] == [
            thumbnail.replace('.jpeg', f'.{format}') for thumbnail in image['thumbnails']
        ]


def test_formats_turned_off_are_404_never_negotiated_and_not_described(
    make_client: MakeClient,
) -> None:
    client = make_client(thumbnail_formats='jpeg,webp')
    image = upload(client, UPLOAD)

    turned_off = client.simulate_get(f'/thumbnails/{image["id"]}/160x90.avif')
    negotiated = client.simulate_get(
        f'/thumbnails/{image["id"]}/160x90', headers={'Accept': 'image/avif,*/*'}
    )

    assert turned_off.status_code == 404
    assert 'AVIF thumbnails are turned off' in turned_off.json['description']
    assert negotiated.headers['Content-Type'] == 'image/jpeg'
    assert list(image['formats']) == ['webp', 'jpeg']
    openapi = client.simulate_get('/openapi.json').json
    path = openapi['paths']['/thumbnails/{image_id}/{width}x{height}.{format}']
    (format_parameter,) = [p for p in path['get']['parameters'] if p.get('name') == 'format']
    assert format_parameter['schema']['enum'] == ['webp', 'jpeg']


@pytest.mark.parametrize(
    ('value', 'message'),
    [
        ('webp,avif', 'must include jpeg'),
        ('jpeg,gif', 'gif is not one of them'),
        ('', 'must include jpeg'),
    ],
)
def test_a_bad_format_list_stops_start_up_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Config(environ={'LOOK_THUMBNAIL_FORMATS': value})
    assert 'LOOK_THUMBNAIL_FORMATS' in str(raised.value)


def test_a_delete_purges_every_format_of_every_size(
    client: TestClient, fake_redis_server: fakeredis.FakeServer
) -> None:
    image = upload(client, UPLOAD)
    for format in FORMAT_MEDIA_TYPES:
        for thumbnail in image['thumbnails']:
            client.simulate_get(thumbnail.replace('.jpeg', f'.{format}'))
    client.simulate_get(f'/thumbnails/{image["id"]}/160x90', headers={'Accept': 'image/webp'})
    inspect = fakeredis.FakeRedis(server=fake_redis_server)
    cached = {key for key in inspect.keys('look:/thumbnails/*')}
    assert len(cached) == len(FORMAT_MEDIA_TYPES) * len(image['thumbnails'])

    assert client.simulate_delete(image['image']).status_code == 204

    assert {inspect.get(key) for key in cached} == {PURGED_MARKER}
    for key in cached:
        path = key.decode().removeprefix('look:')
        assert client.simulate_get(path).status_code == 404


def test_a_thumbnail_rendered_small_is_not_looked_for_on_the_disk_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep() passes small thumbnails by everywhere, so no process looks for one it rendered."""
    files = DiskCache(tmp_path / 'renditions', 1 << 20)
    large = thumbnails.LargeThumbnails(files, min_bytes=100)
    large.open()
    small = Rendition(str(uuid.uuid4()), (160, 90), 'jpeg', 'q85')
    big = Rendition(small.image_id, (320, 180), 'jpeg', 'q85')
    assert large.read(small) is None

    assert not large.keep(small, b'x' * 100)
    assert large.keep(big, b'y' * 101)

    looked_for: list[str] = []
    open_file = files.open_file
    monkeypatch.setattr(
        files, 'open_file', lambda name: looked_for.append(name) or open_file(name)
    )
    assert (large.read(small), large.has(small)) == (None, False)
    kept = large.read(big)
    assert kept is not None
    with kept:
        assert kept.read() == b'y' * 101
    assert large.has(big)
    assert looked_for == [f'{big.etag}.jpeg']
