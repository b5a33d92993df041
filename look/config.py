"""Settings: one declaration each, from which Config, its checks, gunicorn and the README come.

Each setting is a field of ``Config`` made by ``setting()``: its environment
variable, its default, the parser that turns the variable's text into a value
(a ConfigError naming the variable for a bad one), and one line of help.
``Config()`` reads the process environment and keyword arguments override it;
``settings_table()`` is the README's table of them, which a test holds to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import pathlib
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

import redis

from look.core.backends import without_password
from look.core.removals import DEFAULT_SETTLE
from look.errors import ConfigError
from look.imaging.formats import FALLBACK_FORMAT, FORMAT_MEDIA_TYPES
from look.imaging.preflight import DEFAULT_MAX_ANIMATION_PIXELS

MiB = 1024 * 1024
MAX_PIXELS_LIMIT = 65500 * 65500  # no JPEG is larger: its sides stop at 65 500
# NOTE: 64 MiP, 8192x8192: above every phone's default photo (12-50 MP) and
#   its full-sensor modes up to 64 MP (9248x6936), full-frame cameras
#   (61 MP), and phone panoramas (63 MP). 100 MP medium format and the 108
#   and 200 MP phone modes need a larger LOOK_MAX_PIXELS; see docs/operations.md.
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_CACHE_TTL = 2**31 - 1  # seconds; Redis refuses expiry times far beyond this
MAX_JPEG_QUALITY = 95  # above it, JPEGs grow fast for detail no one sees

Parser = Callable[[str, str], Any]

__all__ = [
    'Config',
    'ConfigError',
    'Setting',
    'host_name',
    'is_loopback',
    'read',
    'settings_table',
    'without_password',
]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: where it comes from, what it is by default, how it is read, what it does."""

    variable: str
    default: Any  # a value, or a function of the environment that returns one
    parse: Parser | None  # None: the default function reads the environment itself
    help: str
    shown: str = ''  # the default as the README shows it, where the value would not do
    most: float | None = None  # the largest value allowed, from the environment or not
    adds_to: str = ''  # the attribute whose list this variable's values join

    def default_for(self, environ: Mapping[str, str]) -> Any:
        """Return the default value under ``environ``."""
        return self.default(environ) if callable(self.default) else self.default


def setting(
    variable: str,
    default: Any,
    parse: Parser | None,
    help: str,
    *,
    shown: str = '',
    most: float | None = None,
    adds_to: str = '',
) -> Any:
    """Declare a field of Config read from ``variable``."""
    return dataclasses.field(
        metadata={'setting': Setting(variable, default, parse, help, shown, most, adds_to)}
    )


def seam(default: Any) -> Any:
    """Declare a field of Config that tests replace, and no environment variable sets."""
    return dataclasses.field(metadata={'seam': default})


# -- parsers --------------------------------------------------------------------------


def _text(name: str, value: str) -> str:
    return value.strip()


def _whole(name: str, value: str) -> int:
    try:
        number = int(value.strip().replace('_', ''))
    except ValueError:
        raise ConfigError(f'{name} must be a whole number, got {value!r}') from None
    if number < 1:
        raise ConfigError(f'{name} must be at least 1, got {number}')
    return number


def _bytes(name: str, value: str) -> int:
    try:
        number = int(value.strip().replace('_', ''))
    except ValueError:
        raise ConfigError(f'{name} must be a whole number of bytes, got {value!r}') from None
    if number < 0:
        raise ConfigError(f'{name} must be 0 or more, got {number}')
    return number


def _seconds(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    # threading.TIMEOUT_MAX: the largest timeout a lock or timer accepts.
    if not (0 < number <= threading.TIMEOUT_MAX):
        raise ConfigError(f'{name} must be a number of seconds greater than 0, got {value!r}')
    return number


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ('1', 'true', 'yes', 'on'):
        return True
    if lowered in ('', '0', 'false', 'no', 'off'):
        return False
    raise ConfigError(f'{name} must be 1 or 0 (true or false), got {value!r}')


def _path(name: str, value: str) -> pathlib.Path:
    if not value.strip():
        raise ConfigError(f'{name} must be a directory path, got an empty string')
    return pathlib.Path(value).expanduser()


def _log_format(name: str, value: str) -> str:
    value = value.strip().lower()
    if value not in ('text', 'json'):
        raise ConfigError(f'{name} must be text or json, got {value!r}')
    return value


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
    # NOTE: only where an index URL is set: a local look never loads psycopg.
    from look.core.index.postgres import url_problem

    problem = url_problem(value)
    if problem is not None:
        raise ConfigError(f'{name} is not a usable PostgreSQL URL: {problem}')
    return value


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


# NOTE: as Django's ALLOWED_HOSTS: a name, `.example.org` for a domain and
#   every name under it, an IP address, or `*` for any Host at all.
_HOST_NAME = re.compile(r'[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\Z')


def host_name(text: str) -> str | None:
    """Return a host (a name or an IP address, no port) as look compares it, or None if bad.

    Lowercase, without a trailing dot, an IPv6 address without brackets in
    its short form: the spelling every Host header of that host matches.
    """
    text = text.strip().lower()
    if text.startswith('[') and text.endswith(']'):
        text = text[1:-1]
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    if ':' in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    text = text.removesuffix('.')
    return text if _HOST_NAME.match(text) else None


def is_loopback(host: str) -> bool:
    """Return whether a host (as ``host_name`` spells it) can only be this machine.

    ``localhost`` and names under it (RFC 6761: browsers resolve them to
    loopback themselves), and loopback addresses, IPv4-mapped ones too.
    """
    if host == 'localhost' or host.endswith('.localhost'):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _hosts(name: str, value: str) -> tuple[str, ...]:
    hosts = []
    for item in value.split(','):
        item = item.strip().lower()
        if not item:
            continue
        if item == '*':
            hosts.append(item)
            continue
        domain = item.startswith('.')
        host = host_name(item.removeprefix('.'))
        if host is None or (domain and ':' in host):
            raise ConfigError(
                f'{name} must list host names (photos.example.org, without a port), '
                f'.example.org for a domain and every name under it, IP addresses, or *; '
                f'got {item!r}'
            )
        hosts.append(f'.{host}' if domain else host)
    return tuple(dict.fromkeys(hosts))


def _public_url(name: str, value: str) -> str:
    value = value.strip().removesuffix('/')
    if not value:
        return value
    parts = urlparse(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ('http', 'https')
        or not parts.hostname
        or host_name(parts.hostname) is None
        or port == -1
        or parts.username is not None
        or parts.path
        or parts.params
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f'{name} must be the address people reach look at, such as '
            f'https://photos.example.org (scheme, host, port; no path), got {value!r}'
        )
    return f'{parts.scheme}://{parts.netloc.lower()}'


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


# -- defaults read from the environment ------------------------------------------------


def default_storage_path(environ: Mapping[str, str]) -> pathlib.Path:
    """Return a per-user data directory (XDG), writable without root."""
    data_home = environ.get('XDG_DATA_HOME') or os.path.join(
        environ.get('HOME') or os.path.expanduser('~'), '.local', 'share'
    )
    return pathlib.Path(data_home) / 'look'


def _cores(environ: Mapping[str, str]) -> int:
    return os.cpu_count() or 1


def _no_keys(environ: Mapping[str, str]) -> list[ApiKey]:
    return []


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


# -- the settings --------------------------------------------------------------------


@dataclasses.dataclass(init=False, repr=False, eq=False)
class Config:
    """Settings for one look app.

    ``Config()`` reads the environment; keyword arguments override it, and
    attributes may be assigned afterwards, before ``create_app(config)``.
    """

    # -- where look runs and keeps its files
    bind: str = setting(
        'LOOK_BIND',
        '127.0.0.1:8000',
        _text,
        'where gunicorn listens (`--bind` overrides it)',
    )
    workers: int = setting(
        'WEB_CONCURRENCY',
        _cores,
        _whole,
        'gunicorn workers, each with 12 threads',
        shown='one per core',
    )
    storage_path: pathlib.Path = setting(
        'LOOK_STORAGE_PATH',
        default_storage_path,
        _path,
        "the images and index on local disk; with shared backends, this host's scratch "
        'space and originals cache',
        shown='`$XDG_DATA_HOME/look` (`~/.local/share/look`)',
    )
    redis_url: str = setting(
        'LOOK_REDIS_URL',
        'redis://localhost:6379/0',
        _redis_url,
        'the thumbnail cache (`redis://`, `rediss://`, `unix://`); empty turns it off',
    )
    # -- who may do what
    # NOTE: with no keys, anyone who can reach look may upload, list and
    #   delete: fine on 127.0.0.1, refused on a network at start-up unless
    #   allow_anonymous_writes says the operator means it.
    api_keys: list[ApiKey] = setting(
        'LOOK_API_KEYS',
        _no_keys,
        _api_keys,
        '`name:secret` pairs or bare secrets, comma-separated: see '
        '[Who may do what](#who-may-do-what)',
    )
    api_keys_file: list[ApiKey] = setting(
        'LOOK_API_KEYS_FILE',
        _no_keys,
        _api_keys_file,
        'a file of keys, one per line (lines starting with `#` are comments); adds to '
        '`LOOK_API_KEYS`',
        adds_to='api_keys',
    )
    allow_anonymous_writes: bool = setting(
        'LOOK_ALLOW_ANONYMOUS_WRITES',
        False,
        _flag,
        '`1` lets look listen beyond loopback with no keys',
    )
    # NOTE: where API keys are set, /metrics takes one too (request rates and
    #   error counts are the operator's business) unless the network in front
    #   of it is trusted.
    metrics_public: bool = setting(
        'LOOK_METRICS_PUBLIC',
        False,
        _flag,
        '`1` serves `/metrics` without a key where keys are set',
    )
    cors_origins: tuple[str, ...] = setting(
        'LOOK_CORS_ORIGINS',
        (),
        _origins,
        'origins (`https://example.com`, comma-separated, or `*`) whose pages may call the API',
    )
    # NOTE: a browser sends the name it looked up as Host: a page whose
    #   name resolves to 127.0.0.1 (DNS rebinding) reaches look under that
    #   name, which no one listed.
    allowed_hosts: tuple[str, ...] = setting(
        'LOOK_ALLOWED_HOSTS',
        (),
        _hosts,
        'the host names look answers to (`photos.example.org`, `.example.org` for a domain '
        'and every name under it, IP addresses, or `*`), comma-separated; loopback names '
        'always; any other `Host` gets `421`. Unset: with no keys, loopback only; with keys, '
        'any',
        shown='none',
    )
    public_url: str = setting(
        'LOOK_PUBLIC_URL',
        '',
        _public_url,
        'the address people reach look at (`https://photos.example.org`): the absolute links '
        "of image pages, whose host is allowed too; unset, they come from the request's "
        '`Host` when it is one of `LOOK_ALLOWED_HOSTS` or loopback',
    )
    # -- images and thumbnails
    thumbnail_formats: tuple[str, ...] = setting(
        'LOOK_THUMBNAIL_FORMATS',
        # NOTE: JPEG XL costs no more to encode than AVIF (look.imaging.formats).
        ('jpeg', 'webp', 'avif', 'jxl'),
        _thumbnail_formats,
        'the thumbnail formats served; must include `jpeg`',
    )
    min_thumb_size: int = setting(
        'LOOK_MIN_THUMB_SIZE',
        64,
        _whole,
        'the smallest side a thumbnail may have',
    )
    # NOTE: quality 85 without progressive/optimize is where size vs encode
    #   time levels off; see "WebP and AVIF" in bench/README.md.
    jpeg_quality: int = setting(
        'LOOK_JPEG_QUALITY',
        85,
        _whole,
        f'quality of the JPEGs look encodes, stored and thumbnails (1 to {MAX_JPEG_QUALITY}); '
        'a JPEG kept as it was made keeps its own',
        most=MAX_JPEG_QUALITY,
    )
    max_upload_bytes: int = setting(
        'LOOK_MAX_UPLOAD_BYTES',
        32 * MiB,
        _whole,
        'the largest upload body',
        shown='`33554432` (32 MiB)',
    )
    max_pixels: int = setting(
        'LOOK_MAX_PIXELS',
        DEFAULT_MAX_PIXELS,
        _whole,
        'the largest image, in pixels (at most 65500², the largest JPEG)',
        shown='`67108864` (8192²)',
        most=MAX_PIXELS_LIMIT,
    )
    max_animation_pixels: int = setting(
        'LOOK_MAX_ANIMATION_PIXELS',
        DEFAULT_MAX_ANIMATION_PIXELS,
        _whole,
        'the largest animation, in pixels of all its frames (frames times width times height); a '
        'larger one is refused (`413`) before its frames are decoded',
        shown='`100000000` (100 frames of 1280x720)',
    )
    # -- how much work a worker takes on
    # NOTE: bodies a worker receives at once; the rest of its threads stay
    #   for downloads, cache hits and renders, however slow the uploaders.
    max_concurrent_uploads: int = setting(
        'LOOK_MAX_CONCURRENT_UPLOADS',
        6,
        _whole,
        'upload bodies a worker receives at once; more wait their turn (up to '
        '`LOOK_MAX_QUEUE_SECONDS`) without holding a thread',
    )
    # NOTE: 2 s is a queue of ~25 conversions of a 12 MP photo, or ~600
    #   960x540 JPEG renders, per image process: only more than a person
    #   would wait for is turned away.
    max_queue_seconds: float = setting(
        'LOOK_MAX_QUEUE_SECONDS',
        2.0,
        _seconds,
        'the longest a render or upload is expected to wait for an image process, or an upload '
        'for its turn to be received; past it, `503` with a `Retry-After` of the expected wait',
        shown='`2`',
    )
    processes: int = setting(
        'LOOK_PROCESSES',
        _cores,
        _whole,
        'image processes per web worker',
        shown='under gunicorn, cores ÷ workers (at least 1)',
    )
    # NOTE: a 100-megapixel JPEG renders in well under a second here.
    render_timeout: float = setting(
        'LOOK_RENDER_TIMEOUT',
        20.0,
        _seconds,
        'seconds a render or conversion may run (time queued does not count) before it is '
        "abandoned (`503`) and the worker's image processes are replaced; work running or "
        'queued on them gets `503` too',
        shown='`20`',
    )
    # NOTE: 32 MiB at 2 Mbit/s takes about two minutes.
    upload_timeout: float = setting(
        'LOOK_UPLOAD_TIMEOUT',
        180.0,
        _seconds,
        'seconds a client may take to send an upload body, all of it (`408`; so is a body '
        'that stops arriving for 15 s)',
        shown='`180`',
    )
    header_timeout: float = setting(
        'LOOK_HEADER_TIMEOUT',
        10.0,
        _seconds,
        'seconds a client may take to send a request line and headers, all of them (`408`)',
        shown='`10`',
    )
    # -- the cache
    cache_ttl: int = setting(
        'LOOK_CACHE_TTL',
        3600,
        _whole,
        'seconds a thumbnail lives in Redis',
        most=MAX_CACHE_TTL,
    )
    # NOTE: a 4000x3000 photo's largest thumbnail is about 0.5 MiB.
    cache_max_bytes: int = setting(
        'LOOK_CACHE_MAX_BYTES',
        MiB,
        _whole,
        'the largest thumbnail kept in Redis',
        shown='`1048576` (1 MiB)',
    )
    # NOTE: the largest thumbnail of an 8192x8192 photo is about 4 MiB and
    #   takes about a second to render: 512 MiB keeps over a hundred of them.
    large_thumbnails_bytes: int = setting(
        'LOOK_LARGE_THUMBNAILS_BYTES',
        512 * MiB,
        _bytes,
        "room on this host's disk for thumbnails larger than `LOOK_CACHE_MAX_BYTES`, rendered "
        'once and kept under `LOOK_STORAGE_PATH/renditions`, least recently used out first '
        '(0: none)',
        shown='`536870912` (512 MiB)',
    )
    log_format: str = setting(
        'LOOK_LOG_FORMAT',
        'text',
        _log_format,
        '`json`: one JSON object per log line',
    )
    # -- shared backends
    images_url: str = setting(
        'LOOK_IMAGES_URL',
        '',
        _images_url,
        '`s3://BUCKET[/PREFIX]`: images in an S3-compatible object store; needs `LOOK_INDEX_URL`',
        shown='none (local disk)',
    )
    index_url: str = setting(
        'LOOK_INDEX_URL',
        '',
        _index_url,
        '`postgresql://...`: the index in PostgreSQL',
        shown='none (local disk)',
    )
    # NOTE: a page of thumbnails fetches each original once.
    originals_cache_bytes: int = setting(
        'LOOK_ORIGINALS_CACHE_BYTES',
        512 * MiB,
        _bytes,
        "with images in an object store, originals kept on this host's disk for renders and "
        'downloads (0: none)',
        shown='`536870912` (512 MiB)',
    )
    # NOTE: each query holds a connection for well under a millisecond.
    index_pool_size: int = setting(
        'LOOK_INDEX_POOL_SIZE',
        4,
        _whole,
        'PostgreSQL connections per web worker',
    )
    # NOTE: look's own attempts at a put end within 11 s; a proxy or a slow
    #   store may hold a write longer (look.core.removals.DEFAULT_SETTLE).
    remove_failed_uploads_after: float = setting(
        'LOOK_REMOVE_FAILED_UPLOADS_AFTER',
        DEFAULT_SETTLE,
        _seconds,
        'seconds after an upload failed at the object store before the object it may have '
        'left is removed: a write held on its way (by a proxy, a slow store) can land until '
        "then; look's own attempts at a put end within 11 s",
        shown=f'`{DEFAULT_SETTLE:g}`',
    )
    s3_options: dict[str, str] = setting(
        '`AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`), `AWS_ACCESS_KEY_ID`, '
        '`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION` (or `AWS_REGION`)',
        _s3_options,
        None,
        "the object store's endpoint, credentials and region, as every AWS tool reads them",
        shown="AWS's",
    )
    # -- seams
    redis_from_url: Callable[[str], Any] = seam(redis.Redis.from_url)
    uuid_generator: Callable[[], uuid.UUID] = seam(uuid.uuid4)

    def __init__(self, environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
        if environ is None:
            environ = os.environ
        for name, declared in _settings():
            value = declared.default_for(environ)
            if declared.parse is not None and declared.variable in environ:
                value = declared.parse(declared.variable, environ[declared.variable])
            setattr(self, name, value)
        for field in dataclasses.fields(self):
            if 'seam' in field.metadata:
                setattr(self, field.name, field.metadata['seam'])

        for name, value in overrides.items():
            if not hasattr(self, name):
                raise TypeError(f'Config has no setting {name!r}')
            declared = _SETTINGS_BY_NAME.get(name)
            # Keys and formats may also be given as in the environment, in a string.
            if declared is not None and declared.parse is not None and isinstance(value, str):
                value = declared.parse(name, value)
            setattr(self, name, value)

        for name, declared in _settings():
            if declared.adds_to:
                setattr(
                    self,
                    declared.adds_to,
                    [*getattr(self, declared.adds_to), *getattr(self, name)],
                )
                setattr(self, name, [])
            value = getattr(self, name)
            if declared.most is not None and value > declared.most:
                raise ConfigError(
                    f'{declared.variable} must be at most {declared.most}, got {value}'
                )
        if self.images_url and not self.index_url:
            raise ConfigError(
                'LOOK_IMAGES_URL needs LOOK_INDEX_URL: images in an object store are shared '
                'by many hosts, and so must be the index that lists them (postgresql://...)'
            )

    def __repr__(self) -> str:
        fields = ', '.join(f'{name}={_shown(name, value)}' for name, value in vars(self).items())
        return f'Config({fields})'


def _settings() -> Iterator[tuple[str, Setting]]:
    """Yield each setting's attribute name and declaration, in the order of the table."""
    for field in dataclasses.fields(Config):
        declared = field.metadata.get('setting')
        if declared is not None:
            yield field.name, declared


_SETTINGS_BY_NAME = dict(_settings())


def read(attribute: str, environ: Mapping[str, str] | None = None) -> Any:
    """Return one setting as the environment gives it, without reading the others."""
    declared = _SETTINGS_BY_NAME[attribute]
    environ = os.environ if environ is None else environ
    if declared.parse is not None and declared.variable in environ:
        return declared.parse(declared.variable, environ[declared.variable])
    return declared.default_for(environ)


def _shown(name: str, value: Any) -> str:
    """Return a setting as repr() shows it: never a key, a password or a secret."""
    if name in ('api_keys', 'api_keys_file'):
        return f'<{len(value)} keys>'
    if name == 'index_url':
        return repr(without_password(value))
    if name == 's3_options':
        return repr(
            {key: '***' if 'secret' in key or 'token' in key else v for key, v in value.items()}
        )
    return repr(value)


def settings_table() -> str:
    """Return the README's table of settings: variable, default, meaning."""
    rows = ['| variable | default | meaning |', '|---|---|---|']
    for _name, declared in _settings():
        variable = declared.variable
        if not variable.startswith('`'):
            variable = f'`{variable}`'
        rows.append(
            f'| {variable} | {declared.shown or _default_text(declared)} | {declared.help} |'
        )
    return '\n'.join(rows)


def _default_text(declared: Setting) -> str:
    default = declared.default
    if callable(default) or default in ('', ()):
        return 'none'
    if isinstance(default, bool):
        return f'`{int(default)}`'
    if isinstance(default, tuple):
        return f'`{",".join(default)}`'
    return f'`{default}`'


# -- API keys -------------------------------------------------------------------------

MIN_SECRET_LENGTH = 16


# NOTE: gunicorn refuses a header line over 8190 bytes; a longer secret
#   could never be sent.
MAX_SECRET_LENGTH = 4096


_SECRET_ADVICE = "python3 -c 'import secrets; print(secrets.token_urlsafe())'"


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """A named API key; only its digest is kept, and no repr shows it."""

    name: str
    digest: bytes = dataclasses.field(repr=False)

    @classmethod
    def from_secret(cls, name: str, secret: str) -> ApiKey:
        """Make a key from its secret, which is not kept."""
        return cls(name, digest(secret))


def digest(secret: str) -> bytes:
    """Return the SHA-256 of a secret or token: all that look keeps of one."""
    return hashlib.sha256(secret.encode()).digest()


def parse_keys(text: str, *, source: str) -> list[ApiKey]:
    """Parse ``name:secret`` pairs or bare secrets, one per line or comma-separated.

    Blank lines and lines starting with ``#`` are skipped. A bare secret is
    named after ``source`` and its place, as logs show who uploaded. Raise
    ValueError, naming ``source`` (and the line, for text of many lines),
    for a secret that is too short, too long or not sendable in a header.
    """
    keys = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if line.strip().startswith('#'):
            continue
        where = f'{source} line {number}' if len(lines) > 1 else source
        for item in line.split(','):
            item = item.strip()
            if not item:
                continue
            name, colon, secret = item.partition(':')
            name, secret = (name.strip(), secret.strip()) if colon else ('', item)
            name = name or f'{source.split()[0]} #{len(keys) + 1}'
            _check_secret(where, name, secret)
            keys.append(ApiKey.from_secret(name, secret))
    return keys


def _check_secret(where: str, name: str, secret: str) -> None:
    if not name.isprintable():
        raise ValueError(f'{where}: a key name may hold printable characters only')
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f'{where}: the secret of key {name!r} is {len(secret)} characters; use at least '
            f'{MIN_SECRET_LENGTH}, such as {_SECRET_ADVICE}'
        )
    if len(secret) > MAX_SECRET_LENGTH:
        raise ValueError(
            f'{where}: the secret of key {name!r} is {len(secret)} characters; '
            f'at most {MAX_SECRET_LENGTH} fit in a request header'
        )
    # NOTE: Bearer credentials are ASCII without spaces (RFC 6750); a secret
    #   of other characters would never match what a client sends.
    if not all('!' <= character <= '~' for character in secret):
        raise ValueError(
            f'{where}: the secret of key {name!r} may hold only printable ASCII characters '
            f'without spaces, such as {_SECRET_ADVICE}'
        )
