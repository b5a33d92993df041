"""404s that help: the sizes a thumbnail has, and the address a near miss meant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from falcon.testing import TestClient

from support.imagegen import image_bytes

MakeClient = Callable[..., TestClient]


@pytest.fixture
def image(client: TestClient) -> dict[str, Any]:
    created: dict[str, Any] = client.simulate_post(
        '/images', body=image_bytes('JPEG', (640, 360))
    ).json
    return created


def test_a_size_the_image_lacks_is_named_and_the_sizes_it_has_are_listed(
    client: TestClient, image: dict[str, Any]
) -> None:
    answer = client.simulate_get(f'/thumbnails/{image["id"]}/300x300.jpeg')

    assert answer.status_code == 404
    assert answer.json['title'] == 'No such thumbnail size'
    assert answer.json['description'] == (
        f'Image {image["id"]} has no 300x300 thumbnail; its sizes are 320x180, 160x90 '
        '(its "thumbnails" list).'
    )


def test_an_image_too_small_for_thumbnails_says_so(client: TestClient) -> None:
    small = client.simulate_post('/images', body=image_bytes('PNG', (100, 100))).json

    answer = client.simulate_get(f'/thumbnails/{small["id"]}/50x50.webp')

    assert answer.json['title'] == 'No such thumbnail size'
    assert 'it has none: its sides halve below 64 pixels' in answer.json['description']


@pytest.mark.parametrize(
    ('asked', 'meant'),
    [
        ('/images/', '/images'),
        ('/images/{id}.jpg', '/images/{id}.jpeg'),
        ('/images/{id}', '/images/{id}.jpeg'),
        ('/images/{ID}.jpeg', '/images/{id}.jpeg'),
        ('/images/{hex}.jpeg', '/images/{id}.jpeg'),
        ('/thumbnails/{id}/320x180.jpg', '/thumbnails/{id}/320x180.jpeg'),
        ('/thumbnails/{ID}/320x180.webp', '/thumbnails/{id}/320x180.webp'),
        ('/thumbnails/{id}/0320x0180.avif', '/thumbnails/{id}/320x180.avif'),
        ('/thumbnails/{id}/320X180', '/thumbnails/{id}/320x180'),
        ('/thumbnails/{id}/320x180.png', '/thumbnails/{id}/320x180.jpeg'),
    ],
)
def test_a_near_miss_is_a_404_that_points_at_the_right_address(
    client: TestClient, image: dict[str, Any], asked: str, meant: str
) -> None:
    image_id = image['id']
    spellings = {'id': image_id, 'ID': image_id.upper(), 'hex': image_id.replace('-', '')}
    answer = client.simulate_get(asked.format(**spellings))

    assert answer.status_code == 404
    assert answer.json['description'].endswith(f'Did you mean {meant.format(**spellings)}?')
    assert client.simulate_get(meant.format(**spellings)).status_code == 200


def test_a_thumbnail_without_a_size_points_at_the_thumbnails_list(
    client: TestClient, image: dict[str, Any]
) -> None:
    answer = client.simulate_get(f'/thumbnails/{image["id"]}')

    assert answer.status_code == 404
    assert f'/thumbnails/{image["id"]}/<width>x<height>.jpeg' in answer.json['description']


@pytest.mark.parametrize('path', ['/nothing', '/images/not-an-id.jpg', '/thumbnails/x/1x1.jpeg'])
def test_other_unknown_paths_are_a_plain_404(client: TestClient, path: str) -> None:
    answer = client.simulate_get(path)

    assert answer.status_code == 404
    assert set(answer.json) == {'title', 'description'}
    assert 'Did you mean' not in answer.json['description']
