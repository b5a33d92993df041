"""Bare Falcon apps: the floor that look's cache hits and downloads are measured against.

Started under the same ``gunicorn -c gunicorn.conf.py`` as look, as
``bench.bare:create_app()``; they do only what the work needs and nothing
look adds (no middleware, no store, no index):

- ``GET /cached/{key}``: one Redis GET of ``BENCH_BARE_KEY_PREFIX + key``,
  answered as the bytes stored there;
- ``GET /files/{name}``: the file ``BENCH_BARE_FILES/name``, streamed the way
  Falcon streams any file (``wsgi.file_wrapper``, so gunicorn's sendfile);
- ``GET /rendered/{name}/{width}x{height}``: the Pillow limit's render of the
  file ``BENCH_BARE_FILES/name``, in this worker's own pool as look renders in
  its own: what any app under this gunicorn pays for an uncached thumbnail.
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import falcon
import redis

from bench import limits

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
        resp.content_type = 'image/jpeg'
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


class Rendered:
    """Render a file with the Pillow limit's function in a pool of this worker's own."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._pool: Any = None

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, name: str, width: int, height: int
    ) -> None:
        if not _NAME.match(name):
            raise falcon.HTTPNotFound()
        with self._lock:
            if self._pool is None:  # after gunicorn's fork, as look's pool is
                self._pool = limits.start_pool()
        future = self._pool.submit(limits.render, str(self._directory / name), (width, height))
        resp.content_type = 'image/jpeg'
        resp.data = future.result()


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
    files = environ.get('BENCH_BARE_FILES')
    if files:
        app.add_route('/files/{name}', Files(pathlib.Path(files)))
        app.add_route('/rendered/{name}/{width:int}x{height:int}', Rendered(pathlib.Path(files)))
    return app
