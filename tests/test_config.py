"""Config: defaults, LOOK_* parsing with errors that name the variable, overrides."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable

import pytest
import redis
from falcon.testing import TestClient

from look.app import create_app
from look.config import Config, ConfigError

from support.imagegen import image_bytes

MakeClient = Callable[..., TestClient]


def test_defaults_without_environment() -> None:
    config = Config(environ={'HOME': '/home/ann'})

    assert config.storage_path == pathlib.Path('/home/ann/.local/share/look')
    assert config.redis_url == 'redis://localhost:6379/0'
    assert config.redis_from_url == redis.Redis.from_url
    assert config.uuid_generator is uuid.uuid4
    assert config.min_thumb_size == 64
    assert config.max_upload_bytes == 32 * 1024 * 1024
    assert config.max_pixels == 8192 * 8192
    assert config.processes == (os.cpu_count() or 1)
    assert config.cache_ttl == 3600
    assert config.render_timeout == 20.0
    assert config.upload_timeout == 180.0
    assert config.jpeg_quality == 85


def test_storage_follows_xdg_data_home() -> None:
    """A per-user data directory, so look runs without root."""
    config = Config(environ={'HOME': '/home/ann', 'XDG_DATA_HOME': '/data/ann'})

    assert config.storage_path == pathlib.Path('/data/ann/look')


def test_reads_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('LOOK_PROCESSES', '3')

    assert Config().processes == 3


@pytest.mark.parametrize(
    ('variable', 'value', 'attribute', 'expected'),
    [
        ('LOOK_STORAGE_PATH', '/srv/look', 'storage_path', pathlib.Path('/srv/look')),
        ('LOOK_STORAGE_PATH', '~/pics', 'storage_path', pathlib.Path('~/pics').expanduser()),
        ('LOOK_REDIS_URL', ' redis://cache:6380/2 ', 'redis_url', 'redis://cache:6380/2'),
        ('LOOK_REDIS_URL', 'rediss://cache/0', 'redis_url', 'rediss://cache/0'),
        ('LOOK_REDIS_URL', 'unix:///run/redis.sock', 'redis_url', 'unix:///run/redis.sock'),
        ('LOOK_REDIS_URL', '', 'redis_url', ''),
        ('LOOK_MIN_THUMB_SIZE', '32', 'min_thumb_size', 32),
        ('LOOK_MAX_UPLOAD_BYTES', '10_000_000', 'max_upload_bytes', 10_000_000),
        ('LOOK_MAX_PIXELS', ' 5000 ', 'max_pixels', 5000),
        ('LOOK_PROCESSES', '1', 'processes', 1),
        ('LOOK_CACHE_TTL', '60', 'cache_ttl', 60),
        ('LOOK_RENDER_TIMEOUT', '2.5', 'render_timeout', 2.5),
        ('LOOK_UPLOAD_TIMEOUT', '30', 'upload_timeout', 30.0),
        ('LOOK_JPEG_QUALITY', '95', 'jpeg_quality', 95),
        ('LOOK_INDEX_URL', 'postgresql://db/look', 'index_url', 'postgresql://db/look'),
        ('LOOK_INDEX_URL', ' postgres://u@db:5433/x ', 'index_url', 'postgres://u@db:5433/x'),
        ('LOOK_INDEX_URL', '', 'index_url', ''),
        ('LOOK_ORIGINALS_CACHE_BYTES', '0', 'originals_cache_bytes', 0),
        ('LOOK_ORIGINALS_CACHE_BYTES', '1_000_000', 'originals_cache_bytes', 1_000_000),
        ('LOOK_INDEX_POOL_SIZE', '8', 'index_pool_size', 8),
    ],
)
def test_environment_variable_is_parsed(
    variable: str, value: str, attribute: str, expected: object
) -> None:
    config = Config(environ={variable: value})

    assert getattr(config, attribute) == expected


@pytest.mark.parametrize(
    ('variable', 'value'),
    [
        ('LOOK_STORAGE_PATH', '  '),
        ('LOOK_REDIS_URL', 'localhost:6379'),
        ('LOOK_REDIS_URL', 'http://cache:6379/0'),
        ('LOOK_REDIS_URL', 'redis://cache:notaport/0'),
        ('LOOK_REDIS_URL', 'redis://cache/0?socket_timeout=soon'),
        ('LOOK_REDIS_URL', 'unix://'),
        ('LOOK_REDIS_URL', 'unix://run/redis.sock'),
        ('LOOK_REDIS_URL', 'redis://cache/0?decode_responses=true'),
        ('LOOK_MIN_THUMB_SIZE', '0'),
        ('LOOK_MAX_UPLOAD_BYTES', '32MB'),
        ('LOOK_MAX_PIXELS', '-1'),
        ('LOOK_MAX_PIXELS', str(65500 * 65500 + 1)),
        ('LOOK_PROCESSES', '1.5'),
        ('LOOK_CACHE_TTL', ''),
        ('LOOK_CACHE_TTL', '99999999999999999'),
        ('LOOK_RENDER_TIMEOUT', '0'),
        ('LOOK_RENDER_TIMEOUT', 'soon'),
        ('LOOK_RENDER_TIMEOUT', 'nan'),
        ('LOOK_UPLOAD_TIMEOUT', '-1'),
        ('LOOK_JPEG_QUALITY', '0'),
        ('LOOK_JPEG_QUALITY', '96'),
        ('LOOK_INDEX_URL', 'mysql://db/look'),
        ('LOOK_INDEX_URL', 'postgresql://db/look?sslmode=sometimes&=x'),
        ('LOOK_IMAGES_URL', 'https://bucket.example.com/look'),
        ('LOOK_IMAGES_URL', 's3://'),
        ('LOOK_IMAGES_URL', 's3://Bucket_Name/x'),
        ('LOOK_IMAGES_URL', 's3://bucket/x?versionId=1'),
        ('LOOK_ORIGINALS_CACHE_BYTES', '-1'),
        ('LOOK_ORIGINALS_CACHE_BYTES', '1GB'),
        ('LOOK_INDEX_POOL_SIZE', '0'),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Config(environ={variable: value})


@pytest.mark.parametrize(
    'url',
    [
        'redis://user:secret@cache:6379/0',
        'rediss://cache:6380/1?ssl_cert_reqs=none&socket_timeout=0.5',
        'unix:///run/redis/redis.sock?db=2',
        'redis://[::1]:6379/0',
    ],
)
def test_redis_urls_redis_py_takes_are_kept(url: str) -> None:
    assert Config(environ={'LOOK_REDIS_URL': url}).redis_url == url


@pytest.mark.parametrize('variable', ['LOOK_RENDER_TIMEOUT', 'LOOK_UPLOAD_TIMEOUT'])
@pytest.mark.parametrize('value', ['inf', '1e300'])
def test_timeouts_must_be_usable_as_timeouts(variable: str, value: str) -> None:
    """A timeout nothing can wait for would make every upload a 500 (OverflowError)."""
    with pytest.raises(ConfigError, match=variable):
        Config(environ={variable: value})


def test_images_in_an_object_store_need_a_shared_index() -> None:
    with pytest.raises(ConfigError, match='LOOK_IMAGES_URL needs LOOK_INDEX_URL'):
        Config(environ={'LOOK_IMAGES_URL': 's3://look-images'})


def test_the_object_store_and_its_index_are_read_together() -> None:
    config = Config(
        environ={
            'LOOK_IMAGES_URL': 's3://look-images/prod/',
            'LOOK_INDEX_URL': 'postgresql://look@db/look',
            'AWS_ENDPOINT_URL': 'http://any:9000',
            'AWS_ENDPOINT_URL_S3': 'http://s3:9000',
            'AWS_ACCESS_KEY_ID': 'id',
            'AWS_SECRET_ACCESS_KEY': 'secret',
            'AWS_DEFAULT_REGION': 'eu-west-1',
        }
    )

    assert config.images_url == 's3://look-images/prod/'
    assert config.s3_options == {
        'endpoint_url': 'http://s3:9000',
        'aws_access_key_id': 'id',
        'aws_secret_access_key': 'secret',
        'region_name': 'eu-west-1',
    }


def test_an_index_alone_is_shared_and_images_stay_on_the_storage_path() -> None:
    config = Config(environ={'LOOK_INDEX_URL': 'postgresql://db/look'})

    assert (config.index_url, config.images_url) == ('postgresql://db/look', '')


def test_repr_shows_no_password_or_secret() -> None:
    config = Config(
        environ={
            'LOOK_INDEX_URL': 'postgresql://look:hunter2@db/look',
            'AWS_SECRET_ACCESS_KEY': 'wJalrXUtnFEMI',
            'AWS_ACCESS_KEY_ID': 'AKIDEXAMPLE',
        }
    )

    text = repr(config)

    assert 'hunter2' not in text and 'wJalrXUtnFEMI' not in text
    assert 'postgresql://look:***@db/look' in text


@pytest.mark.parametrize(
    ('variable', 'url'),
    [
        ('LOOK_INDEX_URL', 'postgresql://postgres@127.0.0.1:1/look'),
        ('LOOK_IMAGES_URL', 's3://look-images'),
    ],
)
def test_backends_that_cannot_be_reached_stop_start_up_naming_the_variable(
    tmp_path: pathlib.Path, variable: str, url: str
) -> None:
    """Nothing listens on port 1: a wrong address is found at start, not at the first upload."""
    environ = {
        'LOOK_STORAGE_PATH': str(tmp_path),
        'LOOK_REDIS_URL': '',
        'LOOK_INDEX_URL': 'postgresql://postgres@127.0.0.1:1/look',
        'AWS_ENDPOINT_URL_S3': 'http://127.0.0.1:1',
        'AWS_ACCESS_KEY_ID': 'id',
        'AWS_SECRET_ACCESS_KEY': 'secret',
        'AWS_DEFAULT_REGION': 'us-east-1',
        variable: url,
    }

    with pytest.raises(ConfigError, match=variable):
        create_app(Config(environ=environ))


def test_storage_path_that_is_a_file_names_the_variable(tmp_path: pathlib.Path) -> None:
    a_file = tmp_path / 'afile'
    a_file.write_text('not a directory')

    with pytest.raises(ConfigError, match='LOOK_STORAGE_PATH'):
        create_app(Config(environ={}, storage_path=a_file, redis_url=''))


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError around start-up keep working."""
    assert issubclass(ConfigError, ValueError)


def test_keyword_overrides_win_over_environment() -> None:
    config = Config(environ={'LOOK_PROCESSES': '3', 'LOOK_CACHE_TTL': '60'}, processes=5)

    assert config.processes == 5
    assert config.cache_ttl == 60


def test_jpeg_quality_limit_applies_to_overrides_too() -> None:
    with pytest.raises(ConfigError, match='LOOK_JPEG_QUALITY'):
        Config(environ={}, jpeg_quality=100)


def test_unknown_setting_is_a_type_error() -> None:
    """A misspelt override fails loudly instead of being ignored."""
    with pytest.raises(TypeError, match='max_upload_byte'):
        Config(environ={}, max_upload_byte=10)


def test_repr_shows_the_settings() -> None:
    text = repr(Config(environ={}, processes=7))

    assert text.startswith('Config(')
    assert 'processes=7' in text


def test_assignment_before_create_app_is_used(
    make_config: Callable[..., Config], make_client: MakeClient
) -> None:
    config = make_config()
    config.min_thumb_size = 16

    client = make_client(config)
    response = client.simulate_post('/images', body=image_bytes('PNG', size=(64, 64)))

    assert response.status_code == 201
    assert [url.rsplit('/', 1)[1] for url in response.json['thumbnails']] == [
        '32x32.jpeg',
        '16x16.jpeg',
    ]


def test_empty_redis_url_disables_the_cache(make_client: MakeClient) -> None:
    """No Redis at all: nothing connects, thumbnails are still served."""

    def no_redis(url: str) -> None:
        raise AssertionError(f'connected to Redis at {url!r}')

    client = make_client(redis_url='', redis_from_url=no_redis)
    upload = client.simulate_post('/images', body=image_bytes(size=(256, 128)))
    assert upload.status_code == 201
    thumbnail = upload.json['thumbnails'][0]

    for _ in range(2):
        response = client.simulate_get(thumbnail)
        assert response.status_code == 200
        assert response.headers['Content-Type'] == 'image/jpeg'
        assert 'X-Look-Cache' not in response.headers
    assert client.simulate_get('/health').json['cache'] == {'status': 'disabled'}


def test_empty_redis_url_from_environment_disables_the_cache(
    tmp_path: pathlib.Path, make_client: MakeClient
) -> None:
    config = Config(
        environ={
            'LOOK_REDIS_URL': '',
            'LOOK_STORAGE_PATH': str(tmp_path),
            'LOOK_ALLOWED_HOSTS': 'falconframework.org',  # the TestClient's
        }
    )
    config.processes = 1

    client = make_client(config)

    assert client.simulate_get('/images').status_code == 200
    assert client.simulate_get('/health').json['cache'] == {'status': 'disabled'}
