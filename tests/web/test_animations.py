"""Animations over HTTP: described, served as ``/images/{id}.webp``, animated thumbnails, deleted.

Every test runs on both backends, but those that never reach the store.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from falcon.testing import TestClient
from PIL import Image

from look.config import Config

from support import imagegen
from support.client import upload
from support.imagegen import FRAME_COLOURS, animation
from support.storage import storage_state

pytestmark = pytest.mark.backends('local', 'shared')
ONCE = pytest.mark.backends('local')

MakeClient = Callable[..., TestClient]
DURATIONS = [50, 100, 150, 200]
GIF = animation('GIF', (256, 192), frames=4, durations=DURATIONS, loop=0)


def frames_of(data: bytes) -> list[tuple[Image.Image, int]]:
    with Image.open(io.BytesIO(data)) as image:
        result = []
        for index in range(getattr(image, 'n_frames', 1)):
            image.seek(index)
            result.append((image.convert('RGB'), image.info.get('duration')))
    return result


def near(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def check_error(result: object, status: int) -> dict[str, str]:
    assert result.status_code == status, result.text  # type: ignore[attr-defined]
    body = result.json  # type: ignore[attr-defined]
    assert set(body) == {'title', 'description'}, body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize('fmt', ['GIF', 'WEBP', 'PNG'])
def test_an_animation_is_described_and_served_as_an_animated_webp(
    client: TestClient, fmt: str
) -> None:
    created = upload(client, animation(fmt, (256, 192), frames=4, durations=DURATIONS, loop=2))
    image_id = created['id']

    assert created['animation'] == {
        'frames': 4,
        'duration_ms': 500,
        'url': f'/images/{image_id}.webp',
    }
    listed = client.simulate_get('/images').json
    assert [entry['animation'] for entry in listed] == [created['animation']]
    assert client.simulate_get(f'/view/{image_id}').status_code == 200

    served = client.simulate_get(created['animation']['url'])
    assert served.status_code == 200
    assert served.headers['Content-Type'] == 'image/webp'
    assert int(served.headers['Content-Length']) == len(served.content)
    with Image.open(io.BytesIO(served.content)) as webp:
        assert (webp.format, webp.n_frames, webp.info['loop']) == ('WEBP', 4, 2)
    frames = frames_of(served.content)
    assert [duration for _, duration in frames] == DURATIONS
    for number, (frame, _) in enumerate(frames):
        assert near(frame.getpixel((128, 150)), FRAME_COLOURS[number % 3])
    # The JPEG is the first frame, as before.
    jpeg = frames_of(client.simulate_get(created['image']).content)
    assert len(jpeg) == 1
    assert near(jpeg[0][0].getpixel((128, 150)), FRAME_COLOURS[0])


def test_the_animation_has_an_etag_304_and_head_as_the_jpeg_has(client: TestClient) -> None:
    created = upload(client, GIF)
    url = created['animation']['url']
    served = client.simulate_get(url)
    jpeg = client.simulate_get(created['image'])

    etag = served.headers['ETag']
    assert etag.startswith('"') and etag != jpeg.headers['ETag']
    for name in ('Cache-Control', 'Last-Modified', 'X-Content-Type-Options'):
        assert served.headers[name] == jpeg.headers[name], name

    again = client.simulate_get(url, headers={'If-None-Match': etag})
    assert again.status_code == 304
    assert again.content == b''
    assert again.headers['ETag'] == etag
    since = client.simulate_get(
        url, headers={'If-Modified-Since': served.headers['Last-Modified']}
    )
    assert since.status_code == 304
    other = client.simulate_get(url, headers={'If-None-Match': jpeg.headers['ETag']})
    assert other.status_code == 200

    head = client.simulate_head(url)
    assert head.status_code == 200
    assert head.headers['Content-Length'] == str(len(served.content))
    assert head.headers['ETag'] == etag
    assert head.content == b''


@pytest.mark.parametrize(
    'data',
    [
        pytest.param(imagegen.image_bytes('PNG'), id='png'),
        pytest.param(animation('GIF', frames=1), id='one-frame-gif'),
    ],
)
def test_a_still_image_has_no_animation_and_its_webp_is_404(
    client: TestClient, data: bytes
) -> None:
    created = upload(client, data)

    assert 'animation' not in created
    for method in ('GET', 'HEAD'):
        result = client.simulate_request(method, f'/images/{created["id"]}.webp')
        assert result.status_code == 404
    body = check_error(client.simulate_get(f'/images/{created["id"]}.webp'), 404)
    assert 'not an animation' in body['description']


@ONCE
def test_an_animation_of_no_image_is_404(client: TestClient) -> None:
    check_error(client.simulate_get('/images/00000000-0000-4000-8000-000000000000.webp'), 404)


@ONCE
def test_a_percent_escaped_webp_address_is_404_naming_the_one_spelling(
    client: TestClient,
) -> None:
    created = upload(client, GIF)
    raw = f'/images/{created["id"]}%2Ewebp'

    result = client.simulate_get(f'/images/{created["id"]}.webp', extras={'RAW_URI': raw})

    body = check_error(result, 404)
    assert f'Did you mean /images/{created["id"]}.webp?' in body['description']


@pytest.mark.parametrize('format', ['webp', 'avif'])
def test_webp_and_avif_thumbnails_of_an_animation_are_animated(
    client: TestClient, format: str
) -> None:
    created = upload(client, GIF)
    path = created['thumbnails'][0].replace('.jpeg', f'.{format}')

    result = client.simulate_get(path)

    assert result.status_code == 200
    assert result.headers['Content-Type'] == f'image/{format}'
    frames = frames_of(result.content)
    assert len(frames) == 4
    assert [duration for _, duration in frames] == DURATIONS
    assert frames[0][0].size == (128, 96)
    for number, (frame, _) in enumerate(frames):
        assert near(frame.getpixel((64, 75)), FRAME_COLOURS[number % 3])
    # Negotiated by Accept, the same animated bytes.
    negotiated = client.simulate_get(
        path.rpartition('.')[0], headers={'Accept': f'image/{format}'}
    )
    assert negotiated.content == result.content


def test_jpeg_thumbnails_of_an_animation_are_its_first_frame(client: TestClient) -> None:
    created = upload(client, GIF)

    result = client.simulate_get(created['thumbnails'][0])

    frames = frames_of(result.content)
    assert len(frames) == 1
    assert near(frames[0][0].getpixel((64, 75)), FRAME_COLOURS[0])


def test_thumbnails_of_a_still_image_are_still(client: TestClient) -> None:
    created = upload(client, imagegen.image_bytes('PNG'))
    for format in ('webp', 'avif'):
        path = created['thumbnails'][0].replace('.jpeg', f'.{format}')
        assert len(frames_of(client.simulate_get(path).content)) == 1


def test_a_delete_removes_the_animation_from_the_store(
    make_client: MakeClient, config: Config
) -> None:
    client = make_client(config)
    kept_before = storage_state(config)[0]
    created = upload(client, GIF)
    names = storage_state(config)[0]
    assert any(name.endswith(f'{created["id"]}.webp') for name in names), names

    deleted = client.simulate_delete(created['image'])

    assert deleted.status_code == 204
    assert client.simulate_get(created['animation']['url']).status_code == 404
    assert client.simulate_head(created['animation']['url']).status_code == 404
    names = storage_state(config)[0]
    assert not any(created['id'] in name for name in names), names
    assert [name for name in names if name not in kept_before] == []


def test_an_animation_over_the_budget_is_413_and_leaves_nothing(
    make_client: MakeClient, config: Config
) -> None:
    client = make_client(config)
    before = storage_state(config)

    result = client.simulate_post('/images', body=imagegen.frame_bomb_gif())

    body = check_error(result, 413)
    assert 'frames of 2000x2000' in body['description']
    assert storage_state(config) == before


def test_the_budget_is_a_setting_and_both_sides_of_it_are_kept(make_client: MakeClient) -> None:
    data = animation('GIF', (100, 100), frames=10)
    at = make_client(max_animation_pixels=100_000)
    assert upload(at, data)['animation']['frames'] == 10

    under = make_client(max_animation_pixels=99_999)
    check_error(under.simulate_post('/images', body=data), 413)


def test_an_ordinary_animated_gif_is_stored_at_the_default_settings(client: TestClient) -> None:
    created = upload(client, imagegen.moving_picture((480, 270), frames=60))

    assert created['animation']['frames'] == 60
    assert created['animation']['duration_ms'] == 2400
