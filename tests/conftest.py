"""Shared fixtures for the in-process tests: configs, apps and clients on fresh storage."""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import falcon.testing
import pytest

from look import thumbnailer
from look.app import create_app
from look.config import Config

MakeConfig = Callable[..., Config]
MakeClient = Callable[..., falcon.testing.TestClient]


@pytest.fixture(autouse=True)
def _stop_pools() -> Iterator[None]:
    """Stop every thumbnailer pool a test started, so no pool process outlives it."""
    yield
    thumbnailer.close_all()


@pytest.fixture
def fake_redis_server() -> fakeredis.FakeServer:
    """Return this test's own Redis server.

    NOTE: a bare ``fakeredis.FakeRedis()`` joins a server shared by every
    client with the same host and port, so entries would leak between tests.
    """
    return fakeredis.FakeServer()


@pytest.fixture
def make_config(tmp_path: pathlib.Path, fake_redis_server: fakeredis.FakeServer) -> MakeConfig:
    """Return a factory of Configs on fresh storage, with fake Redis and a small pool.

    The process environment is not read, so a LOOK_* variable set in the
    shell cannot change what a test sees.
    """
    numbers = itertools.count()

    def make(**overrides: Any) -> Config:
        settings: dict[str, Any] = {
            'storage_path': tmp_path / f'storage-{next(numbers)}',
            'redis_url': 'redis://fake:6379/0',
            'redis_from_url': lambda url: fakeredis.FakeRedis(server=fake_redis_server),
            'processes': 2,
        }
        settings.update(overrides)
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
