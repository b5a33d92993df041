"""The gallery: HTML pages of the images, and the static files those pages use.

``/`` lists the images newest first, ``/view/{id}`` shows one. Both are
rendered from the same descriptions the JSON API gives (``describe``), read
through the library here, never over HTTP. Without JavaScript the gallery is
a plain list with links to older pages; ``look/static/gallery.js`` adds
uploads, endless scrolling and deleting on top, through the API.

With API keys set, the list is rendered only for a request that may list
images (one with a key); a browser keeps its key in localStorage and its
script lists and uploads with it. Image pages stay public, as images do: an
image id is a capability.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import html
import importlib.resources
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import falcon

from look.core.ids import is_valid_id
from look.core.library import Library
from look.errors import ImageNotFound
from look.imaging.formats import ACCEPTED_FORMATS, READABLE_FORMATS
from look.imaging.renditions import Renditions
from look.web.auth import Access
from look.web.conditional import IMMUTABLE, answer_not_modified, is_not_modified
from look.web.images import describe

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
# The width of a tile in the grid of look/static/gallery.css, for each layout.
TILE_SIZES = (
    '(min-width: 80em) 19rem, (min-width: 64em) calc((100vw - 4.25rem) / 4), '
    '(min-width: 40em) calc((100vw - 3.5rem) / 3), calc((100vw - 2.75rem) / 2)'
)
# The width of the image on its own page.
VIEW_SIZES = '(min-width: 80em) 78rem, calc(100vw - 2rem)'
# Tiles use the smallest thumbnail at least this wide where srcset is not read.
FALLBACK_WIDTH = 320
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
        """Read the files in look/static (they ship in the wheel)."""
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
        resp.set_header('X-Content-Type-Options', 'nosniff')
        resp.etag = file.digest
        resp.cache_control = [IMMUTABLE]
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        resp.data = file.data

    on_head = on_get


# -- pages --------------------------------------------------------------------


class Gallery:
    """``/``: the images, newest first; ``/view/{id}``: one image, its sizes and links."""

    def __init__(
        self,
        library: Library,
        renditions: Renditions,
        access: Access,
        static: StaticFiles,
        *,
        max_upload_bytes: int,
    ) -> None:
        self._library = library
        self._renditions = renditions
        self._access = access
        self._static = static
        self._max_upload_bytes = max_upload_bytes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int('limit', min_value=1, max_value=MAX_PAGE_SIZE)
        after = req.get_param('after')
        if after is not None and not is_valid_id(after):
            raise falcon.HTTPInvalidParam('The value must be an image id.', 'after')
        page_size = limit or DEFAULT_PAGE_SIZE
        listing = None
        if self._may_list(req):
            try:
                page = self._library.page(after=after, limit=page_size + 1, newest_first=True)
            except ImageNotFound:
                raise falcon.HTTPInvalidParam(
                    f'No image has the id {after}; follow the link from the previous page.',
                    'after',
                ) from None
            listing = [describe(image, self._renditions) for image in page[:page_size]]
            next_after = page[page_size - 1].id if len(page) > page_size else None
        else:
            next_after = after  # the script lists, with the key it keeps
        self._respond(
            req,
            resp,
            _gallery_page(
                self._static,
                listing,
                page_size=page_size,
                limit=limit,
                after=after,
                next_after=next_after,
                keys_required=not self._access.open,
                max_upload_bytes=self._max_upload_bytes,
            ),
        )

    on_head = on_get

    def on_get_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._library.get(image_id)
        description = describe(image, self._renditions)
        formats = self._renditions.formats
        rows = [
            (size, [self._renditions.rendition(image.id, size, f).path for f in formats])
            for size in self._renditions.sizes(image.size)
        ]
        page = _image_page(
            self._static,
            description,
            rows,
            formats=formats,
            # NOTE: gunicorn takes the scheme from X-Forwarded-Proto of the
            #   proxies it trusts (forwarded_allow_ips): previews behind TLS say https.
            origin=req.prefix,
            keys_required=not self._access.open,
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
        resp.set_headers(
            {
                'Content-Security-Policy': CONTENT_SECURITY_POLICY,
                'X-Content-Type-Options': 'nosniff',
                # NOTE: image pages are capabilities: their URLs go nowhere else.
                'Referrer-Policy': 'same-origin',
                'Vary': 'Authorization',
            }
        )
        resp.cache_control = ['no-cache']
        resp.etag = hashlib.sha256(data).hexdigest()[:32]
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return
        resp.data = data


# -- rendering ------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _attributes(attributes: Mapping[str, object]) -> str:
    """Render attributes in the given order; None leaves one out, True writes it bare."""
    parts = []
    for name, value in attributes.items():
        if value is None or value is False:
            continue
        parts.append(f' {name}' if value is True else f' {name}="{_e(value)}"')
    return ''.join(parts)


def uploaded_at(modified: str) -> str:
    """Return an upload time (an HTTP date) as people read it, in UTC."""
    moment = email.utils.parsedate_to_datetime(modified)
    return (
        f'{moment.day} {MONTHS[moment.month - 1]} {moment.year} '
        f'at {moment.hour:02d}:{moment.minute:02d} UTC'
    )


def alt_text(description: Mapping[str, Any]) -> str:
    """Return the alt text of an image: there are no captions, so when and how large."""
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
) -> str:
    """Render a ``<picture>``: a source per format the description lists, then a JPEG ``<img>``.

    With ``with_original``, the original is a candidate of every source, for
    displays wider than the largest thumbnail.
    """
    width, height = description['size']
    original = f'{description["image"]} {width}w'
    srcsets = {}
    for format, rendered in description['formats'].items():
        srcset = rendered['srcset']
        if with_original:
            # NOTE: the original is a JPEG in every source: any browser shows
            #   one, and no other format of it exists.
            srcset = f'{srcset}, {original}' if srcset else original
        srcsets[format] = (rendered['type'], srcset)
    sources = ''.join(
        f'<source{_attributes({"type": media_type, "srcset": srcset, "sizes": sizes})}>'
        for format, (media_type, srcset) in srcsets.items()
        if format != 'jpeg' and srcset
    )
    jpeg_srcset = srcsets.get('jpeg', ('', ''))[1]
    img = _attributes(
        {
            'src': description['image'] if with_original else fallback_src(description),
            'srcset': jpeg_srcset or None,
            'sizes': sizes if jpeg_srcset else None,
            'width': width,
            'height': height,
            'alt': alt_text(description),
            'loading': 'lazy' if lazy else None,
            'decoding': 'async',
            'fetchpriority': None if lazy else 'high',
        }
    )
    return f'<picture>{sources}<img{img}></picture>'


def tile(description: Mapping[str, Any]) -> str:
    """Render one image of the grid, linked to its page (gallery.js builds the same)."""
    href = view_uri(description['id'])
    return (
        f'<li class="tile"><a href="{_e(href)}">'
        f'{picture(description, sizes=TILE_SIZES, lazy=True)}</a></li>'
    )


def view_uri(image_id: str) -> str:
    """Return the address of an image's page."""
    return f'/view/{image_id}'


def _document(
    static: StaticFiles,
    *,
    title: str,
    body: str,
    page: str,
    keys_required: bool,
    head: str = '',
) -> str:
    return (
        '<!doctype html>\n'
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f'<title>{_e(title)}</title>\n'
        f'<link rel="icon" href="{_e(static.url("icon.svg"))}" type="image/svg+xml">\n'
        f'<link rel="stylesheet" href="{_e(static.url("gallery.css"))}">\n'
        f'<script type="module" src="{_e(static.url("gallery.js"))}"></script>\n'
        f'{head}</head>\n'
        f'<body data-page="{_e(page)}" data-keys-required="{str(keys_required).lower()}">\n'
        f'<header class="bar"><a class="brand" href="/"><img src="{_e(static.url("icon.svg"))}" '
        'alt="" width="24" height="24">look</a></header>\n'
        f'{body}'
        '</body>\n</html>\n'
    )


def _gallery_query(*, limit: int | None, after: str | None) -> str:
    query = []
    if limit is not None:
        query.append(f'limit={limit}')
    if after is not None:
        query.append(f'after={after}')
    return f'/?{"&".join(query)}' if query else '/'


def _gallery_page(
    static: StaticFiles,
    listing: list[dict[str, Any]] | None,
    *,
    page_size: int,
    limit: int | None,
    after: str | None,
    next_after: str | None,
    keys_required: bool,
    max_upload_bytes: int,
) -> str:
    """Render ``/``; ``listing`` is None where the request may not list images."""
    if listing is None:
        tiles = ''
        status = 'An API key is needed to see the images here.'
    elif not listing:
        tiles = ''
        status = 'There are no older images.' if after else 'No images yet: upload the first one.'
    else:
        tiles = ''.join(tile(description) for description in listing)
        status = ''
    # The API page after this one, for the script; the next HTML page, for everyone else.
    api_next = None
    older = ''
    if listing is None or next_after is not None:
        api_next = f'/images?limit={page_size}&order=newest'
        if next_after is not None:
            api_next += f'&after={next_after}'
    if listing is not None and next_after is not None:
        href = _gallery_query(limit=limit, after=next_after)
        older = (
            f'<p class="more"><a id="older" rel="next" href="{_e(href)}">Older images</a></p>\n'
        )
    newest = (
        f'<p class="more"><a href="{_e(_gallery_query(limit=limit, after=None))}">'
        'Back to the newest images</a></p>\n'
        if after
        else ''
    )
    grid_attributes = _attributes(
        {
            'id': 'grid',
            'class': 'grid',
            'data-listed': str(listing is not None).lower(),
            'data-first': f'/images?limit={page_size}&order=newest',
            'data-next': api_next,
            'data-sizes': TILE_SIZES,
        }
    )
    accept = ','.join(f'image/{name.lower()}' for name in ACCEPTED_FORMATS)
    limit_text = _format_bytes(max_upload_bytes)
    key_form = ''
    if keys_required:
        key_form = (
            '<form id="key-form" class="key" hidden>\n'
            '<h2>API key</h2>\n'
            '<p>Listing and uploading images here need an API key. It is kept in this '
            'browser only.</p>\n'
            '<div class="row"><label for="key">API key</label>'
            '<input id="key" name="key" type="password" autocomplete="off" spellcheck="false" '
            'required>'
            '<button type="submit">Use this key</button>'
            '<button type="button" id="forget-key" class="quiet" hidden>Forget the key</button>'
            '</div>\n<p id="key-status" class="note" role="status"></p>\n</form>\n'
        )
    body = (
        '<main>\n'
        '<h1>Images</h1>\n'
        f'{key_form}'
        '<section class="upload" aria-labelledby="upload-heading">\n'
        '<h2 id="upload-heading">Upload</h2>\n'
        '<form id="upload" class="drop" action="/images" method="post" '
        f'enctype="multipart/form-data" data-max-bytes="{max_upload_bytes}">\n'
        '<label for="files">Choose images</label>\n'
        f'<input id="files" name="image" type="file" accept="{_e(accept)}" multiple '
        'aria-describedby="upload-hint">\n'
        f'<p id="upload-hint" class="note">{_e(READABLE_FORMATS)}, up to {_e(limit_text)} '
        'each<span class="js-only" hidden>; or drop them here</span>.</p>\n'
        '<button type="submit" class="no-js">Upload</button>\n'
        '</form>\n'
        '<ul id="uploads" class="uploads"></ul>\n'
        '<p id="upload-status" class="visually-hidden" role="status"></p>\n'
        '</section>\n'
        '<section aria-labelledby="images-heading">\n'
        '<h2 id="images-heading">Newest first</h2>\n'
        f'<p id="list-status" class="note" role="status">{_e(status)}</p>\n'
        f'<ul{grid_attributes}>{tiles}</ul>\n'
        f'{older}{newest}'
        '</section>\n'
        '</main>\n'
    )
    return _document(
        static, title='Images · look', body=body, page='gallery', keys_required=keys_required
    )


def _image_page(
    static: StaticFiles,
    description: Mapping[str, Any],
    rows: list[tuple[tuple[int, int], list[str]]],
    *,
    formats: list[str],
    origin: str,
    keys_required: bool,
) -> str:
    """Render ``/view/{id}``: the image, links to copy, its sizes, and a delete button."""
    image_id = description['id']
    width, height = description['size']
    when = uploaded_at(description['modified'])
    alt = alt_text(description)
    page_url = origin + view_uri(image_id)
    image_url = origin + description['image']
    preview = _preview(description, rows)
    preview_url = origin + preview[0]
    modified = email.utils.parsedate_to_datetime(description['modified'])
    head = ''.join(
        f'<meta{_attributes(attributes)}>\n'
        for attributes in (
            {'property': 'og:type', 'content': 'website'},
            {'property': 'og:site_name', 'content': 'look'},
            {'property': 'og:title', 'content': f'Image uploaded {when}'},
            {'property': 'og:url', 'content': page_url},
            {'property': 'og:image', 'content': preview_url},
            {'property': 'og:image:type', 'content': 'image/jpeg'},
            {'property': 'og:image:width', 'content': preview[1][0]},
            {'property': 'og:image:height', 'content': preview[1][1]},
            {'property': 'og:image:alt', 'content': alt},
            {'name': 'twitter:card', 'content': 'summary_large_image'},
            {'name': 'twitter:title', 'content': f'Image uploaded {when}'},
            {'name': 'twitter:image', 'content': preview_url},
            {'name': 'twitter:image:alt', 'content': alt},
        )
    )
    head += f'<link rel="canonical" href="{_e(page_url)}">\n'
    links = (
        ('link-page', 'This page', page_url),
        ('link-image', 'The image (JPEG)', image_url),
        ('link-markdown', 'Markdown', f'[![{alt}]({preview_url})]({page_url})'),
    )
    link_rows = ''.join(
        f'<div class="copy"><label for="{name}">{_e(label)}</label>'
        f'<input id="{name}" type="text" readonly value="{_e(value)}">'
        f'<button type="button" data-copy="{name}" hidden>Copy</button></div>\n'
        for name, label, value in links
    )
    format_names = {'jpeg': 'JPEG', 'webp': 'WebP', 'avif': 'AVIF'}
    header_cells = ''.join(f'<th scope="col">{_e(format_names[f])}</th>' for f in formats)
    original_cells = ''.join(
        f'<td><a href="{_e(description["image"])}">original</a></td>'
        if f == 'jpeg'
        else '<td>—</td>'
        for f in formats
    )
    size_rows = (
        f'<tr><th scope="row">{width} &times; {height} (original)</th>{original_cells}</tr>\n'
    )
    for (thumb_width, thumb_height), paths in rows:
        cells = ''.join(
            f'<td><a href="{_e(path)}" aria-label="{thumb_width} by {thumb_height} '
            f'{format_names[f]}">{_e(format_names[f])}</a></td>'
            for f, path in zip(formats, paths, strict=True)
        )
        size_rows += f'<tr><th scope="row">{thumb_width} &times; {thumb_height}</th>{cells}</tr>\n'
    body = (
        '<main class="view">\n'
        '<p><a href="/">← All images</a></p>\n'
        f'<figure class="image" id="image" data-id="{_e(image_id)}">'
        f'{picture(description, sizes=VIEW_SIZES, lazy=False, with_original=True)}\n'
        f'<figcaption><h1>Uploaded <time datetime="{_e(modified.isoformat())}">'
        f'{_e(when)}</time></h1>'
        f'<p class="note">{width} &times; {height} pixels</p></figcaption>\n'
        '</figure>\n'
        '<p id="delete-status" class="note" role="status"></p>\n'
        '<section aria-labelledby="links-heading">\n'
        '<h2 id="links-heading">Links</h2>\n'
        f'{link_rows}'
        '<p id="copy-status" class="note" role="status"></p>\n'
        '</section>\n'
        '<section aria-labelledby="sizes-heading">\n'
        '<h2 id="sizes-heading">Sizes</h2>\n'
        '<table class="sizes">\n'
        f'<thead><tr><th scope="col">Pixels</th>{header_cells}</tr></thead>\n'
        f'<tbody>\n{size_rows}</tbody>\n</table>\n'
        '</section>\n'
        '<section id="delete" class="danger-zone" aria-labelledby="delete-heading" hidden>\n'
        '<h2 id="delete-heading">Delete</h2>\n'
        '<p>Deleting removes the image and every size of it for everyone.</p>\n'
        '<button type="button" id="delete-button" class="danger">Delete this image</button>\n'
        '</section>\n'
        '</main>\n'
    )
    return _document(
        static,
        title=f'Image uploaded {when} · look',
        body=body,
        page='image',
        keys_required=keys_required,
        head=head,
    )


def _preview(
    description: Mapping[str, Any], rows: list[tuple[tuple[int, int], list[str]]]
) -> tuple[str, tuple[int, int]]:
    """Return the JPEG a chat preview shows, and its size: the largest not wider than it shows."""
    width, height = description['size']
    candidates = [(description['image'], (width, height))]
    # Rows and the description's JPEG thumbnails are in the same order, largest first.
    candidates += zip(description['thumbnails'], (size for size, _ in rows), strict=True)
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
