"""The gallery: HTML pages of the images, and the static files those pages use.

``/`` lists the images newest first, ``/view/{id}`` shows one, and
``/uploaded`` what came of a form post made without a script. All are
rendered by the templates in look/web/templates (Jinja2, autoescaped) from
the same descriptions the JSON API gives (``describe``), read through the
library here, never over HTTP; the values they show are computed here.
Without JavaScript the gallery is a plain list with links to older pages;
``look/web/static/gallery.js`` adds uploads, endless scrolling and deleting
on top, through the API.

With API keys set, the list is rendered only for a request that may list
images (one with a key); a browser keeps its key in localStorage and its
script lists and uploads with it. Image pages stay public, as images do: an
image id is a capability.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import importlib.resources
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import falcon
import jinja2

from look.core.ids import is_valid_id
from look.core.library import Library
from look.errors import ImageNotFound
from look.imaging.formats import ACCEPTED_FORMATS, FORMAT_MEDIA_TYPES, READABLE_FORMATS
from look.imaging.preflight import megapixels
from look.imaging.renditions import Renditions
from look.web.auth import Access
from look.web.conditional import IMMUTABLE, answer_not_modified, is_not_modified
from look.web.errors import ErrorPage
from look.web.guards import Hosts
from look.web.images import describe
from look.web.uploads import MAX_ALT_CHARS, MAX_FORM_FILES

DEFAULT_PAGE_SIZE = 30
MAX_PAGE_SIZE = 100

# NOTE: nothing inline: scripts and styles come from /static, images from
#   look itself. A page that injected markup could run nothing.
CONTENT_SECURITY_POLICY = '; '.join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
# The width of a tile in the grid of look/web/static/gallery.css, for each layout.
TILE_SIZES = (
    '(min-width: 80em) 19rem, (min-width: 64em) calc((100vw - 4.25rem) / 4), '
    '(min-width: 40em) calc((100vw - 3.5rem) / 3), calc((100vw - 2.75rem) / 2)'
)
# The width of the image on its own page (never wider than the image: see ``view_sizes``).
VIEW_SIZES = '(min-width: 80em) 78rem, calc(100vw - 2rem)'
# The most characters of an alt text a page's title and a chat preview's title show.
TITLE_CHARS = 80
# Tiles use the smallest thumbnail at least this wide where srcset is not read.
FALLBACK_WIDTH = 320
# NOTE: a tile is at most 19rem (304 CSS pixels) wide, 608 pixels on a screen
#   of twice the density: an original up to this wide is a tile's candidate
#   too, so a small image is not shown from its half-size thumbnail doubled.
#   A wider original's thumbnails are enough; measured on a phone (390x844 at
#   3x), offering every original took the first screen from 1 MiB to 3 MiB.
TILE_ORIGINAL_MAX_WIDTH = 608
# Chat previews show at most about this width; OpenGraph asks for an image no wider.
PREVIEW_WIDTH = 1200
MONTHS = (
    'January',
    'February',
    'March',
    'April',
    'May',
    'June',
    'July',
    'August',
    'September',
    'October',
    'November',
    'December',
)
FORMAT_NAMES = {'jpeg': 'JPEG', 'webp': 'WebP', 'avif': 'AVIF', 'jxl': 'JPEG XL'}
PAGE_HEADERS = {
    'Content-Security-Policy': CONTENT_SECURITY_POLICY,
    # NOTE: image pages are capabilities: their URLs go nowhere else.
    'Referrer-Policy': 'same-origin',
}
STATIC_MEDIA_TYPES = {
    '.css': 'text/css; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.svg': 'image/svg+xml',
}


# -- static files -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StaticFile:
    """One static file: its bytes and the digest that names it in its URL and ETag."""

    name: str
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """A hash of the content: a new file is a new URL, so the old one may be cached forever."""
        return hashlib.sha256(self.data).hexdigest()[:16]

    @property
    def hashed_name(self) -> str:
        """The name in the URL: ``gallery.css`` is served as ``gallery.<digest>.css``."""
        stem, _, extension = self.name.rpartition('.')
        return f'{stem}.{self.digest}.{extension}'


class StaticFiles:
    """``/static/{name}``: the gallery's CSS, script and icon under content-hashed names."""

    def __init__(self, files: Iterable[StaticFile]) -> None:
        self._by_name = {file.name: file for file in files}
        self._by_hashed_name = {file.hashed_name: file for file in self._by_name.values()}

    @classmethod
    def from_package(cls) -> StaticFiles:
        """Read the files in look/web/static (they ship in the wheel)."""
        folder = importlib.resources.files('look.web') / 'static'
        files = []
        for entry in folder.iterdir():
            media_type = STATIC_MEDIA_TYPES.get(pathlib.PurePath(entry.name).suffix)
            if media_type is not None:
                files.append(StaticFile(entry.name, entry.read_bytes(), media_type))
        return cls(files)

    def url(self, name: str) -> str:
        """Return the URL of a static file by its plain name."""
        return f'/static/{self._by_name[name].hashed_name}'

    def on_get(self, req: falcon.Request, resp: falcon.Response, filename: str) -> None:
        file = self._by_hashed_name.get(filename)
        if file is None:
            raise falcon.HTTPNotFound(
                title='Not found',
                description=f'There is no static file {filename!r} here (any more).',
            )
        resp.content_type = file.media_type
        resp.etag = file.digest
        resp.cache_control = [IMMUTABLE]
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        resp.data = file.data

    on_head = on_get


# -- pages --------------------------------------------------------------------


def make_templates(static: StaticFiles) -> jinja2.Environment:
    """Build the environment the pages are rendered in: autoescaped, strict, from the package."""
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader('look.web'),
        autoescape=True,
        # NOTE: a name a template misspells is an error in the tests, never an empty string.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # NOTE: templates ship in the package and do not change under a running server;
        #   checking them for changes would cost a stat() per page.
        auto_reload=False,
    )
    templates.globals['static_url'] = static.url
    return templates


class Gallery:
    """``/``: the images, newest first; ``/view/{id}``: one image, its sizes and links."""

    def __init__(
        self,
        library: Library,
        renditions: Renditions,
        access: Access,
        static: StaticFiles,
        *,
        hosts: Hosts,
        max_upload_bytes: int,
        max_pixels: int,
    ) -> None:
        self._max_pixels = max_pixels
        self._library = library
        self._hosts = hosts
        self._renditions = renditions
        self._access = access
        self._max_upload_bytes = max_upload_bytes
        self._templates = make_templates(static)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int('limit', min_value=1, max_value=MAX_PAGE_SIZE)
        after = req.get_param('after')
        if after is not None and not is_valid_id(after):
            raise falcon.HTTPInvalidParam('The value must be an image id.', 'after')
        page_size = limit or DEFAULT_PAGE_SIZE
        tiles = None
        if self._may_list(req):
            try:
                page = self._library.page(after=after, limit=page_size + 1, newest_first=True)
            except ImageNotFound:
                raise falcon.HTTPInvalidParam(
                    f'No image has the id {after}; follow the link from the previous page.',
                    'after',
                ) from None
            tiles = [tile(describe(image, self._renditions)) for image in page[:page_size]]
            next_after = page[page_size - 1].id if len(page) > page_size else None
        else:
            next_after = after  # the script lists, with the key it keeps
        # The API page after this one, for the script; the next HTML page, for everyone else.
        first = f'/images?limit={page_size}&order=newest'
        api_next = None
        if tiles is None or next_after is not None:
            api_next = first if next_after is None else f'{first}&after={next_after}'
        older = None
        if tiles is not None and next_after is not None:
            older = _gallery_query(limit=limit, after=next_after)
        page = self._templates.get_template('gallery.html').render(
            keys_required=not self._access.open,
            tiles=tiles,
            after=after,
            first=first,
            api_next=api_next,
            older=older,
            newest=_gallery_query(limit=limit, after=None) if after else None,
            tile_sizes=TILE_SIZES,
            blank_tile=blank_tile(self._renditions.formats),
            fallback_width=FALLBACK_WIDTH,
            tile_original_max_width=TILE_ORIGINAL_MAX_WIDTH,
            accept=','.join(f'image/{name.lower()}' for name in ACCEPTED_FORMATS),
            readable_formats=READABLE_FORMATS,
            upload_limit=_format_bytes(self._max_upload_bytes),
            max_upload_bytes=self._max_upload_bytes,
            max_alt_chars=MAX_ALT_CHARS,
            max_form_files=MAX_FORM_FILES,
        )
        self._respond(req, resp, page)

    on_head = on_get

    def on_get_uploaded(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``/uploaded``: the images a form post stored, and each file it refused, and why."""
        ids = [i for i in req.get_param_as_list('image', default=[]) if is_valid_id(i)]
        names = req.get_param_as_list('refused', default=[])
        reasons = req.get_param_as_list('why', default=[])
        descriptions = []
        for image_id in ids[:MAX_FORM_FILES]:
            try:
                descriptions.append(describe(self._library.get(image_id), self._renditions))
            except ImageNotFound:
                continue  # deleted since
        refusals = self._refusal_texts()
        refused = [
            (name, refusals.get(reason, refusals['failed']))
            for name, reason in zip(names, reasons, strict=False)
        ][: MAX_FORM_FILES * 2]
        page = self._templates.get_template('uploaded.html').render(
            keys_required=not self._access.open,
            tiles=[tile(description) for description in descriptions],
            refused=refused,
            more=req.get_param_as_int('more', min_value=0, default=0),
            max_form_files=MAX_FORM_FILES,
            gone=len(ids) - len(descriptions),
        )
        self._respond(req, resp, page)

    on_head_uploaded = on_get_uploaded

    def _refusal_texts(self) -> dict[str, str]:
        """Return what the page says of a refused file, for each reason images.py names."""
        return {
            'alt': f'its alt text is longer than {MAX_ALT_CHARS} characters.',
            'too-many': f'a form may carry at most {MAX_FORM_FILES} files.',
            'too-large': (
                f'it is larger than the limit of {_format_bytes(self._max_upload_bytes)}.'
            ),
            'too-many-pixels': (
                f'it has more pixels than look takes: the limit is '
                f'{megapixels(self._max_pixels)} megapixels.'
            ),
            'unsupported': f'it is not an image look reads ({READABLE_FORMATS}).',
            'corrupt': 'it is corrupt, truncated or empty.',
            'complex': 'it is built as no image encoder builds one.',
            'busy': 'look was too busy to store it just now; try it again.',
            'storage': 'the disk refused it; nothing of it was kept.',
            'failed': 'it could not be stored.',
        }

    def error_page(self) -> ErrorPage:
        """Return the HTML page a browser's navigation gets for an error (see web/errors.py)."""

        def render(status: int, title: str, description: str) -> bytes:
            return (
                self._templates.get_template('error.html')
                .render(
                    keys_required=not self._access.open,
                    status=status,
                    title=title,
                    description=description,
                )
                .encode()
            )

        return ErrorPage(render, PAGE_HEADERS)

    def on_get_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._library.get(image_id)
        description = describe(image, self._renditions)
        formats = self._renditions.formats
        sizes = self._renditions.sizes(image.size)
        when = uploaded_at(description['modified'])
        alt = alt_text(description)
        title = _shortened(image.alt, TITLE_CHARS) if image.alt else f'Image uploaded {when}'
        newer = older = None
        if self._may_list(req):
            # NOTE: the images either side in the gallery's order (newest
            #   first); only for a request that may list them, as ids are
            #   capabilities: a key-holder's, or anyone's with no keys set.
            newer = _first_id(self._library.page(after=image.id, limit=1))
            older = _first_id(self._library.page(after=image.id, limit=1, newest_first=True))
        # NOTE: LOOK_PUBLIC_URL, else the request's scheme and Host if its
        #   Host is one look was told of; gunicorn takes the scheme from
        #   X-Forwarded-Proto of the proxies it trusts (forwarded_allow_ips),
        #   so previews behind TLS say https. Of any other Host, the page has
        #   relative links only, and no preview.
        origin = self._hosts.origin_of_pages(req) or ''
        page_url = origin + view_uri(image.id)
        preview, preview_size = _preview(description, sizes)
        preview_url = origin + preview
        page = self._templates.get_template('image.html').render(
            keys_required=not self._access.open,
            image_id=image.id,
            image=picture(
                description, sizes=view_sizes(image.size[0]), lazy=False, with_original=True
            ),
            title=title,
            description=image.alt,
            newer=view_uri(newer) if newer else None,
            older=view_uri(older) if older else None,
            download_url=description['image'],
            download_name=f'look-{image.id}.jpeg',
            max_alt_chars=MAX_ALT_CHARS,
            width=image.size[0],
            height=image.size[1],
            when=when,
            modified=email.utils.parsedate_to_datetime(description['modified']).isoformat(),
            alt=alt,
            absolute=bool(origin),
            page_url=page_url,
            image_url=origin + description['image'],
            preview_url=preview_url,
            preview_size=preview_size,
            markdown=f'[![{alt}]({preview_url})]({page_url})',
            format_names=[FORMAT_NAMES[format] for format in formats],
            # NOTE: the original is a JPEG: only that column links to it.
            originals=[description['image'] if f == 'jpeg' else None for f in formats],
            rows=[
                (
                    size,
                    [
                        (FORMAT_NAMES[f], self._renditions.rendition(image.id, size, f).path)
                        for f in formats
                    ],
                )
                for size in sizes
            ],
        )
        self._respond(req, resp, page)

    on_head_image = on_get_image

    def _may_list(self, req: falcon.Request) -> bool:
        try:
            self._access.require_key(req, 'list images')
        except falcon.HTTPUnauthorized:
            return False
        return True

    def _respond(self, req: falcon.Request, resp: falcon.Response, page: str) -> None:
        data = page.encode()
        resp.content_type = falcon.MEDIA_HTML
        resp.set_headers({**PAGE_HEADERS, 'Vary': 'Authorization'})
        resp.cache_control = ['no-cache']
        resp.etag = hashlib.sha256(data).hexdigest()[:32]
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        resp.data = data


# -- what the templates show ------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """A ``<source>`` of a picture: the thumbnails of one format other than JPEG."""

    type: str
    srcset: str


@dataclasses.dataclass(frozen=True, slots=True)
class Placeholder:
    """What a picture shows while its image loads: its colour, and its ThumbHash to decode.

    NOTE: the colour is an inline SVG's ``fill``, a presentation attribute,
    which a Content-Security-Policy without inline styles still allows; the
    script paints the ThumbHash into a <canvas> on top of it, which no
    policy governs. So the policy needs no ``data:`` images nor inline styles.
    """

    thumbhash: str
    color: str
    width: int | str
    height: int | str

    @property
    def viewbox(self) -> str:
        """The SVG's viewBox: the image's size, so the colour takes the image's shape."""
        return f'0 0 {self.width} {self.height}' if self.width != '' else ''


@dataclasses.dataclass(frozen=True, slots=True)
class Picture:
    """What templates/tile.html's ``picture`` shows: sources, then a JPEG ``<img>``.

    An animation's WebP is the first source (``animation``), ahead of the
    thumbnails: a browser that shows WebP plays it, any other shows the still.
    """

    animation: str | None
    placeholder: Placeholder | None
    sources: tuple[Source, ...]
    src: str
    srcset: str | None  # None: the <img> has neither srcset nor sizes
    sizes: str
    width: int | str
    height: int | str
    alt: str
    lazy: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Tile:
    """One image of the grid: the address of its page and its picture."""

    href: str
    picture: Picture


def uploaded_at(modified: str) -> str:
    """Return an upload time (an HTTP date) as people read it, in UTC."""
    moment = email.utils.parsedate_to_datetime(modified)
    return (
        f'{moment.day} {MONTHS[moment.month - 1]} {moment.year} '
        f'at {moment.hour:02d}:{moment.minute:02d} UTC'
    )


def alt_text(description: Mapping[str, Any]) -> str:
    """Return the alt text of an image: its own, else when it was uploaded and how large."""
    if description.get('alt'):
        return str(description['alt'])
    width, height = description['size']
    return f'Image uploaded {uploaded_at(description["modified"])}, {width} by {height} pixels'


def srcset_candidates(srcset: str) -> list[tuple[str, int]]:
    """Return the (URL, width) pairs of a srcset of width descriptors."""
    candidates = []
    for item in srcset.split(','):
        url, _, width = item.strip().rpartition(' ')
        if url and width.endswith('w'):
            candidates.append((url, int(width[:-1])))
    return candidates


def fallback_src(description: Mapping[str, Any]) -> str:
    """Return the ``src`` of a tile: the smallest JPEG at least FALLBACK_WIDTH wide."""
    candidates = srcset_candidates(description['formats']['jpeg']['srcset'])
    wide_enough = [url for url, width in candidates if width >= FALLBACK_WIDTH]
    if wide_enough:
        return wide_enough[-1]
    return candidates[0][0] if candidates else description['image']


def picture(
    description: Mapping[str, Any],
    *,
    sizes: str,
    lazy: bool,
    with_original: bool = False,
) -> Picture:
    """Return the picture of an image: a source per format the description lists but JPEG.

    With ``with_original`` (an image's own page), and for a tile of an image
    at most TILE_ORIGINAL_MAX_WIDTH wide, the original is the last candidate
    of every source: a browser picks it only where no thumbnail is wide
    enough. ``with_original`` makes it the ``src`` too, where srcset is not read.
    """
    width, height = description['size']
    original = f'{description["image"]} {width}w'
    offer_original = with_original or width <= TILE_ORIGINAL_MAX_WIDTH
    sources = []
    jpeg_srcset = ''
    for format, rendered in description['formats'].items():
        srcset = rendered['srcset']
        if offer_original:
            # NOTE: the original is a JPEG in every source: any browser shows
            #   one, and no other format of it exists. A format with no
            #   thumbnails has no source: the <img> offers the original.
            srcset = f'{srcset}, {original}' if srcset else original
        if format == 'jpeg':
            jpeg_srcset = srcset
        elif rendered['srcset']:
            sources.append(Source(rendered['type'], srcset))
    placeholder = description.get('placeholder')
    animation = description.get('animation')
    return Picture(
        animation=animation['url'] if animation else None,
        placeholder=Placeholder(placeholder['thumbhash'], placeholder['color'], width, height)
        if placeholder
        else None,
        sources=tuple(sources),
        src=description['image'] if with_original else fallback_src(description),
        srcset=jpeg_srcset or None,
        sizes=sizes,
        width=width,
        height=height,
        alt=alt_text(description),
        lazy=lazy,
    )


def tile(description: Mapping[str, Any]) -> Tile:
    """Return one image of the grid, linked to its page."""
    return Tile(view_uri(description['id']), picture(description, sizes=TILE_SIZES, lazy=True))


def blank_tile(formats: Iterable[str]) -> Tile:
    """Return the tile gallery.js fills in: empty fields, and a source for each format but JPEG.

    The script removes what an image has none of (a source, an animation, a
    placeholder), as ``picture`` leaves it out.
    """
    sources = tuple(Source(FORMAT_MEDIA_TYPES[f], '') for f in formats if f != 'jpeg')
    blank = Picture(
        animation='',
        placeholder=Placeholder('', '', '', ''),
        sources=sources,
        src='',
        srcset='',
        sizes='',
        width='',
        height='',
        alt='',
        lazy=True,
    )
    return Tile('', blank)


def view_sizes(width: int) -> str:
    """Return the sizes of an image on its page: its slot, but never wider than the image.

    NOTE: a browser draws an image at the width ``sizes`` names (the width
    of the candidate it picked, over its density); without the cap a
    448 pixel image was drawn 1 248 pixels wide, blurred.
    """
    return ', '.join(
        f'{condition} min({width}px, {slot})' if condition else f'min({width}px, {slot})'
        for condition, slot in _size_slots(VIEW_SIZES)
    )


def _size_slots(sizes: str) -> list[tuple[str, str]]:
    slots = []
    for item in sizes.split(', '):
        condition, _, slot = item.rpartition(') ')
        slots.append((condition + ')' if condition else '', slot))
    return slots


def _shortened(text: str, limit: int) -> str:
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + '…'


def _first_id(images: list[Any]) -> str | None:
    return images[0].id if images else None


def view_uri(image_id: str) -> str:
    """Return the address of an image's page."""
    return f'/view/{image_id}'


def _gallery_query(*, limit: int | None, after: str | None) -> str:
    query = []
    if limit is not None:
        query.append(f'limit={limit}')
    if after is not None:
        query.append(f'after={after}')
    return f'/?{"&".join(query)}' if query else '/'


def _preview(
    description: Mapping[str, Any], sizes: list[tuple[int, int]]
) -> tuple[str, tuple[int, int]]:
    """Return the JPEG a chat preview shows, and its size: the largest not wider than it shows."""
    width, height = description['size']
    candidates = [(description['image'], (width, height))]
    # The sizes and the description's JPEG thumbnails are in the same order, largest first.
    candidates += zip(description['thumbnails'], sizes, strict=True)
    for path, size in candidates:
        if size[0] <= PREVIEW_WIDTH:
            return path, size
    return candidates[-1]


def _format_bytes(count: int) -> str:
    for unit, size in (('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
        if count >= size:
            value = count / size
            return f'{value:.0f} {unit}' if value == int(value) else f'{value:.1f} {unit}'
    return f'{count} bytes'
