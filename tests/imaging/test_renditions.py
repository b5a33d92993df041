"""Renditions: which format an Accept header gets, and what derives from one rendition."""

from __future__ import annotations

import pytest

from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.imaging.renditions import Rendition, Renditions, thumbnail_sizes

ENCODINGS = {
    'jpeg': 'q85',
    'webp': 'webp-q85-m4',
    'avif': 'avif-q70-s9-420-t1',
    'jxl': 'jxl-q85-e3-t1',
}


def renditions(*formats: str) -> Renditions:
    return Renditions(
        formats=formats or FORMAT_MEDIA_TYPES, encodings=ENCODINGS, min_thumb_size=64
    )


@pytest.mark.parametrize(
    ('accept', 'chosen'),
    [
        (None, 'jpeg'),
        ('', 'jpeg'),
        ('*/*', 'jpeg'),
        ('image/*', 'jpeg'),
        ('image/*,*/*;q=0.8', 'jpeg'),
        ('image/jpeg', 'jpeg'),
        ('image/webp', 'webp'),
        ('image/avif', 'avif'),
        # Chrome's and Firefox's image requests.
        ('image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8', 'avif'),
        ('image/avif,image/webp,*/*', 'avif'),
        # Equal q: AVIF, then WebP, then JPEG.
        ('image/webp,image/avif', 'avif'),
        ('image/jpeg,image/webp', 'webp'),
        # q-values decide.
        ('image/avif;q=0.5,image/webp;q=0.9', 'webp'),
        ('image/avif;q=0.5,image/jpeg', 'jpeg'),
        ('image/webp;q=0.5,*/*', 'jpeg'),
        ('image/webp;q=0.5,image/*;q=0.4', 'webp'),
        ('image/avif;q=0,image/webp', 'webp'),
        ('image/avif;q=0', 'jpeg'),
        ('image/webp;q=0.1,image/jpeg;q=0', 'webp'),
        # JPEG XL: named or never; after AVIF, before WebP, at equal q.
        ('image/jxl', 'jxl'),
        ('image/jxl,image/webp,*/*', 'jxl'),
        ('image/webp,image/avif,image/jxl', 'avif'),
        ('image/jxl,image/avif;q=0.9', 'jxl'),
        ('image/jxl;q=0,image/webp', 'webp'),
        # Spelling: case, spaces, malformed ranges and q-values.
        ('IMAGE/WEBP', 'webp'),
        (' image/webp ; q=0.7 , image/jpeg;q=0.6', 'webp'),
        ('image/webp;q=nonsense,text/html', 'jpeg'),
        ('garbage,,;;/,image/webp', 'webp'),
        ('text/html', 'jpeg'),  # JPEG is the fallback whatever the header says
    ],
)
def test_negotiate_picks_the_best_format_the_client_names(accept: str | None, chosen: str) -> None:
    assert renditions().negotiate(accept) == chosen


def test_a_format_turned_off_is_never_negotiated() -> None:
    only = renditions('jpeg', 'webp')
    assert only.formats == ['webp', 'jpeg']
    assert only.negotiate('image/avif') == 'jpeg'
    assert only.negotiate('image/avif,image/webp') == 'webp'
    assert renditions('jpeg').negotiate('image/avif,image/webp') == 'jpeg'


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match='gif'):
        renditions('jpeg', 'gif')


def test_one_rendition_names_its_url_etag_type_and_key() -> None:
    image_id = '5d3e5b8a-1c7f-4b1e-9f6a-2d1e0c3b4a59'
    jpeg = renditions().rendition(image_id, (480, 270), 'jpeg')
    avif = renditions().rendition(image_id, (480, 270), 'avif')

    assert jpeg == Rendition(image_id, (480, 270), 'jpeg', 'q85')
    assert jpeg.path == f'/thumbnails/{image_id}/480x270.jpeg'
    assert jpeg.etag == f'{image_id}-480x270-q85'  # as before WebP and AVIF existed
    assert jpeg.media_type == 'image/jpeg'
    assert avif.path == f'/thumbnails/{image_id}/480x270.avif'
    assert avif.etag == f'{image_id}-480x270-avif-q70-s9-420-t1'
    assert avif.media_type == 'image/avif'
    assert avif.cache_key == avif.path != jpeg.cache_key


def test_every_cached_names_every_format_of_every_halving() -> None:
    """A deployment with a smaller minimum or other formats has more: a delete reaches all."""
    image_id = '5d3e5b8a-1c7f-4b1e-9f6a-2d1e0c3b4a59'
    keys = {r.cache_key for r in renditions('jpeg').every_cached(image_id, (640, 360))}

    assert len(keys) == len(thumbnail_sizes((640, 360), 1)) * len(FORMAT_MEDIA_TYPES)
    assert f'/thumbnails/{image_id}/2x1.avif' in keys
    assert f'/thumbnails/{image_id}/320x180.webp' in keys
