"""The application factory: picks the backends, builds the parts from one Config, wires routes."""

from __future__ import annotations

import logging
import pathlib

import falcon

from look.config import Config, ConfigError, without_password
from look.core.backends import is_local, open_library
from look.core.diskcache import DiskCache
from look.core.spool import Spool
from look.core.upkeep import check
from look.imaging.formats import THUMBNAIL_FORMATS, encoding_tag
from look.imaging.pool import Thumbnailer
from look.imaging.renditions import Renditions
from look.web.auth import Access
from look.web.cache import CACHE_HEADER, RedisCache
from look.web.errors import add_error_handlers
from look.web.gallery import Gallery, StaticFiles
from look.web.guards import Guard, Hosts
from look.web.health import Health
from look.web.images import Images
from look.web.metrics import Metrics, MetricsMiddleware, MetricsResource
from look.web.openapi import OpenAPI, openapi_document
from look.web.routes import CONVERTERS, near_miss
from look.web.thumbnails import LargeThumbnails, Thumbnails
from look.web.uploads import Receiver

log = logging.getLogger('look')

# What a script on another origin may read of an answer, besides the safelisted headers.
CORS_EXPOSED_HEADERS = [
    'Location',
    'Link',
    'ETag',
    'Content-Location',
    'Retry-After',
    'WWW-Authenticate',
    CACHE_HEADER,
]
# Seconds a request waits for another's render beyond the render time limit.
FILL_WAIT_MARGIN = 5.0


def create_app(config: Config | None = None) -> falcon.App:
    """Create the look WSGI app; the thumbnailer pool starts on first use."""
    config = config if config is not None else Config()

    storage_path = pathlib.Path(config.storage_path)
    library = open_library(config)
    spool = Spool(storage_path / 'spool')
    try:
        spool.open()
    except OSError as ex:
        raise ConfigError(f'LOOK_STORAGE_PATH {config.storage_path} cannot be used: {ex}') from ex
    if is_local(library) and not library.index.read_only:
        check.quarantine_unlisted(library.index, library.images)
    log.info('storing images in %s', config.images_url or storage_path.resolve())
    if config.index_url:
        log.info('keeping the index in %s', without_password(config.index_url))

    metrics = Metrics()
    metrics.watch_removals(library.removal_backlog)
    thumbnailer = Thumbnailer(
        processes=config.processes,
        max_pixels=config.max_pixels,
        max_animation_pixels=config.max_animation_pixels,
        quality=config.jpeg_quality,
        render_timeout=config.render_timeout,
        max_queue_seconds=config.max_queue_seconds,
        observer=metrics,
        # Images on this disk: the store fsyncs the pool's JPEG where it is
        #   (an object store only reads it, and the spool file goes).
        write_back=not config.images_url,
    )
    renditions = Renditions(
        formats=config.thumbnail_formats,
        encodings={
            format: encoding_tag(format, config.jpeg_quality) for format in THUMBNAIL_FORMATS
        },
        min_thumb_size=config.min_thumb_size,
    )

    large = LargeThumbnails(
        DiskCache(storage_path / 'renditions', config.large_thumbnails_bytes),
        min_bytes=config.cache_max_bytes,
    )
    large.open()

    cache = None
    if config.redis_url:
        redis_url, redis_from_url = config.redis_url, config.redis_from_url
        cache = RedisCache(
            lambda: redis_from_url(redis_url),
            ttl=config.cache_ttl,
            max_entry_bytes=config.cache_max_bytes,
            # A render may wait its turn in the pool before its time limit starts.
            fill_timeout=config.render_timeout + FILL_WAIT_MARGIN,
            on_error=metrics.cache_failed,
        )
    else:
        log.info('LOOK_REDIS_URL is empty: thumbnails are not cached')

    access = Access(config.api_keys)
    hosts = Hosts(config.allowed_hosts, public_url=config.public_url, keys_set=not access.open)
    # NOTE: metrics first, so its process_response runs last and sees every
    #   answer; the guard next, so nothing else sees a request it refuses.
    middleware: list[object] = [
        MetricsMiddleware(metrics, CACHE_HEADER),
        Guard(hosts, keys_set=not access.open, cors_origins=config.cors_origins),
    ]
    if config.cors_origins:
        middleware.append(
            falcon.CORSMiddleware(
                allow_origins=config.cors_origins[0]
                if config.cors_origins == ('*',)
                else config.cors_origins,
                expose_headers=CORS_EXPOSED_HEADERS,
            )
        )
    if cache is not None:
        middleware.append(cache)
    app = falcon.App(middleware=middleware)
    app.router_options.converters.update(CONVERTERS)
    images = Images(
        library,
        thumbnailer,
        renditions,
        access,
        spool=spool,
        receiver=Receiver(
            max_bytes=config.max_upload_bytes,
            deadline=config.upload_timeout,
            max_at_once=config.max_concurrent_uploads,
            max_wait=config.max_queue_seconds,
        ),
        uuid_generator=config.uuid_generator,
        metrics=metrics,
        large=large,
    )
    thumbnails = Thumbnails(library, thumbnailer, renditions, large)
    document = openapi_document(
        max_upload_bytes=config.max_upload_bytes,
        min_thumb_size=config.min_thumb_size,
        formats=renditions.formats,
        keys_required=not access.open,
    )

    app.add_route('/images', images)
    app.add_route('/images/{image_id:image_id}.jpeg', images, suffix='image')
    app.add_route('/images/{image_id:image_id}.webp', images, suffix='animation')
    # PERF: the address with a format first: the router tries them in this
    #   order, so a request for it (every <img> and <picture> source) skips a
    #   pattern and two converters: 0.8 µs less, 0.2 µs more for one by Accept.
    app.add_route(
        '/thumbnails/{image_id:image_id}/{width:side}x{height:side}.{format:format}', thumbnails
    )
    app.add_route('/thumbnails/{image_id:image_id}/{width:side}x{height:side}', thumbnails)
    static = StaticFiles.from_package()
    gallery = Gallery(
        library,
        renditions,
        access,
        static,
        hosts=hosts,
        max_upload_bytes=config.max_upload_bytes,
        max_pixels=config.max_pixels,
    )
    app.add_route('/', gallery)
    app.add_route('/uploaded', gallery, suffix='uploaded')
    app.add_route('/view/{image_id:image_id}', gallery, suffix='image')
    app.add_route('/static/{filename}', static)
    app.add_route('/health', Health(library, thumbnailer, cache))
    app.add_route('/openapi.json', OpenAPI(document))
    app.add_route('/metrics', MetricsResource(metrics, access, public=config.metrics_public))
    add_error_handlers(app, gallery.error_page())
    app.add_error_handler(falcon.HTTPRouteNotFound, _route_not_found)
    return app


def _route_not_found(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, object]
) -> None:
    """Answer a path no route takes with a 404 that names the address it most likely meant."""
    hint = near_miss(req.path)
    raise falcon.HTTPNotFound(
        title='Not found',
        description=f'There is nothing at {req.path}. {hint}' if hint else None,
    )
