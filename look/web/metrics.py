"""Prometheus metrics: ``GET /metrics``, and the middleware that counts every request.

Under gunicorn, gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before any worker starts: every worker writes its own samples
there (prometheus_client's multiprocess mode), and ``/metrics`` in any
worker adds up all of them, so one scrape sees the whole server. Renders
are counted by the worker whose pool did them. Without that directory (an
app made in a test, say), an app's metrics are its own.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from look.core.index import Backlog
from look.web.auth import Access

MULTIPROCESS_DIR = 'PROMETHEUS_MULTIPROC_DIR'
_CONVERTER = re.compile(r':[^}]*}')
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RENDER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


class Metrics:
    """look's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.multiprocess = MULTIPROCESS_DIR in os.environ
        registry = self.registry = CollectorRegistry()
        self.http_requests = Counter(
            'look_http_requests',
            'HTTP requests answered, by route template, method and status.',
            ['route', 'method', 'status'],
            registry=registry,
        )
        self.http_seconds = Histogram(
            'look_http_request_duration_seconds',
            'Time from a request reaching look to its answer, by route template.',
            ['route'],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_requests = Counter(
            'look_cache_requests',
            'Cacheable requests answered from the cache (hit) or made afresh (miss).',
            ['result'],
            registry=registry,
        )
        self.uploads = Counter('look_uploads', 'Images stored.', registry=registry)
        self.upload_bytes = Counter(
            'look_upload_bytes', 'Request-body bytes of the images stored.', registry=registry
        )
        self.renders = Counter(
            'look_renders', 'Thumbnails rendered, by format.', ['format'], registry=registry
        )
        self.render_seconds = Histogram(
            'look_render_duration_seconds',
            'Time a render took, queue included, by format.',
            ['format'],
            buckets=_RENDER_BUCKETS,
            registry=registry,
        )
        self.thumbnailer_tasks = Gauge(
            'look_thumbnailer_tasks',
            'Image tasks (renders and conversions) waiting for or running in the pools.',
            registry=registry,
            multiprocess_mode='livesum',
        )
        self.thumbnailer_refusals = Counter(
            'look_thumbnailer_refusals',
            'Image tasks answered 503: too many waiting, over time, or a crashed process.',
            ['reason'],
            registry=registry,
        )
        self.pool_restarts = Counter(
            'look_thumbnailer_pool_restarts',
            'Image process pools rebuilt after a crash or a task over its time limit.',
            registry=registry,
        )
        self.redis_errors = Counter(
            'look_redis_errors',
            'Cache calls that failed (the request was answered uncached).',
            ['operation'],
            registry=registry,
        )
        self._backlog: _Backlog | None = None
        # PERF: labels() builds a key per call; these few combinations repeat.
        self._children: dict[tuple[str | None, str, Any], tuple[Any, Any]] = {}
        self._children_lock = threading.Lock()
        self._cache_children: dict[str, Any] = {}
        self._render_children: dict[str, tuple[Any, Any]] = {}

    # -- what the parts report --------------------------------------------------

    def render_done(self, format: str, seconds: float) -> None:
        """Count a finished render."""
        children = self._render_children.get(format)
        if children is None:
            children = self._render_children[format] = (
                self.renders.labels(format),
                self.render_seconds.labels(format),
            )
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def task_refused(self, reason: str) -> None:
        """Count an image task answered 503."""
        self.thumbnailer_refusals.labels(reason).inc()

    def pool_restarted(self) -> None:
        """Count a pool rebuilt after a crash or an overrun."""
        self.pool_restarts.inc()

    def tasks_changed(self, delta: int) -> None:
        """Follow the number of image tasks in flight."""
        self.thumbnailer_tasks.inc(delta)

    def cache_failed(self, operation: str) -> None:
        """Count a failed cache call."""
        self.redis_errors.labels(operation).inc()

    def cache_result(self, header: str) -> None:
        """Count a cacheable request by its X-Look-Cache header (``Hit`` or ``Miss``)."""
        child = self._cache_children.get(header)
        if child is None:
            child = self._cache_children[header] = self.cache_requests.labels(header.lower())
        child.inc()

    def stored(self, received: int) -> None:
        """Count a stored upload and the bytes its request carried."""
        self.uploads.inc()
        self.upload_bytes.inc(received)

    def watch_removals(self, read: Callable[[], Backlog]) -> None:
        """Report the list of objects to remove, as ``read()`` gives it at each scrape."""
        self._backlog = _Backlog(read)
        if not self.multiprocess:
            self.registry.register(self._backlog)

    # -- exposition -----------------------------------------------------------

    def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format (all processes', under gunicorn)."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            if self._backlog is not None:
                registry.register(self._backlog)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def _request_children(self, template: str | None, method: str, status: Any) -> tuple[Any, Any]:
        """Return the request counter's and the latency histogram's children for an answer.

        PERF: kept by route template and status as Falcon holds them, so only
          the first answer of each kind works out its labels (0.3 µs a request).
        """
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            route = _route_label(template)
            code = str(falcon.http_status_to_code(status))
            with self._children_lock:
                children = self._children[key] = (
                    self.http_requests.labels(route, method, code),
                    self.http_seconds.labels(route),
                )
        return children


class _Backlog(Collector):
    """The list of objects to remove, read from the index by the worker that answers the scrape.

    NOTE: the list is one for the whole deployment, in the index. A gauge
      each worker set would be counted once per worker in the multiprocess
      sum (and be as stale as its last update); read at the scrape, it is
      counted once, and current. Every host reports the same figures:
      aggregate hosts with max(), not sum().
    """

    def __init__(self, read: Callable[[], Backlog]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            backlog = self._read()
        except Exception:
            return  # the index does not answer: no sample rather than a wrong one
        yield GaugeMetricFamily(
            'look_removals_waiting',
            'Objects waiting to be removed: of deleted images, and what failed uploads left.',
            value=backlog.waiting,
        )
        yield GaugeMetricFamily(
            'look_removals_oldest_age_seconds',
            'How long the oldest object waiting to be removed has waited (0 when none).',
            value=backlog.oldest_seconds or 0.0,
        )


class MetricsMiddleware:
    """Count every request by route template, method and status, and time it."""

    def __init__(self, metrics: Metrics, cache_header: str) -> None:
        self._metrics = metrics
        self._cache_header = cache_header

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        # PERF: an attribute, not an item: Falcon's Context maps items onto
        #   its attributes in Python, 0.3 µs more each way.
        req.context.look_metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        started = getattr(req.context, 'look_metrics_started', None)
        if started is None:
            return
        count, seconds = self._metrics._request_children(req.uri_template, req.method, resp.status)
        count.inc()
        seconds.observe(time.perf_counter() - started)
        cached = resp.get_header(self._cache_header)
        if cached is not None:
            self._metrics.cache_result(cached)


@functools.lru_cache(maxsize=64)
def _route_label(template: str | None) -> str:
    """Return a route template without its converters: ``/images/{image_id}.jpeg``."""
    return _CONVERTER.sub('}', template) if template else 'unrouted'


class MetricsResource:
    """``GET /metrics``: open, or behind an API key where keys are set and it is not public."""

    def __init__(self, metrics: Metrics, access: Access, *, public: bool) -> None:
        self._metrics = metrics
        self._access = access
        self._public = public

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self._public:
            self._access.require_key(req, 'read the metrics')
        resp.content_type = CONTENT_TYPE_LATEST
        resp.cache_control = ['no-store']
        resp.data = self._metrics.exposition()
