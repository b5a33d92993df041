"""A bare Falcon app: the same work as look's, and nothing look adds (no middleware).

Served by the tests' ``Gunicorn(app='bench.bare:create_app()')``, so with look's
worker class, workers, threads and LOOK_PROCESSES. It answers one Redis GET,
streams a file (sendfile), renders with the Pillow limit in its own pool, or
stores an upload: writes it to a new file, converts it there (with its
placeholder), makes the JPEG and its name durable and lists it in an index,
a line appended and fsync'd. What look adds to an upload (its spool, an
admission queue, a delete token, the description with its srcsets, metrics,
the log) is not done here.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import falcon
import redis

from bench import limits
from look.config import Config
from look.core.files import fsync_directory
from look.imaging.formats import FORMAT_MEDIA_TYPES
from look.web.uploads import CHUNK_SIZE

_NAME = re.compile(r'[0-9A-Za-z][0-9A-Za-z_.-]*\Z')


class Bare:
    """Every route's responder; each does only what its work needs."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        url = environ.get('BENCH_BARE_REDIS_URL')
        self._redis = redis.Redis.from_url(url) if url else None
        self._key_prefix = environ.get('BENCH_BARE_KEY_PREFIX', '')
        self._files = pathlib.Path(environ.get('BENCH_BARE_FILES', '.'))
        self._uploads = environ.get('BENCH_BARE_UPLOADS', '.')
        self._processes = Config(environ).processes  # as large as look's pool
        self._index_path = os.path.join(self._uploads, 'index.jsonl')
        self._lock = threading.Lock()
        self._pool: Any = None
        self._index: int | None = None

    def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        with self._lock:  # started after gunicorn's fork, as look's
            self._pool = self._pool or limits.start_pool(self._processes)
        return self._pool.submit(function, *args).result()

    def _list(self, converted: limits.Converted) -> dict[str, Any]:
        """Make a converted upload's name durable, then list it: a line appended and fsync'd."""
        fsync_directory(pathlib.Path(self._uploads))
        thumbhash, color = converted.placeholder
        entry = {
            'id': os.path.basename(converted.path),
            'modified': int(time.time()),
            'size': list(converted.size),
            'thumbhash': thumbhash,
            'color': color,
        }
        with self._lock:  # opened after gunicorn's fork, and held
            if self._index is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._index = os.open(self._index_path, flags, 0o644)
        # NOTE: one write of a whole line, to a file opened O_APPEND: lines of
        #   threads and workers never interleave.
        os.write(self._index, json.dumps(entry).encode() + b'\n')
        os.fsync(self._index)
        return entry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = []  # GET /images: what the tests' Gunicorn waits for

    def on_get_cached(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        data = self._redis.get(self._key_prefix + key) if self._redis else None
        if data is None:
            raise falcon.HTTPNotFound()
        resp.content_type = FORMAT_MEDIA_TYPES.get(key.rpartition('.')[2], 'image/jpeg')
        resp.data = data

    def on_get_file(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if not _NAME.match(name):
            raise falcon.HTTPNotFound()
        try:
            stream = open(self._files / name, 'rb')  # noqa: SIM115 (closed by the server)
        except FileNotFoundError:
            raise falcon.HTTPNotFound() from None
        resp.content_type = 'image/jpeg'
        resp.content_length = os.fstat(stream.fileno()).st_size
        resp.stream = stream

    def on_get_rendered(
        self, req: falcon.Request, resp: falcon.Response, name: str, format: str, **size: int
    ) -> None:
        if not _NAME.match(name) or format not in FORMAT_MEDIA_TYPES:
            raise falcon.HTTPNotFound()
        resp.content_type = FORMAT_MEDIA_TYPES[format]
        thumbnail = (size['width'], size['height'])
        resp.data = self._run(limits.render, str(self._files / name), thumbnail, format)

    def on_post_converted(self, req: falcon.Request, resp: falcon.Response, limit: str) -> None:
        if limit not in limits.UPLOADS:
            raise falcon.HTTPNotFound()
        path = limits.new_path(self._uploads)  # nothing deleted, as in the limit
        with open(path, 'xb') as out:
            shutil.copyfileobj(req.bounded_stream, out, CHUNK_SIZE)
        converted = self._run(limits.UPLOADS[limit], path, None)
        limits.fsync(converted)
        resp.status = falcon.HTTP_201
        resp.media = self._list(converted)


def create_app(environ: Mapping[str, str] | None = None) -> falcon.App:
    """Create the bare app from ``BENCH_BARE_*`` settings (``os.environ`` unless given)."""
    bare = Bare(os.environ if environ is None else environ)
    app = falcon.App()
    app.add_route('/images', bare)
    app.add_route('/cached/{key}', bare, suffix='cached')
    app.add_route('/files/{name}', bare, suffix='file')
    app.add_route('/rendered/{name}/{width:int}x{height:int}.{format}', bare, suffix='rendered')
    app.add_route('/converted/{limit}', bare, suffix='converted')
    return app
