"""Falcon resources for images and thumbnails: parse, call library and thumbnailer, respond."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import falcon

from look.core.imagestore import Original
from look.core.index import StoredImage
from look.core.library import Library
from look.core.spool import Spool, SpoolFile
from look.errors import (
    BackendUnavailable,
    CorruptImage,
    EmptyUpload,
    ImageNotFound,
    ImageTooComplex,
    ImageTooLarge,
    LookError,
    StorageError,
    ThumbnailerUnavailable,
    TooManyUploads,
    UnsupportedImage,
    UploadTooLarge,
    refused_writes,
)
from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.imaging.pool import Thumbnailer
from look.imaging.renditions import Renditions
from look.web.auth import Access, new_delete_token
from look.web.conditional import answer_not_modified, is_not_modified, set_immutable
from look.web.errors import nearest, prefers_html
from look.web.metrics import Metrics
from look.web.thumbnails import LargeThumbnails
from look.web.uploads import (
    MAX_ALT_CHARS,
    MAX_FORM_FILES,
    AltTooLong,
    Receiver,
    TooManyFiles,
    checked_alt,
    is_form,
)

log = logging.getLogger(__name__)

MIN_PAGE_SIZE = 1
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# The orders a list comes in; the first is the default.
ORDERS = ('oldest', 'newest')


def image_uri(image_id: str) -> str:
    return f'/images/{image_id}.jpeg'


def animation_uri(image_id: str) -> str:
    """Return the URL of an animation's animated WebP (its ``.jpeg`` is the first frame)."""
    return f'/images/{image_id}.webp'


def describe(image: StoredImage, renditions: Renditions) -> dict[str, Any]:
    """Return the JSON description of an image: its URLs, size and thumbnails in every format."""
    sizes = renditions.sizes(image.size)
    # PERF: each rendition's path made once, and lists joined rather than
    #   generators: a quarter less (16 000 instructions for a 640x360 upload),
    #   for every image of a list page too.
    widths = [f' {width}w' for width, _height in sizes]
    paths = {
        format: [renditions.rendition(image.id, size, format).path for size in sizes]
        for format in renditions.formats
    }
    jpegs = paths.get('jpeg')
    if jpegs is None:
        jpegs = [renditions.rendition(image.id, size, 'jpeg').path for size in sizes]
    description: dict[str, Any] = {
        'id': image.id,
        'image': image_uri(image.id),
        'modified': image.modified_http,
        'size': list(image.size),
        'alt': image.alt,
        'thumbnails': jpegs,
        'formats': {
            format: {
                'type': FORMAT_MEDIA_TYPES[format],
                'srcset': ', '.join(
                    [path + width for path, width in zip(in_format, widths, strict=True)]
                ),
            }
            for format, in_format in paths.items()
        },
    }
    if image.thumbhash:
        description['placeholder'] = {'thumbhash': image.thumbhash, 'color': image.color}
    if image.animated:
        description['animation'] = {
            'frames': image.frames,
            'duration_ms': image.duration_ms,
            'url': animation_uri(image.id),
        }
    return description


class Images:
    """``/images`` (list, upload) and ``/images/{id}.jpeg`` (download, describe, delete)."""

    def __init__(
        self,
        library: Library,
        thumbnailer: Thumbnailer,
        renditions: Renditions,
        access: Access,
        *,
        spool: Spool,
        receiver: Receiver,
        uuid_generator: Callable[[], uuid.UUID],
        metrics: Metrics,
        large: LargeThumbnails,
    ) -> None:
        self._metrics = metrics
        self._large = large
        self._library = library
        self._thumbnailer = thumbnailer
        self._renditions = renditions
        self._access = access
        self._spool = spool
        self._receiver = receiver
        self._uuid_generator = uuid_generator

    # -- /images ------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._access.require_key(req, 'list images')
        limit = req.get_param_as_int('limit', min_value=MIN_PAGE_SIZE, max_value=MAX_PAGE_SIZE)
        after = req.get_param('after')
        order = req.get_param('order', default=ORDERS[0])
        if order not in ORDERS:
            raise falcon.HTTPInvalidParam('The value must be "oldest" or "newest".', 'order')
        if after is not None:
            try:
                after = str(uuid.UUID(after))
            except ValueError:
                raise falcon.HTTPInvalidParam('The value must be an image id.', 'after') from None
        page_size = limit or DEFAULT_PAGE_SIZE
        try:
            page = self._library.page(
                after=after, limit=page_size + 1, newest_first=order == 'newest'
            )
        except ImageNotFound:
            raise falcon.HTTPInvalidParam(
                f'No image has the id {after}; use an id from the previous page.', 'after'
            ) from None
        if len(page) > page_size:
            page = page[:page_size]
            # RFC 8288: the next page starts after the last image of this one.
            ordering = '&order=newest' if order == 'newest' else ''
            next_uri = f'/images?limit={page_size}{ordering}&after={page[-1].id}'
            resp.append_header('Link', f'<{next_uri}>; rel="next"')
        resp.media = [describe(image, self._renditions) for image in page]

    on_head = on_get

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # NOTE: the 401 goes out before any of the body is read, and the read
        #   side stays open: gunicorn then reads at most 64 KiB of the unread
        #   body and closes. With the read side shut, its drain could see an
        #   early end, keep the connection and read the whole body after all.
        who = self._access.require_key(req, 'upload images')
        if is_form(req) and prefers_html(req):
            self._post_form(req, resp, who)
            return
        with contextlib.ExitStack() as cleanup, refused_writes():
            upload = self._spool.create()
            cleanup.callback(upload.close)
            received = self._receiver.receive(req, upload.file)
            image, token = self._store(upload, received.alt, received.length, who)
        resp.status = falcon.HTTP_201
        resp.location = image_uri(image.id)
        resp.media = {**describe(image, self._renditions), 'delete_token': token}

    def _post_form(self, req: falcon.Request, resp: falcon.Response, who: str) -> None:
        """Store every file of a browser's form post; 303 to the page that shows what came of each.

        NOTE: a page without a script posts the form itself, and a person
        reads the answer: the JSON of one image (with its delete token in
        it) is no page for them, and a form of several files is several
        images. Each file is stored or refused on its own.
        """
        stored: list[str] = []
        refused: list[tuple[str, str]] = []
        with contextlib.ExitStack() as cleanup:
            files = self._receiver.receive_files(req, self._spool.create)
            for file in files:
                if file.spooled is not None:
                    cleanup.callback(file.spooled.close)
            for file in files:
                if file.error is None and file.spooled is not None:
                    try:
                        with refused_writes():
                            image, _token = self._store(file.spooled, file.alt, file.length, who)
                    except LookError as ex:
                        file.error = ex
                    else:
                        stored.append(image.id)
                        continue
                assert file.error is not None
                log.info('refused %r of a form post: %s', file.filename, file.error)
                refused.append((file.filename, refusal_reason(file.error)))
        query = [('image', image_id) for image_id in stored]
        query += [
            pair
            for name, reason in refused[:MAX_FORM_FILES]
            for pair in (('refused', _shortened_name(name)), ('why', reason))
        ]
        if len(refused) > MAX_FORM_FILES:
            query.append(('more', str(len(refused) - MAX_FORM_FILES)))
        resp.status = falcon.HTTP_303
        resp.location = '/uploaded?' + urllib.parse.urlencode(query)
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = f'{len(stored)} of {len(files)} files stored; see {resp.location}\n'

    def _store(
        self, upload: SpoolFile, alt: str, received: int, who: str
    ) -> tuple[StoredImage, str]:
        """Convert a received upload and add it to the library; return it and its delete token."""
        image_id = str(self._uuid_generator())
        token, token_hash = new_delete_token()
        with contextlib.ExitStack() as cleanup:
            animation_path = self._spool.companion(upload)
            # NOTE: a conversion that returns has left an animation there only
            #   if it has frames (the pool removes one it refuses), and the
            #   adopted file is removed on close: no unlink per upload, only
            #   for one that failed or was given up on mid-way.
            try:
                converted = self._thumbnailer.convert_upload(upload.path, animation_path)
                animation = None
                if converted.frames:
                    animation = self._spool.adopt(animation_path)
            except BaseException:
                _remove(animation_path)
                raise
            if animation is not None:
                cleanup.callback(animation.close)
            length = os.fstat(upload.file.fileno()).st_size
            image = StoredImage(
                image_id,
                int(time.time()),
                converted.size,
                length,
                token_hash,
                alt=alt,
                thumbhash=converted.thumbhash,
                color=converted.color,
                frames=converted.frames,
                duration_ms=converted.duration_ms,
            )
            self._library.add(image, upload, animation)
        self._metrics.stored(received)
        log.info(
            'stored image %s: %dx%d, %d bytes (%d received), by %s',
            image.id,
            *image.size,
            length,
            received,
            who,
        )
        return image, token

    # -- /images/{id}.jpeg --------------------------------------------------

    def on_get_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            _send(resp, self._library.open_original(image))

    def on_head_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id)
        if image is not None:
            if image.length:
                resp.content_length = image.length
                return
            # Falcon drops a HEAD body without closing it: don't leave one.
            original = self._library.open_original(image)
            original.stream.close()
            resp.content_length = original.length

    # -- /images/{id}.webp --------------------------------------------------

    def on_get_animation(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id, animation=True)
        if image is not None:
            _send(resp, self._library.open_animation(image))

    def on_head_animation(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        image = self._validated(req, resp, image_id, animation=True)
        if image is not None:
            # Falcon drops a HEAD body without closing it: don't leave one.
            original = self._library.open_animation(image)
            original.stream.close()
            resp.content_length = original.length

    def on_delete_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        # With keys set, the anonymous hear 401 whether or not the image exists.
        self._access.require_credential(req, 'delete an image')
        image = self._library.get(image_id)
        who = self._access.may_delete(req, image)
        try:
            self._library.delete(image.id)
        except StorageError as ex:
            raise refused_delete(ex, listed=self._lists(image.id)) from ex
        log.info('deleted image %s: %dx%d, by %s', image.id, *image.size, who)
        self._large.discard(image.id)
        # Cached thumbnails of this image are stale on every worker now.
        resp.context.stale_keys = [
            rendition.cache_key
            for rendition in self._renditions.every_cached(image.id, image.size)
        ]
        resp.status = falcon.HTTP_204

    def on_patch_image(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        """Change an image's alt text: whoever may delete the image may describe it."""
        self._access.require_credential(req, 'change an image')
        image = self._library.get(image_id)
        who = self._access.may_delete(req, image, 'change')
        alt = _alt_from_patch(req)
        image = self._library.amend(image.id, alt=alt)
        log.info(
            'changed the alt text of image %s (%d characters), by %s', image.id, len(alt), who
        )
        resp.media = describe(image, self._renditions)

    def _lists(self, image_id: str) -> bool:
        try:
            self._library.get(image_id)
        except ImageNotFound:
            return False
        return True

    def _validated(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        image_id: str,
        *,
        animation: bool = False,
    ) -> StoredImage | None:
        """Set the headers of an original; return None if a 304 answers the request.

        An animation's WebP has an ETag of its own: its bytes are not the JPEG's.
        """
        image = self._library.get(image_id)
        if animation:
            if not image.animated:
                self._library.open_animation(image)  # raises ImageNotFound, saying why
            resp.content_type = 'image/webp'
            etag = f'{image.id}-animation'
        else:
            resp.content_type = 'image/jpeg'
            etag = image.id
        set_immutable(resp, etag=etag, last_modified=image.modified_http)
        if is_not_modified(req, resp):
            answer_not_modified(resp)
            return None
        return image


def _send(resp: falcon.Response, original: Original) -> None:
    """Answer with a stored object's bytes."""
    resp.content_length = original.length
    # NOTE: Falcon hands a stream with read() to the server's
    #   wsgi.file_wrapper, so gunicorn sends a file with sendfile().
    resp.stream = original.stream


def _remove(path: os.PathLike[str]) -> None:
    """Remove a file the pool may have written for an upload."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# The most bytes of a PATCH body: {"alt": ...} of MAX_ALT_CHARS characters, each
# at its longest in JSON (\\uXXXX\\uXXXX, 12 bytes), and room for spaces.
MAX_PATCH_BYTES = 12 * MAX_ALT_CHARS + 1024


def _alt_from_patch(req: falcon.Request) -> str:
    """Return the alt text a PATCH body asks for, or raise 400, 413 or 415 saying why."""
    if req.content_length is not None and req.content_length > MAX_PATCH_BYTES:
        raise falcon.HTTPContentTooLarge(
            title='Request too large',
            description=f'A change is a JSON object of at most {MAX_PATCH_BYTES} bytes.',
        )
    media_type = (req.content_type or '').partition(';')[0].strip().lower()
    if media_type not in ('application/json', 'application/merge-patch+json'):
        raise falcon.HTTPUnsupportedMediaType(
            title='Unsupported media type',
            description='Send the change as JSON: {"alt": "what the image shows"}.',
        )
    data = req.bounded_stream.read(MAX_PATCH_BYTES + 1)
    if len(data) > MAX_PATCH_BYTES:
        raise falcon.HTTPContentTooLarge(
            title='Request too large',
            description=f'A change is a JSON object of at most {MAX_PATCH_BYTES} bytes.',
        )
    try:
        change = json.loads(data)
    except ValueError:
        raise falcon.HTTPBadRequest(
            title='Malformed JSON', description='The body is not JSON: send {"alt": "..."}.'
        ) from None
    if not isinstance(change, dict) or set(change) != {'alt'}:
        raise falcon.HTTPBadRequest(
            title='Nothing to change',
            description='Send a JSON object with one member, "alt", the only thing that changes.',
        )
    if not isinstance(change['alt'], str):
        raise falcon.HTTPBadRequest(
            title='Malformed alt text', description='"alt" must be a string ("" removes it).'
        )
    return checked_alt(change['alt'])


# NOTE: the most bytes a refused file's name takes in the address of the page
#   that names it: 20 ids and 20 such names stay within the 4 094 bytes of a
#   request line that gunicorn (and most proxies) take.
MAX_NAME_IN_ADDRESS = 90


def _shortened_name(name: str) -> str:
    """Return a file name short enough for an address (MAX_NAME_IN_ADDRESS), ending in … if cut."""
    if len(urllib.parse.quote_plus(name)) <= MAX_NAME_IN_ADDRESS:
        return name
    while len(urllib.parse.quote_plus(name + '…')) > MAX_NAME_IN_ADDRESS:
        name = name[:-1]
    return name + '…'


def refusal_reason(error: LookError) -> str:
    """Return the word a form's page reads why a file was refused by (``REFUSAL_REASONS``)."""
    return nearest(REFUSAL_REASONS, type(error), 'failed')


# Why a file of a form post was refused, in a word the page that shows it reads;
# the page gives its own words for each, never text from its address.
REFUSAL_REASONS: dict[type[LookError], str] = {
    AltTooLong: 'alt',
    TooManyFiles: 'too-many',
    UploadTooLarge: 'too-large',
    ImageTooLarge: 'too-many-pixels',
    UnsupportedImage: 'unsupported',
    EmptyUpload: 'corrupt',
    CorruptImage: 'corrupt',
    ImageTooComplex: 'complex',
    TooManyUploads: 'busy',
    ThumbnailerUnavailable: 'busy',
    BackendUnavailable: 'busy',
    StorageError: 'storage',
}


def refused_delete(ex: StorageError, *, listed: bool) -> StorageError:
    """Return the error of a delete the disk refused, saying what happened to the image."""
    cause = ex.__cause__ if isinstance(ex.__cause__, OSError) else None
    code = cause.errno if cause is not None else None
    if code == errno.EROFS:
        why = 'the storage is read-only'
    elif code in (errno.ENOSPC, errno.EDQUOT):
        why = 'the disk is full'
    else:
        why = f'the disk refused the write ({cause.strerror if cause is not None else ex})'
    # NOTE: the index refuses first, so the image stays; only a line that
    #   was written but could not be taken back leaves it deleted after all.
    outcome = 'nothing changed' if listed else 'it is deleted all the same'
    return StorageError(f'The image could not be deleted because {why}; {outcome}.')
