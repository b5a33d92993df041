"""``/health``: whether look can serve, and the state of each part."""

from __future__ import annotations

from typing import Any

import falcon

from look.cache import RedisCache
from look.store import Store
from look.thumbnailer import Thumbnailer


class Health:
    """Report storage, cache and thumbnailer; 503 only when look cannot serve.

    Redis is only a cache, so a cache that is down leaves look healthy.
    """

    def __init__(self, store: Store, thumbnailer: Thumbnailer, cache: RedisCache | None) -> None:
        self._store = store
        self._thumbnailer = thumbnailer
        self._cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        storage_problem = self._store.check_writable()
        thumbnailer_problem = self._thumbnailer.check()
        report: dict[str, Any] = {
            'status': 'ok' if storage_problem is None and thumbnailer_problem is None else 'fail',
            'storage': _part(storage_problem, images=len(self._store)),
            'thumbnailer': _part(thumbnailer_problem, processes=self._thumbnailer.processes),
            'cache': self._cache_state(),
        }
        resp.media = report
        resp.cache_control = ['no-store']
        if report['status'] != 'ok':
            resp.status = falcon.HTTP_503
            resp.set_header('Retry-After', '5')

    on_head = on_get

    def _cache_state(self) -> dict[str, str]:
        if self._cache is None:
            return {'status': 'disabled'}
        if self._cache.ping():
            return {'status': 'ok'}
        return {'status': 'unavailable', 'detail': 'Redis does not answer; serving uncached.'}


def _part(problem: str | None, **facts: Any) -> dict[str, Any]:
    if problem is None:
        return {'status': 'ok', **facts}
    return {'status': 'fail', 'detail': problem, **facts}
