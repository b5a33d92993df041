"""Configuration: defaults, environment parsing with clear errors, and the seams."""

from __future__ import annotations

import os
import pathlib
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import redis

from look.auth import ApiKey, parse_keys
from look.renditions import FALLBACK_FORMAT, FORMAT_MEDIA_TYPES

MiB = 1024 * 1024
MAX_PIXELS_LIMIT = 65500 * 65500  # no JPEG is larger: its sides stop at 65 500
# NOTE: 64 MiP, 8192x8192: above every phone's default photo (12-50 MP) and
#   its full-sensor modes up to 64 MP (9248x6936), full-frame cameras
#   (61 MP), and phone panoramas (63 MP). 100 MP medium format and the 108
#   and 200 MP phone modes need a larger LOOK_MAX_PIXELS; see docs/operations.md.
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_CACHE_TTL = 2**31 - 1  # seconds; Redis refuses expiry times far beyond this


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


def default_storage_path(environ: Mapping[str, str]) -> pathlib.Path:
    """Return a per-user data directory (XDG), writable without root."""
    data_home = environ.get('XDG_DATA_HOME') or os.path.join(
        environ.get('HOME') or os.path.expanduser('~'), '.local', 'share'
    )
    return pathlib.Path(data_home) / 'look'


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value.strip().replace('_', ''))
    except ValueError:
        raise ConfigError(f'{name} must be a whole number, got {value!r}') from None
    if number < 1:
        raise ConfigError(f'{name} must be at least 1, got {number}')
    return number


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f'{name} must be a number, got {value!r}') from None
    # threading.TIMEOUT_MAX: the largest timeout a lock or timer accepts.
    if not (0 < number <= threading.TIMEOUT_MAX):
        raise ConfigError(f'{name} must be a number of seconds greater than 0, got {value!r}')
    return number


def _path(name: str, value: str) -> pathlib.Path:
    if not value.strip():
        raise ConfigError(f'{name} must be a directory path, got an empty string')
    return pathlib.Path(value).expanduser()


def _redis_url(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        return value
    if not value.startswith(('redis://', 'rediss://', 'unix://')):
        raise ConfigError(
            f'{name} must be a redis://, rediss:// or unix:// URL '
            f'(or empty to disable the cache), got {value!r}'
        )
    try:
        settings = redis.connection.parse_url(value)
    except ValueError as ex:
        raise ConfigError(f'{name} is not a usable Redis URL ({ex}), got {value!r}') from None
    if value.startswith('unix://') and (not settings.get('path') or urlparse(value).netloc):
        raise ConfigError(f'{name} must name the socket file (unix:///path), got {value!r}')
    if settings.get('decode_responses'):
        raise ConfigError(f'{name} must not set decode_responses: the cache keeps bytes')
    return value


def _size(name: str, value: str) -> int:
    try:
        number = int(value.strip().replace('_', ''))
    except ValueError:
        raise ConfigError(f'{name} must be a whole number of bytes, got {value!r}') from None
    if number < 0:
        raise ConfigError(f'{name} must be 0 or more, got {number}')
    return number


# NOTE: S3's rules for new bucket names: 3 to 63 lowercase letters, digits,
#   dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r'[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z')


def _images_url(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        return value
    parts = urlparse(value)
    if parts.scheme != 's3' or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
        raise ConfigError(
            f'{name} must be s3://BUCKET or s3://BUCKET/PREFIX (or empty to keep images '
            f'under LOOK_STORAGE_PATH), got {value!r}'
        )
    return value


def _index_url(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        return value
    if not value.startswith(('postgresql://', 'postgres://')):
        raise ConfigError(
            f'{name} must be a postgresql:// URL (or empty to keep the index under '
            f'LOOK_STORAGE_PATH), got {without_password(value)!r}'
        )
    import psycopg  # only where an index URL is set: a local look never loads it

    try:
        psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as ex:
        raise ConfigError(f'{name} is not a usable PostgreSQL URL: {ex}') from None
    return value


def without_password(url: str) -> str:
    """Return ``url`` with any password replaced by ***, for messages and logs."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f':{parts.password}@', ':***@', 1)
    return parts._replace(netloc=netloc).geturl()


def _s3_options(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the object store's endpoint, credentials and region from AWS's own variables."""
    options = {}
    endpoint = environ.get('AWS_ENDPOINT_URL_S3') or environ.get('AWS_ENDPOINT_URL')
    if endpoint:
        options['endpoint_url'] = endpoint
    for variable, option in (
        ('AWS_ACCESS_KEY_ID', 'aws_access_key_id'),
        ('AWS_SECRET_ACCESS_KEY', 'aws_secret_access_key'),
        ('AWS_SESSION_TOKEN', 'aws_session_token'),
    ):
        if environ.get(variable):
            options[option] = environ[variable]
    region = environ.get('AWS_DEFAULT_REGION') or environ.get('AWS_REGION')
    if region:
        options['region_name'] = region
    return options


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
        return True
    if lowered in ('', '0', 'false', 'no', 'off'):
        return False
    raise ConfigError(f'{name} must be 1 or 0 (true or false), got {value!r}')


def _api_keys(name: str, value: str) -> list[ApiKey]:
    try:
        return parse_keys(value, source=name)
    except ValueError as ex:
        raise ConfigError(str(ex)) from None


def _api_keys_file(name: str, value: str) -> list[ApiKey]:
    path = _path(name, value)
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of a secret.
        text = path.read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as ex:
        raise ConfigError(f'{name} {value!r} cannot be read: {ex}') from None
    try:
        keys = parse_keys(text, source=f'{name} {value}')
    except ValueError as ex:
        raise ConfigError(str(ex)) from None
    # NOTE: a file that was meant to hold keys but holds none (a secret not
    #   mounted yet) must not leave look open to everyone.
    if not keys:
        raise ConfigError(f'{name} {value} holds no key; write one name:secret a line')
    return keys


def _thumbnail_formats(name: str, value: str) -> tuple[str, ...]:
    formats = [item.strip().lower() for item in value.split(',') if item.strip()]
    unknown = [item for item in formats if item not in FORMAT_MEDIA_TYPES]
    if unknown:
        raise ConfigError(
            f'{name} may list {", ".join(FORMAT_MEDIA_TYPES)}; '
            f'{", ".join(unknown)} is not one of them'
        )
    if FALLBACK_FORMAT not in formats:
        raise ConfigError(
            f'{name} must include {FALLBACK_FORMAT}: it is what every client can show'
        )
    return tuple(dict.fromkeys(formats))


def _origins(name: str, value: str) -> tuple[str, ...]:
    origins = tuple(item.strip() for item in value.split(',') if item.strip())
    if origins == ('*',):
        return origins
    for origin in origins:
        parts = urlparse(origin)
        if (
            parts.scheme not in ('http', 'https')
            or not parts.netloc
            or parts.path
            or '*' in origin
        ):
            raise ConfigError(
                f'{name} must be * or origins such as https://example.com (scheme, host, '
                f'port; no path), got {origin!r}'
            )
    return origins


def _log_format(name: str, value: str) -> str:
    value = value.strip().lower()
    if value not in ('text', 'json'):
        raise ConfigError(f'{name} must be text or json, got {value!r}')
    return value


# attribute -> (environment variable, parser)
_ENVIRONMENT: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    'storage_path': ('LOOK_STORAGE_PATH', _path),
    'redis_url': ('LOOK_REDIS_URL', _redis_url),
    'min_thumb_size': ('LOOK_MIN_THUMB_SIZE', _positive_int),
    'max_upload_bytes': ('LOOK_MAX_UPLOAD_BYTES', _positive_int),
    'max_pixels': ('LOOK_MAX_PIXELS', _positive_int),
    'processes': ('LOOK_PROCESSES', _positive_int),
    'cache_ttl': ('LOOK_CACHE_TTL', _positive_int),
    'render_timeout': ('LOOK_RENDER_TIMEOUT', _positive_float),
    'upload_timeout': ('LOOK_UPLOAD_TIMEOUT', _positive_float),
    'jpeg_quality': ('LOOK_JPEG_QUALITY', _positive_int),
    'api_keys': ('LOOK_API_KEYS', _api_keys),
    'allow_anonymous_writes': ('LOOK_ALLOW_ANONYMOUS_WRITES', _flag),
    'max_concurrent_uploads': ('LOOK_MAX_CONCURRENT_UPLOADS', _positive_int),
    'max_queue_seconds': ('LOOK_MAX_QUEUE_SECONDS', _positive_float),
    'cache_max_bytes': ('LOOK_CACHE_MAX_BYTES', _positive_int),
    'thumbnail_formats': ('LOOK_THUMBNAIL_FORMATS', _thumbnail_formats),
    'metrics_public': ('LOOK_METRICS_PUBLIC', _flag),
    'cors_origins': ('LOOK_CORS_ORIGINS', _origins),
    'log_format': ('LOOK_LOG_FORMAT', _log_format),
    'images_url': ('LOOK_IMAGES_URL', _images_url),
    'index_url': ('LOOK_INDEX_URL', _index_url),
    'originals_cache_bytes': ('LOOK_ORIGINALS_CACHE_BYTES', _size),
    'index_pool_size': ('LOOK_INDEX_POOL_SIZE', _positive_int),
}


class Config:
    """Settings for one look app.

    ``Config()`` reads the environment; keyword arguments override it, and
    attributes may be assigned afterwards, before ``create_app(config)``.
    """

    storage_path: pathlib.Path
    redis_url: str
    redis_from_url: Callable[[str], Any]
    uuid_generator: Callable[[], uuid.UUID]
    min_thumb_size: int
    max_upload_bytes: int
    max_pixels: int
    processes: int
    cache_ttl: int
    render_timeout: float
    upload_timeout: float
    jpeg_quality: int
    api_keys: list[ApiKey]
    allow_anonymous_writes: bool
    max_concurrent_uploads: int
    max_queue_seconds: float
    cache_max_bytes: int
    thumbnail_formats: tuple[str, ...]
    metrics_public: bool
    cors_origins: tuple[str, ...]
    log_format: str
    images_url: str
    index_url: str
    s3_options: dict[str, str]
    originals_cache_bytes: int
    index_pool_size: int

    def __init__(self, environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
        if environ is None:
            environ = os.environ

        self.storage_path = default_storage_path(environ)
        self.redis_url = 'redis://localhost:6379/0'
        self.redis_from_url = redis.Redis.from_url
        self.uuid_generator = uuid.uuid4
        self.min_thumb_size = 64
        self.max_upload_bytes = 32 * MiB
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.processes = os.cpu_count() or 1
        self.cache_ttl = 3600
        # NOTE: a render that takes longer than this is abandoned with a 503;
        #   a 100-megapixel JPEG renders in well under a second here.
        self.render_timeout = 20.0
        # NOTE: the longest a client may take to send an upload: 32 MiB at
        #   2 Mbit/s takes about two minutes.
        self.upload_timeout = 180.0
        # NOTE: quality 85 without progressive/optimize is where size vs
        #   encode time levels off; see "WebP and AVIF" in bench/README.md.
        self.jpeg_quality = 85
        # NOTE: with no keys, anyone who can reach look may upload, list and
        #   delete: fine on 127.0.0.1, refused on a network by gunicorn.conf.py
        #   unless allow_anonymous_writes says the operator means it.
        self.api_keys = []
        self.allow_anonymous_writes = False
        # NOTE: bodies a worker receives at once; the rest of its threads stay
        #   for downloads, cache hits and renders, however slow the uploaders.
        self.max_concurrent_uploads = 6
        # NOTE: the longest a render or an upload is expected to wait for an
        #   image process, or an upload for a receiving slot, before look
        #   answers 503 with a Retry-After. 2 s is a queue of ~25 conversions
        #   of a 12 MP photo, or ~600 960x540 JPEG renders, per image process;
        #   only more than a person would wait for is turned away.
        self.max_queue_seconds = 2.0
        # NOTE: the largest thumbnail kept in Redis: a 4000x3000 photo's
        #   largest thumbnail is about 0.5 MiB.
        self.cache_max_bytes = MiB
        self.thumbnail_formats = ('jpeg', 'webp', 'avif')
        # NOTE: where API keys are set, /metrics takes one too (request rates
        #   and error counts are the operator's business) unless this says
        #   the network in front of it is trusted.
        self.metrics_public = False
        # NOTE: browsers on other origins may use the API only where this names them.
        self.cors_origins = ()
        self.log_format = 'text'
        # NOTE: empty: images and index live under storage_path, as one host's
        #   files. s3://... and postgresql://... let many hosts share them.
        self.images_url = ''
        self.index_url = ''
        self.s3_options = _s3_options(environ)
        # NOTE: originals fetched from the object store for renders are kept
        #   on local disk, least recently used first out, up to this many
        #   bytes (0: none kept); a page of thumbnails fetches each once.
        self.originals_cache_bytes = 512 * MiB
        # NOTE: index connections per web worker; each query holds one for
        #   well under a millisecond, so a few serve all the worker's threads.
        self.index_pool_size = 4

        for attribute, (variable, parse) in _ENVIRONMENT.items():
            if variable in environ:
                setattr(self, attribute, parse(variable, environ[variable]))
        if 'LOOK_API_KEYS_FILE' in environ:
            self.api_keys = [
                *self.api_keys,
                *_api_keys_file('LOOK_API_KEYS_FILE', environ['LOOK_API_KEYS_FILE']),
            ]

        for attribute, value in overrides.items():
            if not hasattr(self, attribute):
                raise TypeError(f'Config has no setting {attribute!r}')
            setattr(self, attribute, value)

        # Keys and formats may also be given as in the environment, in a string.
        if isinstance(self.api_keys, str):
            self.api_keys = _api_keys('api_keys', self.api_keys)
        if isinstance(self.thumbnail_formats, str):
            self.thumbnail_formats = _thumbnail_formats(
                'thumbnail_formats', self.thumbnail_formats
            )

        for variable, value, most in (
            ('LOOK_JPEG_QUALITY', self.jpeg_quality, 95),
            ('LOOK_MAX_PIXELS', self.max_pixels, MAX_PIXELS_LIMIT),
            ('LOOK_CACHE_TTL', self.cache_ttl, MAX_CACHE_TTL),
        ):
            if value > most:
                raise ConfigError(f'{variable} must be at most {most}, got {value}')
        if self.images_url and not self.index_url:
            raise ConfigError(
                'LOOK_IMAGES_URL needs LOOK_INDEX_URL: images in an object store are shared '
                'by many hosts, and so must be the index that lists them (postgresql://...)'
            )

    def __repr__(self) -> str:
        fields = ', '.join(f'{name}={_shown(name, value)}' for name, value in vars(self).items())
        return f'Config({fields})'


def _shown(name: str, value: Any) -> str:
    """Return a setting as repr() shows it: never a key, a password or a secret."""
    if name == 'api_keys':
        return f'<{len(value)} keys>'
    if name == 'index_url':
        return repr(without_password(value))
    if name == 's3_options':
        return repr(
            {key: '***' if 'secret' in key or 'token' in key else v for key, v in value.items()}
        )
    return repr(value)
