"""End to end under real gunicorn: phone formats read, JPEGs kept as made, placeholders, JPEG XL.

What a person sends (an iPhone's HEIC, an AVIF, a JPEG XL, a camera's JPEG
full of metadata) and what comes back over HTTP from two workers.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from support.gunicorn import Gunicorn, upload
from support.http import get
from support.imagegen import (
    grainy_photo,
    jpeg_segments,
    metadata_jpeg,
    modern,
    register_plugins,
    rotated_heic,
)

pytestmark = pytest.mark.e2e

METADATA = {0xFE, *range(0xE1, 0xF0)}  # COM and every APPn but APP0 (JFIF)


def decode(data: bytes) -> Image.Image:
    register_plugins()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    diff = ImageChops.difference(first.convert('RGB'), second.convert('RGB'))
    return sum(ImageStat.Stat(diff).mean) / 3


def listed(server: Gunicorn, image_id: str) -> dict[str, Any]:
    response = get(f'{server.url}/images?limit=1000')
    assert response.status == 200
    (image,) = [image for image in response.json() if image['id'] == image_id]
    return image


def check_placeholder(server: Gunicorn, created: dict[str, Any]) -> None:
    """The 201 carries a placeholder, and the list gives the same one."""
    placeholder = created['placeholder']
    assert set(placeholder) == {'thumbhash', 'color'}
    assert len(placeholder['color']) == 7 and placeholder['color'].startswith('#')
    int(placeholder['color'][1:], 16)
    assert 17 <= len(placeholder['thumbhash'].encode()) * 3 // 4 <= 25
    assert listed(server, created['id'])['placeholder'] == placeholder


FORMATS = {
    'heic': ('image/heic', lambda: modern('HEIF', quality=90)),
    'avif': ('image/avif', lambda: modern('AVIF', quality=90)),
    'jxl': ('image/jxl', lambda: modern('JXL', quality=90)),
}


@pytest.mark.parametrize(('content_type', 'make'), FORMATS.values(), ids=FORMATS.keys())
def test_a_phone_or_modern_format_is_stored_served_and_described(
    gunicorn: Gunicorn, content_type: str, make: Any
) -> None:
    data = make()

    response = get(gunicorn.url)  # a worker is up
    assert response.status == 200
    created = upload(gunicorn, data, {'Content-Type': content_type})

    assert created['size'] == [640, 360]
    served = get(gunicorn.url + created['image'])
    assert served.status == 200
    assert served.header('Content-Type') == 'image/jpeg'
    jpeg = decode(served.body)
    assert (jpeg.format, jpeg.size) == ('JPEG', (640, 360))
    assert mean_difference(jpeg, grainy_photo((640, 360))) < 6
    thumbnail = get(gunicorn.url + created['thumbnails'][0])
    assert thumbnail.status == 200
    assert decode(thumbnail.body).size == (320, 180)
    check_placeholder(gunicorn, created)


def test_a_rotated_heic_is_served_upright(gunicorn: Gunicorn) -> None:
    created = upload(gunicorn, rotated_heic(6), {'Content-Type': 'image/heic'})

    assert created['size'] == [360, 640]
    jpeg = decode(get(gunicorn.url + created['image']).body)
    red, green, blue = jpeg.getpixel((360 - 32, 32))  # the top-left corner, turned
    assert red > 200 and green < 60 and blue < 60


def without_metadata(data: bytes) -> bytes:
    """Return a JPEG's bytes with its metadata segments cut, as the test reads the format."""
    segments = jpeg_segments(data)
    kept = b''.join(
        bytes([0xFF, marker]) + struct.pack('>H', len(payload) + 2) + payload
        for marker, payload in segments
        if marker not in METADATA
    )
    header_end = 2 + sum(4 + len(payload) for _, payload in segments)
    return b'\xff\xd8' + kept + data[header_end:]


def test_an_upright_jpeg_is_stored_byte_for_byte_less_its_metadata(gunicorn: Gunicorn) -> None:
    data = metadata_jpeg()
    assert {marker for marker, _ in jpeg_segments(data)} & METADATA

    created = upload(gunicorn, data, {'Content-Type': 'image/jpeg'})

    served = get(gunicorn.url + created['image']).body
    assert served == without_metadata(data)
    assert decode(served).tobytes() == decode(data).tobytes()
    check_placeholder(gunicorn, created)


@pytest.mark.parametrize(
    ('accept', 'served'),
    [
        ('image/jxl,image/webp,*/*', 'jxl'),
        ('image/avif,image/jxl,image/webp,*/*', 'avif'),
        ('image/webp,*/*', 'webp'),
    ],
)
def test_a_jpeg_xl_thumbnail_is_negotiated_for_clients_that_name_it(
    gunicorn: Gunicorn, accept: str, served: str
) -> None:
    created = upload(gunicorn)
    path = created['thumbnails'][0].removesuffix('.jpeg')

    response = get(gunicorn.url + path, {'Accept': accept})

    assert response.status == 200
    assert response.header('Content-Type') == f'image/{served}'
    assert response.header('Content-Location') == f'{path}.{served}'
    explicit = get(f'{gunicorn.url}{path}.{served}')
    assert explicit.header('ETag') == response.header('ETag')
    assert explicit.body == response.body
    assert decode(response.body).size == (320, 180)
    if served == 'jxl':
        assert response.header('ETag').endswith('-jxl-q85-e3-t1"')
        assert created['formats']['jxl']['type'] == 'image/jxl'
