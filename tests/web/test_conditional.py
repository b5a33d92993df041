"""look speaks HTTP the way browsers, CDNs and scripts expect: validators, 304,
HEAD, DELETE, pagination, health and the web's upload forms."""

from __future__ import annotations

import io
import urllib.parse

import falcon
import falcon.testing
import pytest
import redis
from PIL import Image

from look.app import create_app
from look.web.conditional import IMMUTABLE

from support.client import upload
from support.imagegen import image_bytes
from support.storage import stored_ids

pytestmark = pytest.mark.backends('local', 'shared')
# NOTE: cases that never reach the index or the image store run once.
ONCE = pytest.mark.backends('local')


def thumbnail_path(image: dict) -> str:
    return image['thumbnails'][0]


@pytest.fixture
def client(make_client) -> falcon.testing.TestClient:
    return make_client()


# -- validators and conditional requests ------------------------------------------------


@pytest.mark.parametrize('kind', ['image', 'thumbnail'])
def test_images_and_thumbnails_carry_strong_validators(client, kind):
    image = upload(client)
    path = image['image'] if kind == 'image' else thumbnail_path(image)
    result = client.simulate_get(path)
    assert result.status_code == 200
    etag = result.headers['ETag']
    assert etag.startswith('"') and etag.endswith('"'), 'a strong ETag is quoted, without W/'
    assert result.headers['Cache-Control'] == IMMUTABLE
    assert result.headers['Last-Modified'] == image['modified']
    assert int(result.headers['Content-Length']) == len(result.content)


@pytest.mark.parametrize('kind', ['image', 'thumbnail'])
def test_if_none_match_answers_304_without_body(client, kind):
    image = upload(client)
    path = image['image'] if kind == 'image' else thumbnail_path(image)
    etag = client.simulate_get(path).headers['ETag']

    for validator in (etag, f'W/{etag}', f'"other", {etag}', '*'):
        result = client.simulate_get(path, headers={'If-None-Match': validator})
        assert result.status_code == 304, validator
        assert result.content == b''
        assert result.headers['ETag'] == etag
        assert 'Content-Type' not in result.headers

    changed = client.simulate_get(path, headers={'If-None-Match': '"something-else"'})
    assert changed.status_code == 200
    assert changed.content


def test_if_modified_since_answers_304_only_when_not_older(client):
    image = upload(client)
    path = image['image']
    modified = falcon.http_date_to_dt(image['modified'])

    same = client.simulate_get(path, headers={'If-Modified-Since': image['modified']})
    assert same.status_code == 304

    earlier = falcon.dt_to_http(modified.replace(year=modified.year - 1))
    assert client.simulate_get(path, headers={'If-Modified-Since': earlier}).status_code == 200


def test_if_none_match_wins_over_if_modified_since(client):
    image = upload(client)
    headers = {'If-None-Match': '"not-it"', 'If-Modified-Since': image['modified']}
    assert client.simulate_get(image['image'], headers=headers).status_code == 200


def test_an_invalid_if_modified_since_is_ignored(client):
    image = upload(client)
    result = client.simulate_get(image['image'], headers={'If-Modified-Since': 'yesterday'})
    assert result.status_code == 200
    assert result.content


def test_a_cache_hit_answers_conditional_requests_too(client):
    image = upload(client)
    path = thumbnail_path(image)
    miss = client.simulate_get(path)
    assert miss.headers['X-Look-Cache'] == 'Miss'

    hit = client.simulate_get(path)
    assert hit.headers['X-Look-Cache'] == 'Hit'
    for name in ('ETag', 'Last-Modified', 'Cache-Control', 'Content-Type'):
        assert hit.headers[name] == miss.headers[name]

    revalidated = client.simulate_get(path, headers={'If-None-Match': miss.headers['ETag']})
    assert revalidated.status_code == 304
    assert revalidated.headers['X-Look-Cache'] == 'Hit'
    assert revalidated.content == b''


def test_thumbnail_etag_changes_with_the_jpeg_quality(make_config):
    """The bytes of a thumbnail depend on the quality; a strong ETag must follow them."""
    config = make_config(redis_url='')
    image = upload(falcon.testing.TestClient(create_app(config)))
    results = []
    for quality in (85, 60):
        config.jpeg_quality = quality
        client = falcon.testing.TestClient(create_app(config))
        results.append(client.simulate_get(thumbnail_path(image)))
    assert results[0].headers['ETag'] != results[1].headers['ETag']
    assert results[0].content != results[1].content


# -- HEAD -------------------------------------------------------------------------------


def test_head_works_on_every_get_route_with_the_same_headers(client):
    image = upload(client)
    paths = [
        '/images',
        image['image'],
        thumbnail_path(image),
        '/health',
        '/openapi.json',
    ]
    for path in paths:
        get = client.simulate_get(path)
        head = client.simulate_head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b'', path
        assert head.headers['Content-Length'] == str(len(get.content)), path
        assert head.headers['Content-Type'] == get.headers['Content-Type'], path
        for name in ('ETag', 'Last-Modified', 'Cache-Control', 'Link'):
            assert head.headers.get(name) == get.headers.get(name), (path, name)


def test_head_of_a_missing_image_is_404(client):
    result = client.simulate_head('/images/00000000-0000-4000-8000-000000000000.jpeg')
    assert result.status_code == 404


# -- DELETE -----------------------------------------------------------------------------


def test_delete_removes_image_thumbnails_listing_and_file(make_config):
    config = make_config()
    client = falcon.testing.TestClient(create_app(config))
    kept = upload(client, image_bytes('PNG', seed=1))
    image = upload(client, image_bytes('PNG', seed=2))
    for path in image['thumbnails']:
        assert client.simulate_get(path).status_code == 200  # now cached in Redis
        assert client.simulate_get(path).headers['X-Look-Cache'] == 'Hit'

    result = client.simulate_delete(image['image'])
    assert result.status_code == 204
    assert result.content == b''

    assert client.simulate_get(image['image']).status_code == 404
    for path in image['thumbnails']:
        gone = client.simulate_get(path)
        assert gone.status_code == 404, 'a cached thumbnail outlived its image'
        assert gone.json['title']
    assert [listed['id'] for listed in client.simulate_get('/images').json] == [kept['id']]
    assert stored_ids(config) == {kept['id']}


def test_delete_of_an_unknown_or_deleted_image_is_404(client):
    image = upload(client)
    unknown = client.simulate_delete('/images/00000000-0000-4000-8000-000000000000.jpeg')
    assert unknown.status_code == 404
    assert client.simulate_delete(image['image']).status_code == 204
    again = client.simulate_delete(image['image'])
    assert again.status_code == 404
    assert set(again.json) == {'title', 'description'}


def test_delete_is_seen_by_another_worker(make_config):
    """Two apps on one storage stand in for two gunicorn workers."""
    config = make_config()
    first = falcon.testing.TestClient(create_app(config))
    second = falcon.testing.TestClient(create_app(config))
    image = upload(first)
    assert second.simulate_get(image['image']).status_code == 200
    assert second.simulate_delete(image['image']).status_code == 204
    assert first.simulate_get(image['image']).status_code == 404
    assert first.simulate_get('/images').json == []


# -- pagination -------------------------------------------------------------------------


def next_link(result: falcon.testing.Result) -> str | None:
    link = result.headers.get('Link')
    if link is None:
        return None
    target, rel = link.split(';', 1)
    assert rel.strip() == 'rel="next"'
    return target.strip().removeprefix('<').removesuffix('>')


def test_pages_follow_link_headers_oldest_first(make_client):
    client = make_client(redis_url='')
    ids = [upload(client, image_bytes('PNG', (96, 64), seed=seed))['id'] for seed in range(7)]

    seen, path, pages = [], '/images?limit=3', 0
    while path is not None:
        parsed = urllib.parse.urlsplit(path)
        result = client.simulate_get(parsed.path, query_string=parsed.query)
        assert result.status_code == 200
        seen += [image['id'] for image in result.json]
        path, pages = next_link(result), pages + 1
    assert seen == ids
    assert pages == 3


def test_default_page_is_100_and_the_last_page_has_no_link(make_client):
    client = make_client(redis_url='')
    ids = [upload(client, image_bytes('PNG', (64, 64), seed=seed))['id'] for seed in range(3)]
    result = client.simulate_get('/images')
    assert [image['id'] for image in result.json] == ids
    assert 'Link' not in result.headers
    exact = client.simulate_get('/images', params={'limit': 3})
    assert 'Link' not in exact.headers, 'no next page when nothing remains'


@pytest.mark.parametrize(
    ('query', 'parameter'),
    [
        pytest.param('limit=0', 'limit', marks=ONCE),
        pytest.param('limit=1001', 'limit', marks=ONCE),
        pytest.param('limit=ten', 'limit', marks=ONCE),
        pytest.param('limit=', 'limit', marks=ONCE),
        pytest.param('after=not-an-id', 'after', marks=ONCE),
        ('after=00000000-0000-4000-8000-000000000000', 'after'),
    ],
)
def test_bad_page_parameters_are_400_naming_the_parameter(client, query, parameter):
    upload(client)
    result = client.simulate_get('/images', query_string=query)
    assert result.status_code == 400
    assert set(result.json) == {'title', 'description'}
    assert f'"{parameter}"' in result.json['description']


# -- health -----------------------------------------------------------------------------


def test_health_reports_every_part(client):
    result = client.simulate_get('/health')
    assert result.status_code == 200
    body = result.json
    assert body['status'] == 'ok'
    assert body['storage']['status'] == 'ok'
    assert body['thumbnailer']['status'] == 'ok'
    assert body['cache']['status'] == 'ok'
    assert result.headers['Cache-Control'] == 'no-store'


def test_health_stays_200_when_the_cache_is_down(make_client):
    # Nothing listens on port 1: connections are refused at once.
    client = make_client(redis_url='redis://127.0.0.1:1/0', redis_from_url=redis.Redis.from_url)
    result = client.simulate_get('/health')
    assert result.status_code == 200
    assert result.json['cache']['status'] == 'unavailable'
    assert result.json['status'] == 'degraded'


def test_health_says_disabled_without_a_cache(make_client):
    result = make_client(redis_url='').simulate_get('/health')
    assert result.json['cache'] == {'status': 'disabled'}


@pytest.mark.backends('local')
def test_health_is_503_when_storage_cannot_be_written(make_client, tmp_path):
    """The storage volume went away: a file now sits where the images directory was."""
    client = make_client(redis_url='', storage_path=tmp_path / 'volume')
    images = tmp_path / 'volume' / 'images'
    images.rename(tmp_path / 'elsewhere')
    images.write_bytes(b'')
    result = client.simulate_get('/health')
    assert result.status_code == 503
    assert result.json['status'] == 'fail'
    assert result.json['storage']['status'] == 'fail'
    assert result.json['storage']['detail']
    assert result.json['thumbnailer']['status'] == 'ok'
    assert result.headers['Retry-After']


# -- uploads the web way ----------------------------------------------------------------


@ONCE
def test_browser_multipart_upload(client):
    """A browser form: a text field, then the file in "image", with CRLFs throughout."""
    boundary = '----WebKitFormBoundary7MA4YWxkTrZu0gW'
    jpeg = image_bytes('JPEG', seed=3)
    body = (
        (
            f'--{boundary}\r\n'
            'Content-Disposition: form-data; name="caption"\r\n\r\n'
            'holiday\r\n'
            f'--{boundary}\r\n'
            'Content-Disposition: form-data; name="image"; filename="IMG_0001.JPG"\r\n'
            'Content-Type: image/jpeg\r\n\r\n'
        ).encode()
        + jpeg
        + f'\r\n--{boundary}--\r\n'.encode()
    )
    result = client.simulate_post(
        '/images',
        body=body,
        headers={'Content-Type': f'multipart/form-data; boundary={boundary}'},
    )
    assert result.status_code == 201
    assert result.headers['Content-Type'] == falcon.MEDIA_JSON
    assert result.headers['Location'] == result.json['image']
    stored = client.simulate_get(result.headers['Location'])
    assert Image.open(io.BytesIO(stored.content)).size == (640, 360)
