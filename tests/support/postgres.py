"""A database of the test run's own on the machine's PostgreSQL (127.0.0.1:5432, user postgres)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from support.processes import Server

POSTGRES_URL = os.environ.get('LOOK_TEST_POSTGRES_URL', 'postgresql://postgres@127.0.0.1:5432')


class PostgresDatabase(Server):
    """A database of its own on the machine's PostgreSQL, created on start, dropped on close.

    The server is not ours to start: without one, tests skip (fail under CI=true).
    """

    def __init__(self, server_url: str = POSTGRES_URL) -> None:
        self.server_url = server_url.rstrip('/')
        self.name = f'look_test_{os.getpid()}_{os.urandom(4).hex()}'
        self._created = False

    @property
    def url(self) -> str:
        """The LOOK_INDEX_URL of this database."""
        return f'{self.server_url}/{self.name}'

    def schema_url(self, schema: str) -> str:
        """Return a LOOK_INDEX_URL whose tables live in ``schema`` of this database."""
        return f'{self.url}?options=-csearch_path%3D{schema}'

    def admin(self) -> Any:
        """Return a connection to the server's own database, to act on this one from outside."""
        import psycopg

        return psycopg.connect(f'{self.server_url}/postgres', autocommit=True, connect_timeout=5)

    def start(self) -> None:
        """Create the database; skip, or fail under CI=true, if PostgreSQL cannot be reached."""
        import psycopg

        try:
            with self.admin() as connection:
                connection.execute(f'CREATE DATABASE {self.name}')
        except psycopg.OperationalError as ex:
            message = f'PostgreSQL at {self.server_url} cannot be reached: {ex}'
            if os.environ.get('CI', '').lower() == 'true':
                pytest.fail(f'{message}, and CI=true needs these tests to run')
            pytest.skip(message)
        self._created = True

    def connect(self) -> Any:
        """Return a connection to this database (autocommit), to look behind look's back."""
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def create_schema(self, schema: str) -> str:
        """Create an empty schema; return the LOOK_INDEX_URL that uses it."""
        with self.connect() as connection:
            connection.execute(f'CREATE SCHEMA {schema}')
        return self.schema_url(schema)

    @contextlib.contextmanager
    def refusing_connections(self) -> Iterator[None]:
        """Refuse new connections to this database for the block; open ones go on."""
        with self.admin() as connection:
            connection.execute(f'ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS false')
            try:
                yield
            finally:
                connection.execute(f'ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS true')

    def close(self) -> None:
        """Drop the database, closing whatever connections are left on it."""
        if not self._created:
            return
        self._created = False
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS {self.name} WITH (FORCE)')


@pytest.fixture(scope='session', name='postgres')
def postgres_fixture() -> Iterator[PostgresDatabase]:
    """One database of this run's own, dropped at the end; tests keep apart by schema."""
    with PostgresDatabase() as database:
        yield database
