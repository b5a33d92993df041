"""``/health``: whether look can serve, and the state of each part.

``status`` is ``ok``, ``degraded`` (look serves, but something needs an
operator: a full or read-only disk, a damaged index, quarantined files, a
cache that is down, objects waiting too long to be removed) or ``fail``.
Only ``fail`` is a 503, so a load balancer keeps a host that can still serve
downloads. Nothing here writes to disk.
"""

from __future__ import annotations

from typing import Any

import falcon

from look.core.library import Library
from look.core.removals import OVERDUE_AFTER
from look.imaging.pool import Thumbnailer
from look.web.cache import RedisCache


class Health:
    """Report index, storage, thumbnailer and cache; 503 only when look cannot serve."""

    def __init__(
        self, library: Library, thumbnailer: Thumbnailer, cache: RedisCache | None
    ) -> None:
        self._library = library
        self._thumbnailer = thumbnailer
        self._cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        index = self._index_state()
        parts = {
            'index': index,
            'storage': self._library.images.state(),
            'removals': self._removals_state(index['status'] != 'fail'),
            'thumbnailer': self._thumbnailer_state(),
            'cache': self._cache_state(),
        }
        statuses = {part['status'] for part in parts.values()}
        if 'fail' in statuses:
            status = 'fail'
        elif statuses <= {'ok', 'disabled'}:
            status = 'ok'
        else:
            status = 'degraded'
        resp.media = {'status': status, **parts}
        resp.cache_control = ['no-store']
        if status == 'fail':
            resp.status = falcon.HTTP_503
            resp.set_header('Retry-After', '5')

    on_head = on_get

    def _index_state(self) -> dict[str, Any]:
        index = self._library.index
        problem = index.check()
        if problem is not None:
            return {'status': 'fail', 'detail': problem}
        state: dict[str, Any] = {'status': 'ok', 'images': index.count()}
        problems = index.problems()
        if problems:
            state.update(
                status='damaged',
                detail='Damaged index records were skipped; run `python -m look check`.',
                problems=problems,
            )
        return state

    def _removals_state(self, readable: bool) -> dict[str, Any]:
        """Report the objects waiting to be removed: how many, and the oldest's wait in seconds."""
        if readable:
            try:
                backlog = self._library.removal_backlog()
            except Exception:
                readable = False
        if not readable:
            return {'status': 'unknown', 'detail': 'The index does not answer now.'}
        state: dict[str, Any] = {'status': 'ok', 'waiting': backlog.waiting}
        if backlog.oldest_seconds is not None:
            state['oldest_seconds'] = round(backlog.oldest_seconds, 1)
            if backlog.oldest_seconds > OVERDUE_AFTER:
                state.update(
                    status='overdue',
                    detail='Objects have waited to be removed for longer than they should: '
                    'the object store refuses or does not answer removals. look keeps trying.',
                )
        return state

    def _thumbnailer_state(self) -> dict[str, Any]:
        problem = self._thumbnailer.check()
        state: dict[str, Any] = {'status': 'ok', 'processes': self._thumbnailer.processes}
        if problem is not None:
            state.update(status='fail', detail=problem)
        return state

    def _cache_state(self) -> dict[str, str]:
        if self._cache is None:
            return {'status': 'disabled'}
        if self._cache.ping():
            return {'status': 'ok'}
        return {'status': 'unavailable', 'detail': 'Redis does not answer; serving uncached.'}
