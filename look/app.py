"""The application factory: builds the parts from one Config and wires the routes."""

from __future__ import annotations

import logging
import pathlib

import falcon

from look.cache import RedisCache
from look.config import Config, ConfigError
from look.errors import add_error_handlers
from look.health import Health
from look.images import CONVERTERS, Images, Thumbnails
from look.openapi import OpenAPI, openapi_document
from look.store import Store
from look.thumbnailer import Thumbnailer

log = logging.getLogger('look')


def create_app(config: Config | None = None) -> falcon.App:
    """Create the look WSGI app; the thumbnailer pool starts on first use."""
    config = config if config is not None else Config()

    store = Store(pathlib.Path(config.storage_path))
    try:
        store.open()
    except OSError as ex:
        raise ConfigError(f'LOOK_STORAGE_PATH {config.storage_path} cannot be used: {ex}') from ex
    log.info('storing images in %s', store.root.resolve())

    thumbnailer = Thumbnailer(
        processes=config.processes,
        max_pixels=config.max_pixels,
        quality=config.jpeg_quality,
        render_timeout=config.render_timeout,
    )

    cache = None
    if config.redis_url:
        cache = RedisCache(
            config.redis_from_url(config.redis_url),
            ttl=config.cache_ttl,
            # A thumbnail's bytes follow the quality; which sizes exist, the minimum.
            variant=f'q{config.jpeg_quality}:m{config.min_thumb_size}',
        )
    else:
        log.info('LOOK_REDIS_URL is empty: thumbnails are not cached')

    app = falcon.App(middleware=[cache] if cache else [])
    app.router_options.converters.update(CONVERTERS)
    images = Images(
        store,
        thumbnailer,
        uuid_generator=config.uuid_generator,
        max_upload_bytes=config.max_upload_bytes,
        upload_timeout=config.upload_timeout,
        min_thumb_size=config.min_thumb_size,
    )
    thumbnails = Thumbnails(store, thumbnailer, min_thumb_size=config.min_thumb_size)
    document = openapi_document(
        max_upload_bytes=config.max_upload_bytes, min_thumb_size=config.min_thumb_size
    )

    app.add_route('/images', images)
    app.add_route('/images/{image_id:image_id}.jpeg', images, suffix='image')
    app.add_route('/thumbnails/{image_id:image_id}/{width:side}x{height:side}.jpeg', thumbnails)
    app.add_route('/health', Health(store, thumbnailer, cache))
    app.add_route('/openapi.json', OpenAPI(document))
    add_error_handlers(app)
    return app
