"""Shared fixtures for the in-process tests: configs, apps and clients on fresh storage.

A module or test marked ``@pytest.mark.backends('local', 'shared')`` runs once
per backend: ``local`` keeps images and index under the storage path (the
default), ``shared`` keeps them in this run's SeaweedFS and PostgreSQL, each
Config on a bucket prefix and a schema of its own. A closer marker narrows
it: a case marked ``backends('local')`` (a ``pytest.param`` too), one that
never reaches the backends, runs once.
"""

from __future__ import annotations

import itertools
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import falcon.testing
import pytest

from look.app import create_app
from look.config import Config
from look.core import backends
from look.imaging import pool as thumbnailer

# The real servers' fixtures, registered for every test: gunicorn, make_gunicorn,
# redis_server, seaweed, postgres. (Their Python names differ, so that test
# arguments do not shadow them.)
from support.gunicorn import gunicorn_fixture, make_gunicorn_fixture  # noqa: F401
from support.postgres import postgres_fixture  # noqa: F401
from support.redis import redis_server_fixture  # noqa: F401
from support.seaweed import seaweed_fixture  # noqa: F401

MakeConfig = Callable[..., Config]
MakeClient = Callable[..., falcon.testing.TestClient]


BACKENDS = ('local', 'shared')
SHARED_BUCKET = 'look-tests'


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test once per backend its ``backends`` marker names (the closest one wins)."""
    marker = metafunc.definition.get_closest_marker('backends')
    if marker is None or 'backend' not in metafunc.fixturenames:
        return
    names = marker.args
    unknown = set(names) - set(BACKENDS)
    if unknown or not names:
        raise pytest.UsageError(f'backends() takes names from {BACKENDS}, got {names}')
    if names != ('local',):
        metafunc.parametrize('backend', names, indirect=True)


# Fixtures that start a real server, and markers of tests that start one themselves.
SERVER_FIXTURES = frozenset({'gunicorn', 'make_gunicorn', 'redis_server', 'seaweed', 'postgres'})
SERVER_MARKERS = ('e2e', 'redis', 'nginx')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a real server ``servers``; leave out unwanted backends.

    A backend that a closer ``backends`` marker does not name (a parameter's
    own, say) is left out. ``make test-fast`` runs what is not ``servers``.
    """
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, 'callspec', None)
        backend = callspec.params.get('backend') if callspec is not None else None
        marker = item.get_closest_marker('backends')
        if backend is not None and marker is not None and backend not in marker.args:
            dropped.append(item)
            continue
        kept.append(item)
        if (
            backend == 'shared'
            or 'e2e' in item.path.parts
            or SERVER_FIXTURES & set(getattr(item, 'fixturenames', ()))
            or any(item.get_closest_marker(name) for name in SERVER_MARKERS)
        ):
            item.add_marker(pytest.mark.servers)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _stop_pools() -> Iterator[None]:
    """Stop every thumbnailer pool and close every library a test opened."""
    yield
    thumbnailer.close_all()
    backends.close_all()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Name the backend this test runs on: local unless its marker says otherwise."""
    return str(getattr(request, 'param', 'local'))


@pytest.fixture
def fake_redis_server() -> fakeredis.FakeServer:
    """Return this test's own Redis server.

    NOTE: a bare ``fakeredis.FakeRedis()`` joins a server shared by every
    client with the same host and port, so entries would leak between tests.
    """
    return fakeredis.FakeServer()


@pytest.fixture
def make_config(
    request: pytest.FixtureRequest,
    backend: str,
    tmp_path: pathlib.Path,
    fake_redis_server: fakeredis.FakeServer,
) -> MakeConfig:
    """Return a factory of Configs on fresh storage, with fake Redis and a small pool.

    The process environment is not read, so a LOOK_* variable set in the
    shell cannot change what a test sees. On the shared backend, a Config
    made with the ``storage_path`` of an earlier one shares its bucket
    prefix and schema too: the same store, as another worker or host sees it.
    """
    numbers = itertools.count()
    shared: dict[pathlib.Path, dict[str, Any]] = {}

    def shared_settings(storage_path: pathlib.Path) -> dict[str, Any]:
        if storage_path not in shared:
            seaweed = request.getfixturevalue('seaweed')
            postgres = request.getfixturevalue('postgres')
            name = f't{os.urandom(6).hex()}'
            shared[storage_path] = {
                'images_url': f's3://{SHARED_BUCKET}/{name}',
                'index_url': postgres.create_schema(name),
                's3_options': seaweed.options,
            }
        return shared[storage_path]

    def make(**overrides: Any) -> Config:
        settings: dict[str, Any] = {
            'storage_path': tmp_path / f'storage-{next(numbers)}',
            'redis_url': 'redis://fake:6379/0',
            'redis_from_url': lambda url: fakeredis.FakeRedis(server=fake_redis_server),
            'processes': 1,
            # NOTE: the host a TestClient sends; with no keys, look answers
            #   only to loopback and the hosts it is told of.
            'allowed_hosts': (falcon.testing.helpers.DEFAULT_HOST,),
        }
        settings.update(overrides)
        if backend == 'shared':
            settings = {**shared_settings(pathlib.Path(settings['storage_path'])), **settings}
        return Config(environ={}, **settings)

    return make


@pytest.fixture
def config(make_config: MakeConfig) -> Config:
    """Return the default test Config."""
    return make_config()


@pytest.fixture
def make_client(make_config: MakeConfig) -> MakeClient:
    """Return a factory of TestClients; keyword arguments override Config settings."""

    def make(config: Config | None = None, **overrides: Any) -> falcon.testing.TestClient:
        if config is None:
            config = make_config(**overrides)
        elif overrides:
            raise TypeError('pass either a config or overrides, not both')
        return falcon.testing.TestClient(create_app(config))

    return make


@pytest.fixture
def client(make_client: MakeClient, config: Config) -> falcon.testing.TestClient:
    """Return a TestClient of an app built from the default test Config."""
    return make_client(config)
