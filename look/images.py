"""Falcon resources: parse the request, call the store and thumbnailer, fill the response."""

from __future__ import annotations

import email.utils
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

import falcon

from look.errors import EmptyUpload, ImageNotFound, UploadTooLarge
from look.store import Store, StoredImage
from look.thumbnailer import Thumbnailer, thumbnail_sizes

CHUNK_SIZE = 64 * 1024


class Images:
    """``/images`` (list, upload) and ``/images/{id}.jpeg`` (download)."""

    def __init__(
        self,
        store: Store,
        thumbnailer: Thumbnailer,
        *,
        uuid_generator: Callable[[], uuid.UUID],
        max_upload_bytes: int,
        min_thumb_size: int,
    ) -> None:
        self._store = store
        self._thumbnailer = thumbnailer
        self._uuid_generator = uuid_generator
        self._max_upload_bytes = max_upload_bytes
        self._min_thumb_size = min_thumb_size

    def describe(self, image: StoredImage) -> dict[str, Any]:
        """Return the JSON description of an image."""
        return {
            'id': image.id,
            'image': f'/images/{image.id}.jpeg',
            'modified': email.utils.formatdate(image.modified, usegmt=True),
            'size': list(image.size),
            'thumbnails': [
                f'/thumbnails/{image.id}/{width}x{height}.jpeg'
                for width, height in thumbnail_sizes(image.size, self._min_thumb_size)
            ],
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = [self.describe(image) for image in self._store.list()]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        length = req.content_length
        if length is not None and length > self._max_upload_bytes:
            raise UploadTooLarge(self._too_large_message())

        image_id = str(self._uuid_generator())
        upload = self._store.temporary()
        converted = self._store.temporary()
        try:
            self._receive(req, upload.file)
            size = self._thumbnailer.convert_upload(upload.path, converted.path)
            image = self._store.add(image_id, converted.path, size)
        finally:
            upload.close()
            converted.close()

        resp.status = falcon.HTTP_201
        resp.location = f'/images/{image.id}.jpeg'
        resp.media = self.describe(image)

    def on_get_image(
        self, req: falcon.Request, resp: falcon.Response, image_id: uuid.UUID
    ) -> None:
        image = self._store.get(str(image_id))
        try:
            stream = open(self._store.path(image.id), 'rb')  # noqa: SIM115 (closed by the server)
        except FileNotFoundError:
            raise ImageNotFound(f'No image has the id {image.id}.') from None
        resp.content_type = 'image/jpeg'
        resp.content_length = _file_size(stream)
        # NOTE: Falcon hands a stream with read() to the server's
        #   wsgi.file_wrapper, so gunicorn sends the file with sendfile().
        resp.stream = stream

    # -- upload body --------------------------------------------------------

    def _receive(self, req: falcon.Request, out: IO[bytes]) -> None:
        """Stream the uploaded image into ``out``, a chunk at a time."""
        if req.content_type and req.content_type.lower().startswith('multipart/form-data'):
            received = self._receive_multipart(req, out)
        else:
            received = self._copy(req.bounded_stream, out)
        if received == 0:
            raise EmptyUpload('The request body is empty; send the image as the body.')
        out.flush()

    def _receive_multipart(self, req: falcon.Request, out: IO[bytes]) -> int:
        # The field named "image" wins; otherwise the first file part.
        received = None
        for part in req.get_media():
            is_image_field = part.name == 'image'
            if is_image_field or (received is None and part.filename):
                out.seek(0)
                out.truncate()
                received = self._copy(part.stream, out)
                if is_image_field:
                    break
        if received is None:
            raise EmptyUpload(
                'The form has no file; send the image in a field named "image" '
                '(curl -F image=@photo.jpg).'
            )
        return received

    def _copy(self, stream: IO[bytes], out: IO[bytes]) -> int:
        received = 0
        while chunk := stream.read(CHUNK_SIZE):
            received += len(chunk)
            if received > self._max_upload_bytes:
                raise UploadTooLarge(self._too_large_message())
            out.write(chunk)
        return received

    def _too_large_message(self) -> str:
        return f'The upload is larger than the limit of {self._max_upload_bytes} bytes.'


class Thumbnails:
    """``/thumbnails/{id}/{width}x{height}.jpeg``: rendered on demand."""

    def __init__(self, store: Store, thumbnailer: Thumbnailer, *, min_thumb_size: int) -> None:
        self._store = store
        self._thumbnailer = thumbnailer
        self._min_thumb_size = min_thumb_size

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        image_id: uuid.UUID,
        width: int,
        height: int,
    ) -> None:
        image = self._store.get(str(image_id))
        # NOTE: only the listed sizes are rendered; arbitrary sizes would let
        #   anyone keep the pool busy (and fill the cache) at will.
        if (width, height) not in thumbnail_sizes(image.size, self._min_thumb_size):
            raise ImageNotFound(
                f'{width}x{height} is not a thumbnail size of image {image.id}; '
                'its "thumbnails" list has the sizes there are.'
            )
        resp.content_type = 'image/jpeg'
        resp.data = self._thumbnailer.render(self._store.path(image.id), (width, height))


def _file_size(stream: IO[bytes]) -> int:
    return os.fstat(stream.fileno()).st_size
