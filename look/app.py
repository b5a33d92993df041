"""The application factory: picks the backends, builds the parts from one Config, wires routes."""

from __future__ import annotations

import logging
import pathlib

import falcon

from look import check
from look.auth import Access
from look.backends import is_local, open_library
from look.cache import RedisCache
from look.config import Config, ConfigError
from look.errors import add_error_handlers
from look.gallery import Gallery, StaticFiles
from look.health import Health
from look.images import CONVERTERS, Images, Thumbnails
from look.openapi import OpenAPI, openapi_document
from look.renditions import Renditions
from look.spool import Spool
from look.thumbnailer import Thumbnailer
from look.uploads import Receiver

log = logging.getLogger('look')


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
    log.info('storing images in %s', storage_path.resolve())

    thumbnailer = Thumbnailer(
        processes=config.processes,
        max_pixels=config.max_pixels,
        quality=config.jpeg_quality,
        render_timeout=config.render_timeout,
    )
    renditions = Renditions(
        formats=config.thumbnail_formats,
        encodings={'jpeg': f'q{config.jpeg_quality}'},
        min_thumb_size=config.min_thumb_size,
    )

    cache = None
    if config.redis_url:
        cache = RedisCache(
            config.redis_from_url(config.redis_url),
            ttl=config.cache_ttl,
            max_entry_bytes=config.cache_max_bytes,
        )
    else:
        log.info('LOOK_REDIS_URL is empty: thumbnails are not cached')

    access = Access(config.api_keys)
    app = falcon.App(middleware=[cache] if cache else [])
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
        ),
        uuid_generator=config.uuid_generator,
    )
    thumbnails = Thumbnails(library, thumbnailer, renditions)
    document = openapi_document(
        max_upload_bytes=config.max_upload_bytes,
        min_thumb_size=config.min_thumb_size,
        formats=renditions.formats,
        keys_required=not access.open,
    )

    app.add_route('/images', images)
    app.add_route('/images/{image_id:image_id}.jpeg', images, suffix='image')
    app.add_route('/thumbnails/{image_id:image_id}/{width:side}x{height:side}', thumbnails)
    app.add_route(
        '/thumbnails/{image_id:image_id}/{width:side}x{height:side}.{format:format}', thumbnails
    )
    static = StaticFiles.from_package()
    gallery = Gallery(
        library, renditions, access, static, max_upload_bytes=config.max_upload_bytes
    )
    app.add_route('/', gallery)
    app.add_route('/view/{image_id:image_id}', gallery, suffix='image')
    app.add_route('/static/{filename}', static)
    app.add_route('/health', Health(library, thumbnailer, cache))
    app.add_route('/openapi.json', OpenAPI(document))
    add_error_handlers(app)
    return app
