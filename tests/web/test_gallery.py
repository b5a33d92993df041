"""The gallery's HTML pages and static files, through Falcon's TestClient.

The pages must show what the API describes (the same URLs, sizes and
order), escape what they echo, and carry the headers that keep a page from
running anything but look's own script.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html.parser
import pathlib
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from falcon.testing import Result, TestClient

from look.config import Config
from look.core.index import StoredImage
from look.imaging.formats import READABLE_FORMATS, THUMBNAIL_FORMATS, encoding_tag
from look.imaging.renditions import Renditions
from look.web import gallery, uploads
from look.web.images import describe

from support.http import form_body
from support.imagegen import image_bytes
from support.thumbhashes import PHOTO_COLOR as THUMBHASH_COLOR
from support.thumbhashes import PHOTO_THUMBHASH as THUMBHASH

MakeClient = Callable[..., TestClient]
KEY = 'gallery-test-key-0123456789'
STRICT_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


# -- reading HTML ---------------------------------------------------------------------


@dataclasses.dataclass
class Element:
    """One start tag: its name, attributes, and the text up to its end tag."""

    tag: str
    attrs: dict[str, str | None]
    text: str = ''


class Page(html.parser.HTMLParser):
    """A parsed page: every element in document order."""

    VOID = frozenset({'img', 'source', 'meta', 'link', 'input', 'br', 'hr'})

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def all(self, tag: str, **attrs: str) -> list[Element]:
        """Return the elements with this tag and these attribute values (``class_`` for class)."""
        wanted = {name.rstrip('_').replace('_', '-'): value for name, value in attrs.items()}
        return [
            element
            for element in self.elements
            if element.tag == tag
            and all(element.attrs.get(name) == value for name, value in wanted.items())
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        """Return the one element with this tag and these attribute values."""
        found = self.all(tag, **attrs)
        assert len(found) == 1, f'{len(found)} <{tag}> elements match {attrs}'
        return found[0]

    def text_of(self, tag: str) -> str:
        """Return the text of every element with this tag, one a line."""
        return '\n'.join(element.text for element in self.all(tag))

    def meta(self, name: str) -> str | None:
        """Return the content of a <meta> by its property or name."""
        for element in self.all('meta'):
            if name in (element.attrs.get('property'), element.attrs.get('name')):
                return element.attrs.get('content')
        return None

    def tiles(self) -> list[tuple[str, Element]]:
        """Return each tile of the grid: the href of its link and its <img>."""
        found = []
        in_tile = None
        for element in self.elements:
            if element.tag == 'li' and element.attrs.get('class') == 'tile':
                in_tile = ''
            elif element.tag == 'a' and in_tile == '':
                in_tile = element.attrs['href'] or ''
            elif element.tag == 'img' and in_tile:
                found.append((in_tile, element))
                in_tile = None
        return found


def render_text(macro: str, value: object) -> str:
    """Render a macro of templates/tile.html (``tile`` or ``picture``) as the pages do."""
    templates = gallery.make_templates(gallery.StaticFiles.from_package())
    return str(getattr(templates.get_template('tile.html').module, macro)(value))


def render(macro: str, value: object) -> Page:
    return Page(render_text(macro, value))


def page_of(result: Result) -> Page:
    assert result.status_code == 200, result.text
    assert result.headers['Content-Type'].startswith('text/html')
    return Page(result.text)


# -- setting up --------------------------------------------------------------------------


def ids(count: int) -> Callable[[], uuid.UUID]:
    """Return a uuid_generator seam handing out 00..01, 00..02, ... in turn."""
    pending: Iterator[uuid.UUID] = (uuid.UUID(int=n) for n in range(1, count + 1))
    return lambda: next(pending)


def upload(
    client: TestClient, size: tuple[int, int] = (640, 480), seed: int = 0
) -> dict[str, Any]:
    result = client.simulate_post(
        '/images',
        body=image_bytes('PNG', size=size, seed=seed),
        headers={'Authorization': f'Bearer {KEY}'},
    )
    assert result.status_code == 201, result.text
    description: dict[str, Any] = result.json
    return description


def default_renditions() -> Renditions:
    """Return the renditions of an app of the default Config, as its pages have them."""
    config = Config(environ={})
    return Renditions(
        formats=config.thumbnail_formats,
        encodings={f: encoding_tag(f, config.jpeg_quality) for f in THUMBNAIL_FORMATS},
        min_thumb_size=config.min_thumb_size,
    )


def with_original(
    rendered: dict[str, Any], description: dict[str, Any], *, page: bool = False
) -> str:
    """Return a format's srcset as a picture offers it: with the original last, where it is."""
    width = description['size'][0]
    if not page and width > gallery.TILE_ORIGINAL_MAX_WIDTH:
        return str(rendered['srcset'])
    original = f'{description["image"]} {width}w'
    return f'{rendered["srcset"]}, {original}' if rendered['srcset'] else original


def api_list(client: TestClient, query: str) -> tuple[list[dict[str, Any]], str | None]:
    result = client.simulate_get(
        '/images', query_string=query, headers={'Authorization': f'Bearer {KEY}'}
    )
    assert result.status_code == 200, result.text
    link = result.headers.get('Link')
    return result.json, link[1 : link.index('>')] if link else None


@pytest.fixture
def gallery_client(make_client: MakeClient) -> TestClient:
    """A client of an app with five images, uploaded one after another."""
    client = make_client(uuid_generator=ids(9))
    for seed in range(5):
        upload(client, seed=seed)
    return client


# -- the gallery ---------------------------------------------------------------------------


def test_the_gallery_shows_what_the_api_lists_newest_first(gallery_client: TestClient) -> None:
    page = page_of(gallery_client.simulate_get('/'))
    listed, _ = api_list(gallery_client, 'order=newest')

    tiles = page.tiles()
    assert [href for href, _ in tiles] == [f'/view/{d["id"]}' for d in listed]
    assert listed[0]['id'].endswith('5')  # the last upload comes first
    for (_, img), description in zip(tiles, listed, strict=True):
        width, height = description['size']
        assert img.attrs['srcset'] == with_original(description['formats']['jpeg'], description)
        assert img.attrs['sizes'] == gallery.TILE_SIZES
        assert img.attrs['loading'] == 'lazy'
        assert (img.attrs['width'], img.attrs['height']) == (str(width), str(height))
        assert img.attrs['src'] in description['thumbnails']
        alt = img.attrs['alt'] or ''
        assert alt.startswith('Image uploaded ') and alt.endswith(f'{width} by {height} pixels')
    # Every URL the tiles name is served.
    for _, img in tiles[:1]:
        for url, _ in gallery.srcset_candidates(img.attrs['srcset'] or ''):
            assert gallery_client.simulate_get(url).status_code == 200


def test_the_gallery_pages_follow_the_api_cursor(gallery_client: TestClient) -> None:
    listed, api_next = api_list(gallery_client, 'limit=2&order=newest')
    page = page_of(gallery_client.simulate_get('/', query_string='limit=2'))

    grid = page.one('ul', id='grid')
    assert grid.attrs['data-next'] == api_next
    assert grid.attrs['data-listed'] == 'true'
    seen = [href for href, _ in page.tiles()]
    assert seen == [f'/view/{d["id"]}' for d in listed]

    # Without a script, "Older images" leads through the rest, page by page.
    while older := page.all('a', id='older'):
        href = older[0].attrs['href'] or ''
        assert href.startswith('/?limit=2&after=')
        page = page_of(gallery_client.simulate_get('/', query_string=href[2:]))
        seen += [href for href, _ in page.tiles()]
        assert page.one('a', href='/?limit=2').text == 'Back to the newest images'
    everything, _ = api_list(gallery_client, 'order=newest')
    assert seen == [f'/view/{d["id"]}' for d in everything]
    assert 'data-next' not in page.one('ul', id='grid').attrs


def test_an_empty_gallery_says_so(client: TestClient) -> None:
    page = page_of(client.simulate_get('/'))
    assert page.tiles() == []
    assert page.one('p', id='list-status').text == 'No images yet: upload the first one.'
    assert not page.all('a', id='older')


def test_a_bad_query_is_a_400_in_the_error_shape(gallery_client: TestClient) -> None:
    for query, parameter in (
        ('after=not-an-id', 'after'),
        (f'after={uuid.UUID(int=99)}', 'after'),
        ('limit=0', 'limit'),
        ('limit=many', 'limit'),
        (f'limit={gallery.MAX_PAGE_SIZE + 1}', 'limit'),
    ):
        result = gallery_client.simulate_get('/', query_string=query)
        assert result.status_code == 400, query
        assert set(result.json) == {'title', 'description'}
        assert parameter in result.json['description']


def test_the_upload_form_works_without_a_script(client: TestClient) -> None:
    page = page_of(client.simulate_get('/'))
    form = page.one('form', id='upload')
    assert (form.attrs['action'], form.attrs['method']) == ('/images', 'post')
    assert form.attrs['enctype'] == 'multipart/form-data'
    files = page.one('input', id='files')
    assert files.attrs['name'] == 'image'
    assert page.one('label', for_='files').text == 'Choose images'
    assert 'image/png' in (files.attrs['accept'] or '')
    assert '32 MiB' in page.one('p', id='upload-hint').text


# -- pictures ------------------------------------------------------------------------------


def test_a_picture_has_a_source_for_each_format_the_description_lists() -> None:
    renditions = Renditions(
        formats=('jpeg', 'avif', 'webp'),
        encodings={'jpeg': 'q85', 'webp': 'q85', 'avif': 'q70'},
        min_thumb_size=64,
    )
    image = StoredImage(str(uuid.UUID(int=1)), 1_790_000_000, (1600, 1200))
    description = describe(image, renditions)

    page = render('tile', gallery.tile(description))
    sources = page.all('source')
    assert [s.attrs['type'] for s in sources] == ['image/avif', 'image/webp']
    for source, format in zip(sources, ('avif', 'webp'), strict=True):
        assert source.attrs['srcset'] == with_original(description['formats'][format], description)
        assert source.attrs['sizes'] == gallery.TILE_SIZES
    img = page.one('img')
    # A tile of a large image: its thumbnails are enough, the original is no candidate.
    assert img.attrs['srcset'] == description['formats']['jpeg']['srcset']
    assert img.attrs['src'] == f'/thumbnails/{image.id}/400x300.jpeg'
    assert img.attrs['alt'] == (
        'Image uploaded 21 September 2026 at 14:13 UTC, 1600 by 1200 pixels'
    )

    # On its own page the original is the widest candidate of every source.
    page = render(
        'picture', gallery.picture(description, sizes='100vw', lazy=False, with_original=True)
    )
    for element in [*page.all('source'), page.one('img')]:
        assert (element.attrs['srcset'] or '').endswith(f'/images/{image.id}.jpeg 1600w')
    assert 'loading' not in page.one('img').attrs


def test_an_image_without_thumbnails_is_shown_as_it_is(make_client: MakeClient) -> None:
    client = make_client()
    description = upload(client, size=(100, 100))
    assert description['thumbnails'] == []
    (_, img), *_ = page_of(client.simulate_get('/')).tiles()
    assert img.attrs['src'] == description['image']
    assert img.attrs['srcset'] == f'{description["image"]} 100w'


def test_a_small_images_tile_offers_its_original_for_dense_screens(
    make_client: MakeClient,
) -> None:
    """A 512 pixel image: its largest thumbnail is 256 wide, half what a tile may need."""
    client = make_client()
    description = upload(client, size=(512, 512))
    (_, img), *_ = page_of(client.simulate_get('/')).tiles()
    widths = [w for _, w in gallery.srcset_candidates(img.attrs['srcset'] or '')]
    assert widths == [256, 128, 64, 512]
    assert f'{description["image"]} 512w' in (img.attrs['srcset'] or '')
    # At the bound it is offered; past it, thumbnails are enough.
    for width, offered in (
        (gallery.TILE_ORIGINAL_MAX_WIDTH, True),
        (gallery.TILE_ORIGINAL_MAX_WIDTH + 2, False),
    ):
        described = upload(client, size=(width, width // 2))
        tiles = dict(page_of(client.simulate_get('/')).tiles())
        srcset = tiles[f'/view/{described["id"]}'].attrs['srcset'] or ''
        assert srcset.endswith(f'{described["image"]} {width}w') is offered, width


def tile_elements(elements: list[Element]) -> list[Element]:
    """Return the elements of the first tile among these: its <li> through its <img>."""
    start = next(i for i, e in enumerate(elements) if e.attrs.get('class') == 'tile')
    end = next(i for i, e in enumerate(elements) if i > start and e.tag == 'img')
    return elements[start : end + 1]


def test_the_pages_tile_template_is_the_servers_tile_left_blank(
    gallery_client: TestClient,
) -> None:
    result = gallery_client.simulate_get('/')
    match = re.search(r'<template id="tile-template"[^>]*>(.*?)</template>', result.text, re.S)
    assert match is not None
    page = page_of(result)
    template = page.one('template', id='tile-template')
    assert template.attrs['data-fallback-width'] == str(gallery.FALLBACK_WIDTH)
    assert template.attrs['data-original-max-width'] == str(gallery.TILE_ORIGINAL_MAX_WIDTH)
    # An image with thumbnails in every format, a placeholder and an animation.
    (href, _), *_ = page.tiles()
    image = dataclasses.replace(
        StoredImage(href.removeprefix('/view/'), 1_790_000_000, (640, 480)),
        thumbhash=THUMBHASH,
        color=THUMBHASH_COLOR,
        frames=3,
        duration_ms=300,
    )
    description = describe(image, default_renditions())
    served = tile_elements(render('tile', gallery.tile(description)).elements)
    blank = tile_elements(Page(match[1]).elements)

    # The same elements with the same attributes in the same order; the script fills in
    # those left empty, and leaves the rest as they are.
    assert [e.tag for e in blank] == [e.tag for e in served]
    assert [list(e.attrs) for e in blank] == [list(e.attrs) for e in served]
    filled = set()
    for left, right in zip(blank, served, strict=True):
        for name, value in left.attrs.items():
            if value == '':
                filled.add(name)
            else:
                assert value == right.attrs[name], (left.tag, name)
    assert filled == {
        'href',
        'srcset',
        'sizes',
        'src',
        'width',
        'height',
        'alt',
        'viewbox',
        'fill',
        'data-thumbhash',
    }
    # A blank tile links nowhere: it is not counted among the images shown.
    assert len(page.tiles()) == 5


def test_what_a_tile_shows_is_escaped() -> None:
    hostile = '"><script>alert(1)</script>'
    description = {
        'id': hostile,
        'image': f'/images/{hostile}.jpeg',
        'modified': 'Mon, 21 Sep 2026 14:13:20 GMT',
        'size': [1600, 1200],
        'thumbnails': [],
        'formats': {
            'webp': {'type': f'image/webp{hostile}', 'srcset': f'/w{hostile} 400w'},
            'jpeg': {'type': 'image/jpeg', 'srcset': f'/j{hostile} 400w'},
        },
    }
    for macro, value in (
        ('tile', gallery.tile(description)),
        ('picture', gallery.picture(description, sizes=hostile, lazy=False, with_original=True)),
    ):
        text = render_text(macro, value)
        assert '<script>' not in text
        page = Page(text)
        assert not page.all('script')
        source, img = page.one('source'), page.one('img')
        assert source.attrs['type'] == f'image/webp{hostile}'
        assert (source.attrs['srcset'] or '').startswith(f'/w{hostile} 400w')
        assert (img.attrs['srcset'] or '').startswith(f'/j{hostile} 400w')
    assert page.one('img').attrs['sizes'] == hostile
    assert page.one('img').attrs['src'] == f'/images/{hostile}.jpeg'


# -- one image's page ------------------------------------------------------------------------


def test_an_image_page_shows_the_image_its_sizes_and_links(make_client: MakeClient) -> None:
    client = make_client(allowed_hosts='falconframework.org,photos.example')
    description = upload(client, size=(3000, 2000))
    image_id = description['id']
    result = client.simulate_get(f'/view/{image_id}', host='photos.example', protocol='https')
    page = page_of(result)
    origin = 'https://photos.example'

    img = page.one('img', width='3000')
    assert img.attrs['height'] == '2000'
    assert img.attrs['srcset'] == (
        f'{description["formats"]["jpeg"]["srcset"]}, {description["image"]} 3000w'
    )
    assert page.one('input', id='link-page').attrs['value'] == f'{origin}/view/{image_id}'
    assert page.one('input', id='link-image').attrs['value'] == f'{origin}{description["image"]}'
    assert page.one('input', id='link-markdown').attrs['value'] == (
        f'[![{img.attrs["alt"]}]({origin}/thumbnails/{image_id}/750x500.jpeg)]'
        f'({origin}/view/{image_id})'
    )
    for link in ('link-page', 'link-image', 'link-markdown'):
        assert page.one('label', for_=link).text
        assert 'hidden' in page.one('button', data_copy=link).attrs

    # A chat preview: absolute URLs, and a JPEG no wider than previews show.
    assert page.meta('og:url') == f'{origin}/view/{image_id}'
    assert page.meta('og:image') == f'{origin}/thumbnails/{image_id}/750x500.jpeg'
    assert (page.meta('og:image:width'), page.meta('og:image:height')) == ('750', '500')
    assert page.meta('twitter:card') == 'summary_large_image'
    assert page.meta('twitter:image') == page.meta('og:image')
    assert page.meta('og:image:alt') == img.attrs['alt']
    assert (page.meta('og:title') or '').startswith('Image uploaded ')

    # Every size is listed, and every link in the table is served.
    table_links = [
        a.attrs['href']
        for a in page.all('a')
        if (a.attrs['href'] or '').startswith(('/i', '/t')) and a.attrs.get('id') != 'download'
    ]
    assert table_links == [
        description['image'],
        *(
            thumbnail.replace('.jpeg', f'.{format}')
            for thumbnail in description['thumbnails']
            for format in description['formats']
        ),
    ]
    for href in table_links:
        assert client.simulate_head(href or '').status_code == 200

    # Only the script, knowing the delete token or a key, offers to delete.
    assert 'hidden' in page.one('section', id='delete').attrs


def test_a_small_image_is_its_own_preview(make_client: MakeClient) -> None:
    client = make_client()
    description = upload(client, size=(800, 600))
    page = page_of(client.simulate_get(f'/view/{description["id"]}'))
    assert page.meta('og:image') == f'http://falconframework.org{description["image"]}'
    assert (page.meta('og:image:width'), page.meta('og:image:height')) == ('800', '600')


def test_unknown_image_pages_are_404s_in_the_error_shape(gallery_client: TestClient) -> None:
    for path in (f'/view/{uuid.UUID(int=99)}', '/view/not-an-id', f'/view/{uuid.UUID(int=1)}x'):
        result = gallery_client.simulate_get(path)
        assert result.status_code == 404, path
        assert set(result.json) == {'title', 'description'}


def test_a_deleted_image_has_no_page(gallery_client: TestClient) -> None:
    image_id = str(uuid.UUID(int=3))
    assert gallery_client.simulate_get(f'/view/{image_id}').status_code == 200
    assert gallery_client.simulate_delete(f'/images/{image_id}.jpeg').status_code == 204
    assert gallery_client.simulate_get(f'/view/{image_id}').status_code == 404
    hrefs = [href for href, _ in page_of(gallery_client.simulate_get('/')).tiles()]
    assert f'/view/{image_id}' not in hrefs and len(hrefs) == 4


def test_image_pages_name_themselves_by_the_public_url_whatever_host_was_asked(
    make_client: MakeClient,
) -> None:
    client = make_client(public_url='https://photos.example.org')
    image_id = upload(client)['id']
    for host in ('falconframework.org', 'localhost:8000'):
        page = page_of(client.simulate_get(f'/view/{image_id}', host=host))
        assert page.meta('og:url') == f'https://photos.example.org/view/{image_id}'
        assert page.one('link', rel='canonical').attrs['href'] == page.meta('og:url')


def test_a_host_nobody_listed_never_ends_up_in_a_page(make_client: MakeClient) -> None:
    """With keys set, any Host is answered; a cache in front must not keep a page naming it."""
    client = make_client(api_keys=KEY, allowed_hosts=())
    image_id = upload(client)['id']

    result = client.simulate_get(f'/view/{image_id}', host='poison.example')
    assert 'poison.example' not in result.text
    page = page_of(result)
    assert page.meta('og:url') is None and page.meta('og:image') is None
    assert page.meta('twitter:image') is None and not page.all('link', rel='canonical')
    assert page.one('input', id='link-page').attrs['value'] == f'/view/{image_id}'

    local = page_of(client.simulate_get(f'/view/{image_id}', host='localhost:8000'))
    assert local.meta('og:url') == f'http://localhost:8000/view/{image_id}'


def test_a_host_that_is_no_host_name_never_reaches_a_page(make_client: MakeClient) -> None:
    """Pages name themselves by the Host; one that is not a host name is refused, unechoed."""
    client = make_client(allowed_hosts='*')
    hostile = 'x"><script>alert(1)</script>'
    result = client.simulate_get(f'/view/{uuid.UUID(int=1)}', host=hostile)
    assert result.status_code == 400
    assert set(result.json) == {'title', 'description'}
    assert '<script>alert' not in result.text


# -- headers -----------------------------------------------------------------------------------


def test_pages_run_nothing_but_looks_own_script(gallery_client: TestClient) -> None:
    for path in ('/', f'/view/{uuid.UUID(int=1)}'):
        check_page_headers(gallery_client, path)


def check_page_headers(gallery_client: TestClient, path: str) -> None:
    result = gallery_client.simulate_get(path)
    assert result.headers['Content-Security-Policy'] == STRICT_POLICY
    assert result.headers['X-Content-Type-Options'] == 'nosniff'
    assert result.headers['Cache-Control'] == 'no-cache'
    assert result.headers['Content-Type'] == 'text/html; charset=utf-8'
    page = page_of(result)
    (script,) = page.all('script')
    assert script.attrs['src'].startswith('/static/gallery.')  # type: ignore[union-attr]
    assert not script.text.strip()
    assert not page.all('style') and not [e for e in page.elements if 'style' in e.attrs]
    assert not [e for e in page.elements if any(name.startswith('on') for name in e.attrs)]

    # Revalidation: the same page again is a 304.
    etag = result.headers['ETag']
    again = gallery_client.simulate_get(path, headers={'If-None-Match': etag})
    assert again.status_code == 304 and not again.content
    head = gallery_client.simulate_head(path)
    assert head.status_code == 200 and head.headers['ETag'] == etag


def test_a_new_upload_changes_the_gallery_etag(gallery_client: TestClient) -> None:
    etag = gallery_client.simulate_get('/').headers['ETag']
    upload(gallery_client, seed=9)
    result = gallery_client.simulate_get('/', headers={'If-None-Match': etag})
    assert result.status_code == 200 and result.headers['ETag'] != etag


def test_static_files_are_cached_for_good_under_hashed_names(client: TestClient) -> None:
    page = page_of(client.simulate_get('/'))
    urls = [
        page.one('link', rel='stylesheet').attrs['href'],
        page.one('script').attrs['src'],
        page.one('link', rel='icon').attrs['href'],
    ]
    types = ['text/css; charset=utf-8', 'text/javascript; charset=utf-8', 'image/svg+xml']
    for url, media_type in zip(urls, types, strict=True):
        assert url is not None
        result = client.simulate_get(url)
        assert result.status_code == 200, url
        assert result.headers['Content-Type'] == media_type
        assert result.headers['Cache-Control'] == 'public, max-age=31536000, immutable'
        assert result.headers['X-Content-Type-Options'] == 'nosniff'
        digest = hashlib.sha256(result.content).hexdigest()[:16]
        assert url.split('.')[-2] == digest
        assert result.headers['ETag'] == f'"{digest}"'
        again = client.simulate_get(url, headers={'If-None-Match': result.headers['ETag']})
        assert again.status_code == 304 and not again.content
        assert client.simulate_head(url).headers['ETag'] == result.headers['ETag']

    for missing in ('/static/gallery.js', '/static/gallery.0000000000000000.js', '/static/x'):
        result = client.simulate_get(missing)
        assert result.status_code == 404, missing
        assert set(result.json) == {'title', 'description'}


# -- API keys ------------------------------------------------------------------------------------


def test_with_keys_set_only_a_request_with_a_key_sees_the_list(make_client: MakeClient) -> None:
    client = make_client(api_keys=KEY)
    description = upload(client)

    page = page_of(client.simulate_get('/'))
    assert page.tiles() == []
    grid = page.one('ul', id='grid')
    assert grid.attrs['data-listed'] == 'false'
    assert grid.attrs['data-next'] == grid.attrs['data-first'] == '/images?limit=30&order=newest'
    assert page.one('body').attrs['data-keys-required'] == 'true'
    assert 'hidden' in page.one('form', id='key-form').attrs
    assert page.one('label', for_='key').text == 'API key'
    assert page.one('p', id='list-status').text == 'An API key is needed to see the images here.'

    keyed = client.simulate_get('/', headers={'Authorization': f'Bearer {KEY}'})
    assert [href for href, _ in page_of(keyed).tiles()] == [f'/view/{description["id"]}']
    assert keyed.headers['Vary'] == 'Authorization'
    wrong = client.simulate_get('/', headers={'Authorization': 'Bearer not-the-key-at-all'})
    assert page_of(wrong).tiles() == []

    # Image pages stay public, as the images are.
    image_page = page_of(client.simulate_get(f'/view/{description["id"]}'))
    assert image_page.meta('og:image')


def test_without_keys_there_is_no_key_form(client: TestClient) -> None:
    page = page_of(client.simulate_get('/'))
    assert page.one('body').attrs['data-keys-required'] == 'false'
    assert not page.all('form', id='key-form')


# -- without a script: the form post and the error pages --------------------------------------

BROWSER_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'


def post_form(client: TestClient, *parts: tuple[str, str | None, bytes]) -> Result:
    """Post the upload form as a browser without a script does: it prefers a page."""
    body, content_type = form_body(*parts)
    return client.simulate_post(
        '/images', body=body, headers={'Content-Type': content_type, 'Accept': BROWSER_ACCEPT}
    )


def test_a_form_post_stores_every_file_and_names_each_refused_one(
    make_client: MakeClient, make_config: Callable[..., Config]
) -> None:
    config = make_config(max_upload_bytes=200_000)
    client = make_client(config)
    posted = post_form(
        client,
        ('image', 'heron.png', image_bytes('PNG', size=(320, 240), seed=1)),
        ('image', 'notes.txt', b'not an image'),
        ('image', 'dunes.jpg', image_bytes('JPEG', size=(480, 320), seed=2)),
        ('image', 'huge.bmp', bytes(200_001)),
        ('image', 'kite.png', image_bytes('PNG', size=(200, 300), seed=3)),
        ('alt', None, b'A heron'),
        ('alt', None, b''),
        ('alt', None, b'Dunes at noon'),
    )
    assert posted.status_code == 303, posted.text
    location = posted.headers['Location']
    assert location.startswith('/uploaded?')
    stored, _ = api_list(client, 'order=oldest')
    assert [d['alt'] for d in stored] == ['A heron', 'Dunes at noon', '']
    # Nothing of the refused files is left in the spool.
    assert list((pathlib.Path(config.storage_path) / 'spool').iterdir()) == []
    assert [d['size'] for d in stored] == [[320, 240], [480, 320], [200, 300]]
    # Nothing of a refused file is left behind.
    assert client.simulate_get('/health').status_code == 200

    path, _, query = location.partition('?')
    page = page_of(client.simulate_get(path, query_string=query))
    assert page.one('h1').text == '3 uploaded, 2 refused'
    assert [href for href, _ in page.tiles()] == [f'/view/{d["id"]}' for d in stored]
    assert [img.attrs['alt'] for _, img in page.tiles()][:2] == ['A heron', 'Dunes at noon']
    refused = [li.text for li in page.all('li') if li.attrs.get('class') != 'tile']
    assert refused == [
        f'notes.txt: it is not an image look reads ({READABLE_FORMATS}).',
        'huge.bmp: it is larger than the limit of 195.3 KiB.',
    ]
    assert page.one('a', href='/', class_='button-link').text == 'Back to all images'
    # No delete token goes to a page a person may share.
    assert 'token' not in posted.text and 'token' not in location


def test_a_form_post_of_one_file_over_the_limit_of_files_refuses_only_the_extra(
    make_client: MakeClient,
) -> None:
    small = image_bytes('PNG', size=(64, 48), seed=4)
    files = [('image', f'{n}.png', small) for n in range(uploads.MAX_FORM_FILES + 1)]
    client = make_client()
    posted = post_form(client, *files)
    assert posted.status_code == 303
    assert len(api_list(client, 'limit=100')[0]) == uploads.MAX_FORM_FILES
    path, _, query = posted.headers['Location'].partition('?')
    page = page_of(client.simulate_get(path, query_string=query))
    assert page.one('h1').text == f'{uploads.MAX_FORM_FILES} uploaded, 1 refused'
    (refused,) = page.all('li', class_=None)
    assert refused.text == (
        f'{uploads.MAX_FORM_FILES}.png: a form may carry at most {uploads.MAX_FORM_FILES} files.'
    )


def test_a_form_post_with_no_file_chosen_says_so_in_a_page(client: TestClient) -> None:
    # A file input left empty sends a part with no name and no bytes.
    posted = post_form(client, ('image', '', b''), ('alt', None, b''))
    assert posted.status_code == 400
    assert posted.json['title'] == 'Empty upload'


def test_an_api_client_still_gets_json_for_a_form(client: TestClient) -> None:
    body, content_type = form_body(
        ('image', 'a.png', image_bytes('PNG', seed=5)), ('image', 'b.png', image_bytes('PNG'))
    )
    for accept in ('application/json', '*/*', None):
        headers = {'Content-Type': content_type, **({'Accept': accept} if accept else {})}
        result = client.simulate_post('/images', body=body, headers=headers)
        assert result.status_code == 201, accept
        assert result.json['delete_token']


def test_the_uploaded_page_ignores_what_is_not_an_image_of_its_own(
    gallery_client: TestClient,
) -> None:
    listed, _ = api_list(gallery_client, 'limit=1')
    page = page_of(
        gallery_client.simulate_get(
            '/uploaded',
            query_string=f'image={listed[0]["id"]}&image=nonsense&image={uuid.UUID(int=77)}'
            '&refused=%3Cb%3Ex.png&why=Your+account+is+closed',
        )
    )
    assert [href for href, _ in page.tiles()] == [f'/view/{listed[0]["id"]}']
    (refused,) = page.all('li', class_=None)
    # Words from the address are never shown: an unknown reason reads as look's own.
    assert refused.text == '<b>x.png: it could not be stored.'
    assert page.one('p', class_='note').text == '1 of them was deleted since.'


@pytest.mark.parametrize(
    ('method', 'path', 'body', 'status'),
    [
        ('GET', '/view/00000000-0000-4000-8000-000000000000', b'', 404),
        ('GET', '/no/such/page', b'', 404),
        ('POST', '/images', b'x' * 2048, 413),
        ('POST', '/images', b'not an image at all', 415),
    ],
)
def test_a_browser_meets_errors_as_pages_and_a_script_as_json(
    make_client: MakeClient, method: str, path: str, body: bytes, status: int
) -> None:
    client = make_client(max_upload_bytes=1024)
    page = client.simulate_request(method, path, body=body, headers={'Accept': BROWSER_ACCEPT})
    assert page.status_code == status
    assert page.headers['Content-Type'].startswith('text/html')
    assert page.headers['Content-Security-Policy'] == STRICT_POLICY
    assert 'Accept' in page.headers['Vary']
    assert page.headers['Cache-Control'] == 'no-store'
    parsed = Page(page.text)
    api = client.simulate_request(method, path, body=body, headers={'Accept': 'application/json'})
    assert api.status_code == status
    assert api.headers['Content-Type'] == 'application/json'
    assert parsed.one('h1').text == api.json['title']
    assert api.json['description'] in page.text.replace('&#39;', "'").replace('&#34;', '"')
    assert parsed.one('a', href='/', class_='button-link').text == 'Back to all images'
    assert parsed.all('link', rel='stylesheet')
    for accept in ('*/*', None):
        headers = {'Accept': accept} if accept else {}
        other = client.simulate_request(method, path, body=body, headers=headers)
        assert other.headers['Content-Type'] == 'application/json', accept


def test_other_errors_stay_json_for_a_browser_too(gallery_client: TestClient) -> None:
    result = gallery_client.simulate_get(
        '/', query_string='limit=0', headers={'Accept': BROWSER_ACCEPT}
    )
    assert result.status_code == 400
    assert result.headers['Content-Type'] == 'application/json'


def test_an_animation_is_the_first_source_of_its_tile_and_its_page(
    make_client: MakeClient,
) -> None:
    client = make_client()
    description = upload(client, size=(640, 480))
    animated = dict(
        description,
        animation={'frames': 12, 'duration_ms': 1200, 'url': f'/images/{description["id"]}.webp'},
    )
    for value in (
        gallery.tile(animated),
        gallery.picture(animated, sizes='100vw', lazy=False, with_original=True),
    ):
        page = render('tile' if isinstance(value, gallery.Tile) else 'picture', value)
        first, *others = page.all('source')
        assert (first.attrs['type'], first.attrs['srcset']) == (
            'image/webp',
            f'/images/{description["id"]}.webp',
        )
        assert 'sizes' not in first.attrs
        assert [s.attrs['type'] for s in others] == [
            d['type'] for f, d in description['formats'].items() if f != 'jpeg'
        ]
        assert page.one('img').attrs['src']  # the still, for a browser without WebP
    # A still image has no such source.
    assert not render('tile', gallery.tile(description)).all('source', class_='animation')


def test_the_placeholder_is_painted_within_the_content_security_policy(
    make_client: MakeClient,
) -> None:
    """The colour is an SVG's fill attribute, not a style: the policy stays as strict."""
    client = make_client()
    description = upload(client, size=(640, 480))
    # Every upload has its own placeholder; this one is pinned to a known ThumbHash.
    placeholder = {'thumbhash': THUMBHASH, 'color': THUMBHASH_COLOR}
    for value in (
        gallery.tile(dict(description, placeholder=placeholder)),
        gallery.picture(
            dict(description, placeholder=placeholder), sizes='1px', lazy=False, with_original=True
        ),
    ):
        text = render_text('tile' if isinstance(value, gallery.Tile) else 'picture', value)
        assert 'style' not in text
        page = Page(text)
        svg = page.one('svg', class_='placeholder')
        assert svg.attrs['viewbox'] == '0 0 640 480'
        assert svg.attrs['data-thumbhash'] == THUMBHASH
        assert svg.attrs['aria-hidden'] == 'true'
        assert page.one('rect').attrs['fill'] == THUMBHASH_COLOR
    # An image described without one (stored before placeholders) paints none.
    del description['placeholder']
    assert not render('tile', gallery.tile(description)).all('svg')
    result = client.simulate_get(f'/view/{description["id"]}')
    assert result.headers['Content-Security-Policy'] == STRICT_POLICY


def test_the_image_page_is_never_drawn_wider_than_the_image(make_client: MakeClient) -> None:
    client = make_client()
    description = upload(client, size=(448, 172))
    page = page_of(client.simulate_get(f'/view/{description["id"]}'))
    img = page.one('img', width='448')
    assert img.attrs['sizes'] == (
        '(min-width: 80em) min(448px, 78rem), min(448px, calc(100vw - 2rem))'
    )
    assert page.one('a', id='download').attrs == {
        'id': 'download',
        'class': 'button-link',
        'href': description['image'],
        'download': f'look-{description["id"]}.jpeg',
    }


def test_the_image_page_links_its_neighbours_where_the_list_may_be_seen(
    make_client: MakeClient,
) -> None:
    client = make_client(api_keys=KEY)
    first, middle, last = (upload(client, seed=seed)['id'] for seed in range(3))
    key = {'Authorization': f'Bearer {KEY}'}
    page = page_of(client.simulate_get(f'/view/{middle}', headers=key))
    assert page.one('a', id='newer').attrs['href'] == f'/view/{last}'
    assert page.one('a', id='older').attrs['href'] == f'/view/{first}'
    # Without a key, an image's page names no other image: each id is a capability.
    page = page_of(client.simulate_get(f'/view/{middle}'))
    assert not page.all('a', id='newer') and not page.all('a', id='older')
    ends = page_of(client.simulate_get(f'/view/{last}', headers=key))
    assert not ends.all('a', id='newer') and ends.all('a', id='older')


def test_the_page_of_a_form_post_fits_in_an_address_however_many_files_it_refused(
    make_client: MakeClient,
) -> None:
    """Long names, in a script of three bytes a letter, past the limit of files."""
    config_client = make_client()
    small = image_bytes('PNG', size=(32, 24), seed=6)
    count = uploads.MAX_FORM_FILES + 5
    files = [('image', f'{n:02d}-' + '写真' * 150 + '.txt', b'not an image') for n in range(count)]
    posted = post_form(config_client, ('image', 'kept.png', small), *files)
    assert posted.status_code == 303
    location = posted.headers['Location']
    # gunicorn takes a request line of up to 4 094 bytes: the browser's GET of this address.
    assert len(f'GET {location} HTTP/1.1') < 4094
    path, _, query = location.partition('?')
    page = page_of(config_client.simulate_get(path, query_string=query))
    assert page.one('h1').text == f'1 uploaded, {count} refused'
    names = [li.text.partition(':')[0] for li in page.all('li', class_=None)]
    assert len(names) == uploads.MAX_FORM_FILES
    assert names[0].startswith('00-写真写真') and names[0].endswith('…')
    assert 'And 5 more files: a form may carry at most 20.' in page.text_of('p')


def test_a_form_over_the_limit_of_every_file_together_is_refused_unread(
    make_client: MakeClient,
) -> None:
    client = make_client(max_upload_bytes=1000)
    limit = uploads.MAX_FORM_FILES * 1000 + 1024 * 1024
    # At the limit, a form is read (each file refused on its own); past it, a 413 page.
    for size, status in ((limit, 303), (limit + 1, 413)):
        head, content_type = form_body(('image', 'big.bin', b''))
        body = head.replace(b'\r\n\r\n\r\n', b'\r\n\r\n' + b'x' * (size - len(head)) + b'\r\n', 1)
        assert len(body) == size
        result = client.simulate_post(
            '/images',
            body=body,
            headers={'Content-Type': content_type, 'Accept': BROWSER_ACCEPT},
        )
        assert result.status_code == status, result.text[:200]
    assert 'larger than the limit of 20 files' in Page(result.text).text_of('p')
