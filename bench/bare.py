"""Bare Falcon apps: the floor that look's cache hits and downloads are measured against.

Started under the same ``gunicorn -c gunicorn.conf.py`` as look, as
``bench.bare:create_app()``; they do only what the work needs and nothing
look adds (no middleware, no store, no index):

- ``GET /cached/{key}``: one Redis GET of ``BENCH_BARE_KEY_PREFIX + key``,
  answered as the bytes stored there, typed by the key's extension;
- ``GET /files/{name}``: the file ``BENCH_BARE_FILES/name``, streamed the way
  Falcon streams any file (``wsgi.file_wrapper``, so gunicorn's sendfile);
- ``GET /rendered/{name}/{width}x{height}.{format}``: the Pillow limit's render
  of the file ``BENCH_BARE_FILES/name`` as JPEG, WebP or AVIF, in this worker's
  own pool as look renders in its own: what any app under this gunicorn pays
  for an uncached thumbnail;
- ``POST /converted``: the body written to a new file in ``BENCH_BARE_UPLOADS``
  and turned into a JPEG there by the Pillow limit's conversion, in the same
  pool, then fsync'd: what any app under this gunicorn pays to take an
  upload, without look's index or the rest of its durable commit.

Pools are as large as gunicorn.conf.py makes look's (LOOK_PROCESSES).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from typing import Any

import falcon
import redis

from bench import limits
from look.config import Config
from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.web.uploads import CHUNK_SIZE

_NAME = re.compile(r'[0-9A-Za-z][0-9A-Za-z_.-]*\Z')


class CachedBytes:
    """Answer the bytes stored under one Redis key, after one GET."""

    def __init__(self, client: Any, key_prefix: str) -> None:
        self._client = client
        self._key_prefix = key_prefix

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        data = self._client.get(self._key_prefix + key)
        if data is None:
            raise falcon.HTTPNotFound()
        resp.content_type = _media_type(key)
        resp.data = data


class Files:
    """Stream a file from one directory."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._directory = directory

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not _NAME.match(name):
            raise falcon.HTTPNotFound()
        try:
            stream = open(self._directory / name, 'rb')  # noqa: SIM115 (closed by the server)
        except FileNotFoundError:
            raise falcon.HTTPNotFound() from None
        resp.content_type = 'image/jpeg'
        resp.content_length = os.fstat(stream.fileno()).st_size
        resp.stream = stream


class Pool:
    """The Pillow limit's pool, as large as look's and started in the worker as look's is."""

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._lock = threading.Lock()
        self._pool: Any = None

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self._pool is None:  # after gunicorn's fork
                self._pool = limits.start_pool(self._processes)
        return self._pool.submit(function, *args).result()


class Rendered:
    """Render a file with the Pillow limit's function in the worker's pool."""

    def __init__(self, directory: pathlib.Path, pool: Pool) -> None:
        self._directory = directory
        self._pool = pool

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        name: str,
        width: int,
        height: int,
        format: str,
    ) -> None:
        if not _NAME.match(name) or format not in FORMAT_MEDIA_TYPES:
            raise falcon.HTTPNotFound()
        resp.content_type = FORMAT_MEDIA_TYPES[format]
        resp.data = self._pool.run(
            limits.render, str(self._directory / name), (width, height), format
        )


class Converted:
    """Write the body to a new file and convert it there with the Pillow limit's function."""

    def __init__(self, directory: pathlib.Path, pool: Pool) -> None:
        self._directory = directory
        self._pool = pool

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        path = limits.new_path(str(self._directory))  # nothing deleted, as in the limit
        with open(path, 'xb') as out:
            shutil.copyfileobj(req.bounded_stream, out, CHUNK_SIZE)
        converted = self._pool.run(limits.convert, path, None)
        limits.fsync_converted(converted)
        width, height = converted[1]
        resp.status = falcon.HTTP_201
        resp.media = {'size': [width, height]}


def _media_type(name: str) -> str:
    return FORMAT_MEDIA_TYPES.get(name.rpartition('.')[2], 'application/octet-stream')


def create_app(environ: Mapping[str, str] | None = None) -> falcon.App:
    """Create the bare app from ``BENCH_BARE_REDIS_URL``, ``_KEY_PREFIX`` and ``_FILES``."""
    environ = os.environ if environ is None else environ
    app = falcon.App()
    redis_url = environ.get('BENCH_BARE_REDIS_URL')
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        app.add_route(
            '/cached/{key}', CachedBytes(client, environ.get('BENCH_BARE_KEY_PREFIX', ''))
        )
    pool = Pool(Config(environ).processes)  # as large as look's
    files = environ.get('BENCH_BARE_FILES')
    if files:
        app.add_route('/files/{name}', Files(pathlib.Path(files)))
        app.add_route(
            '/rendered/{name}/{width:int}x{height:int}.{format}',
            Rendered(pathlib.Path(files), pool),
        )
    uploads = environ.get('BENCH_BARE_UPLOADS')
    if uploads:
        app.add_route('/converted', Converted(pathlib.Path(uploads), pool))
    return app
