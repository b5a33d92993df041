"""Pick the index and the image store the settings ask for, for the app and the command line.

By default both are files under LOOK_STORAGE_PATH. LOOK_INDEX_URL moves the
index to PostgreSQL, and LOOK_IMAGES_URL (which needs it) moves the images
to an S3-compatible object store; LOOK_STORAGE_PATH then keeps only this
host's scratch space (the upload spool, the originals cache).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from look.core.imagestore import KeptStore
from look.core.imagestore.disk import DiskImageStore
from look.core.index import KeptIndex
from look.core.index.journal import JournalIndex
from look.core.library import Library
from look.core.removals import Timing
from look.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from look.core.imagestore.originals import OriginalsCache


class BackendSettings(Protocol):
    """The settings (of ``look.config.Config``) that say where images and the index live."""

    storage_path: pathlib.Path
    images_url: str
    index_url: str
    s3_options: dict[str, str]
    originals_cache_bytes: int
    index_pool_size: int
    remove_failed_uploads_after: float


log = logging.getLogger(__name__)

# Every library opened in this process, for close_all (gunicorn's worker_exit).
_libraries: list[Library] = []


def open_library(config: BackendSettings, *, timing: Timing | None = None) -> Library:
    """Build and open the library of this configuration; raise ConfigError naming what failed.

    ``timing`` paces the removal worker (tests make it quick); by default it
    waits LOOK_REMOVE_FAILED_UPLOADS_AFTER before a failed upload's removal.
    """
    originals = _originals(config) if config.images_url else None
    # NOTE: a delete on any host takes this host's copy of the original with
    #   it, as the index hears of it, so no host keeps a deleted image's file.
    on_deleted = originals.discard if originals is not None else None
    library = Library(
        _index(config, on_deleted),
        _images(config, originals),
        timing=timing or Timing(settle=config.remove_failed_uploads_after),
    )
    _open_images(config, library.images)
    _open_index(config, library.index)
    _libraries.append(library)
    return library


def _index(config: BackendSettings, on_deleted: Callable[[str], None] | None = None) -> KeptIndex:
    if config.index_url:
        from look.core.index.postgres import PostgresIndex

        return PostgresIndex(
            config.index_url, pool_size=config.index_pool_size, on_deleted=on_deleted
        )
    return JournalIndex(pathlib.Path(config.storage_path))


def _originals(config: BackendSettings) -> OriginalsCache:
    """Return this host's cache of the originals it read from the object store."""
    from look.core.imagestore.originals import OriginalsCache

    return OriginalsCache(
        pathlib.Path(config.storage_path) / 'originals', config.originals_cache_bytes
    )


def _images(config: BackendSettings, originals: OriginalsCache | None = None) -> KeptStore:
    if config.images_url:
        from look.core.imagestore.s3 import S3ImageStore

        return S3ImageStore(
            config.images_url,
            options=config.s3_options,
            originals=originals if originals is not None else _originals(config),
        )
    return DiskImageStore(pathlib.Path(config.storage_path))


def _open_images(config: BackendSettings, images: KeptStore) -> None:
    try:
        images.open()
    except OSError as ex:
        raise ConfigError(f'LOOK_STORAGE_PATH {config.storage_path} cannot be used: {ex}') from ex
    except BackendUnavailable as ex:
        raise ConfigError(
            f'LOOK_IMAGES_URL {config.images_url} cannot be used: {ex} (the endpoint, '
            'credentials and region come from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, '
            'AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION)'
        ) from ex


def _open_index(config: BackendSettings, index: KeptIndex) -> None:
    try:
        index.open()
    except OSError as ex:
        raise ConfigError(f'LOOK_STORAGE_PATH {config.storage_path} cannot be used: {ex}') from ex
    except BackendUnavailable as ex:
        raise ConfigError(
            f'LOOK_INDEX_URL {without_password(config.index_url)} cannot be used: {ex}'
        ) from ex


def check_shared(config: BackendSettings) -> None:
    """Open and close the shared backends of ``config`` once; raise ConfigError if one fails.

    For gunicorn's master, before any worker boots: an object store or a
    database that cannot be used is one line in the log, not a traceback
    from every worker. Nothing opened here outlives the call.
    """
    if config.images_url:
        images = _images(config)
        try:
            _open_images(config, images)
        finally:
            images.close()
    if config.index_url:
        index = _index(config)
        try:
            _open_index(config, index)
        finally:
            index.close()


def without_password(url: str) -> str:
    """Return ``url`` with any password replaced by ***, for messages and logs."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f':{parts.password}@', ':***@', 1)
    return parts._replace(netloc=netloc).geturl()


def is_local(library: Library) -> bool:
    """Whether index and images are this host's own files (and start-up may quarantine)."""
    return isinstance(library.index, JournalIndex) and isinstance(library.images, DiskImageStore)


def close_all() -> None:
    """Close every library of this process: its connection pools and clients."""
    while _libraries:
        _libraries.pop().close()
