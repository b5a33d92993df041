"""The index in PostgreSQL, shared by any number of look hosts.

One table, ``look_images``: a row per image ever added, numbered in commit
order by ``seq``. A delete keeps the row as a tombstone (``deleted_at``
set), so a page cursor naming a deleted image resumes where it was and a
check can tell a delete's leftover object from an image to restore.

Connections come from a pool made lazily in each process that uses it
(never before gunicorn forks, never in an image process), ``pool_size``
connections at most. A database that cannot be reached is
BackendUnavailable (503) within ``timeout`` seconds; the pool reconnects
by itself when it is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from look.core.ids import is_valid_id
from look.core.index import StoredImage
from look.errors import BackendUnavailable, BackendUnreachable, ImageExists, ImageNotFound

log = logging.getLogger(__name__)
T = TypeVar('T')

# NOTE: any fixed number; held by the process that creates or migrates the
#   schema, and for the moment an add takes its number, so rows are
#   numbered in the order they are committed.
_SCHEMA_LOCK = 0x6C6F6F6B_0001  # 'look', 1
_ORDER_LOCK = 0x6C6F6F6B_0002

# Each entry brings the schema from the version before it to its own.
MIGRATIONS = (
    """
    CREATE TABLE look_images (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id uuid NOT NULL UNIQUE,
        modified bigint NOT NULL,
        width integer NOT NULL,
        height integer NOT NULL,
        length bigint NOT NULL DEFAULT 0,
        token_hash text NOT NULL DEFAULT '',
        deleted_at bigint
    );
    CREATE INDEX look_images_listed ON look_images (seq) WHERE deleted_at IS NULL;
    """,
)

_COLUMNS = 'id::text, modified, width, height, length, token_hash'
_UNAVAILABLE = 'The index database does not answer now; try again shortly.'
# NOTE: a connection lent again within this many seconds of its last use is
#   not checked with a round trip first; a dropped one is found by its read,
#   which then runs again on a new connection (see _read).
CHECK_IDLE_AFTER = 2.0
_LAST_USED = 'look_last_used'


class _ConnectionLost(BackendUnavailable):
    """The database dropped a pooled connection (a restart, a network cut)."""


def url_problem(url: str) -> str | None:
    """Return why libpq cannot use ``url`` as a connection string, or None if it can."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as ex:
        return str(ex)
    return None


def _check_if_idle(connection: psycopg.Connection[Any]) -> None:
    """Check with a round trip a connection that has been idle for a while (a pool's check)."""
    if time.monotonic() - getattr(connection, _LAST_USED, 0.0) > CHECK_IDLE_AFTER:
        psycopg_pool.ConnectionPool.check_connection(connection)


def _image(row: tuple[Any, ...]) -> StoredImage:
    image_id, modified, width, height, length, token_hash = row
    return StoredImage(image_id, modified, (width, height), length, token_hash)


def _unavailable(ex: Exception, *, reached: bool = True) -> BackendUnavailable:
    log.error('the index database does not answer: %s', ex)
    kind = BackendUnavailable if reached else BackendUnreachable
    return kind(_UNAVAILABLE)


class PostgresIndex:
    """The index in the table ``look_images`` of a PostgreSQL database."""

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 3.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self.read_only = False
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_pid: int | None = None
        self._pool_born = 0.0

    # -- start-up ---------------------------------------------------------

    def open(self) -> None:
        """Create the schema, or bring it up to date, under a lock every host respects.

        Uses one connection of its own, closed before returning: nothing
        made here is inherited by processes forked later. Raise
        BackendUnavailable if the database cannot be reached or refuses.
        """
        try:
            self._migrate()
        except psycopg.Error as ex:
            raise BackendUnavailable(str(ex).strip()) from ex

    def _migrate(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            connection.execute('SELECT pg_advisory_lock(%s)', (_SCHEMA_LOCK,))
            try:
                connection.execute(
                    'CREATE TABLE IF NOT EXISTS look_schema (version integer NOT NULL)'
                )
                row = connection.execute('SELECT max(version) FROM look_schema').fetchone()
                version = row[0] if row and row[0] is not None else 0
                if version > len(MIGRATIONS):
                    raise BackendUnavailable(
                        f'the index schema is version {version}; this look knows up to '
                        f'{len(MIGRATIONS)}: upgrade look'
                    )
                for number, migration in enumerate(MIGRATIONS[version:], version + 1):
                    with connection.transaction():
                        connection.execute(migration)
                        connection.execute(
                            'INSERT INTO look_schema (version) VALUES (%s)', (number,)
                        )
                    log.info('index schema migrated to version %d', number)
            finally:
                connection.execute('SELECT pg_advisory_unlock(%s)', (_SCHEMA_LOCK,))

    def close(self) -> None:
        """Close this process's pool, if it made one."""
        with self._lock:
            pool, self._pool = self._pool, None
            mine = self._pool_pid == os.getpid()
        if pool is not None and mine:
            pool.close()

    # -- connections ------------------------------------------------------

    def _current_pool(self) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # NOTE: a pool inherited across a fork is dropped, not closed:
                #   its connections and threads belong to the parent.
                pool = psycopg_pool.ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    open=False,
                    timeout=self.timeout,
                    kwargs={
                        'autocommit': True,
                        'connect_timeout': max(1, int(self.timeout)),
                        # NOTE: a database host that stops acknowledging (a
                        #   network cut) drops the connection in seconds, not
                        #   the kernel's quarter of an hour.
                        'tcp_user_timeout': int(self.timeout * 1000),
                        'keepalives_idle': 30,
                    },
                    # A connection broken by a database restart while it
                    # was idle is found here, not by the request that gets it.
                    check=_check_if_idle,
                    reconnect_timeout=float('inf'),
                    name=f'look-index-{os.getpid()}',
                )
                pool.open(wait=False)
                self._pool, self._pool_pid = pool, os.getpid()
                self._pool_born = time.monotonic()
            return self._pool

    def _replace_pool(self, pool: psycopg_pool.ConnectionPool) -> None:
        """Drop a pool that found no connection, so the next request connects at once.

        NOTE: a pool retries a lost database with growing pauses (up to
          minutes); a new pool tries at once. At most one pool per timeout.
        """
        with self._lock:
            if self._pool is not pool or time.monotonic() - self._pool_born < self.timeout:
                return
            self._pool = None
        threading.Thread(target=pool.close, name='look-index-close', daemon=True).start()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection; a database that does not answer is BackendUnavailable."""
        pool = self._current_pool()
        lent: psycopg.Connection[Any] | None = None
        try:
            with pool.connection() as connection:
                lent = connection
                yield connection
                setattr(connection, _LAST_USED, time.monotonic())
        except psycopg_pool.PoolTimeout as ex:
            # No connection was lent: nothing was sent, let alone committed.
            self._replace_pool(pool)
            raise _unavailable(ex, reached=False) from ex
        except psycopg.OperationalError as ex:
            if lent is not None and lent.broken:
                # The others in the pool were most likely dropped with it.
                log.warning('the index database dropped a connection: %s', ex)
                pool.drain()
                raise _ConnectionLost(_UNAVAILABLE) from ex
            raise _unavailable(ex) from ex

    def _read(self, read: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``read`` on a pooled connection, once more on a new one if it was dropped.

        Only for reads: a write on a dropped connection may or may not have
        committed, so it is the caller's 503.
        """
        try:
            with self._connection() as connection:
                return read(connection)
        except _ConnectionLost:
            try:
                with self._connection() as connection:
                    return read(connection)
            except _ConnectionLost as ex:
                raise _unavailable(ex.__cause__ or ex) from ex

    def _one(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._read(
            lambda connection: connection.execute(query, params).fetchone()
        )
        return row

    # -- reading ----------------------------------------------------------

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        row = self._one(
            f'SELECT {_COLUMNS} FROM look_images WHERE id = %s AND deleted_at IS NULL',
            (image_id,),
        )
        if row is None:
            raise ImageNotFound(f'No image has the id {image_id}.')
        return _image(row)

    def page(
        self, *, after: str | None = None, limit: int, newest_first: bool = False
    ) -> list[StoredImage]:
        """Return up to ``limit`` images in commit order, starting after the id ``after``."""
        if limit <= 0:
            return []
        if after is not None and not is_valid_id(after):
            raise ImageNotFound(f'No image has the id {after!r}.')
        direction, compare = ('DESC', '<') if newest_first else ('ASC', '>')

        def read(connection: psycopg.Connection[Any]) -> list[StoredImage]:
            if after is None:
                rows = connection.execute(
                    f'SELECT {_COLUMNS} FROM look_images WHERE deleted_at IS NULL '
                    f'ORDER BY seq {direction} LIMIT %s',
                    (limit,),
                ).fetchall()
                return [_image(row) for row in rows]
            rows = connection.execute(
                f'SELECT {_COLUMNS} FROM look_images WHERE deleted_at IS NULL '
                f'AND seq {compare} (SELECT seq FROM look_images WHERE id = %s) '
                f'ORDER BY seq {direction} LIMIT %s',
                (after, limit),
            ).fetchall()
            if (
                not rows
                and not connection.execute(
                    'SELECT 1 FROM look_images WHERE id = %s', (after,)
                ).fetchone()
            ):
                raise ImageNotFound(f'No image has the id {after}.')
            return [_image(row) for row in rows]

        return self._read(read)

    def was_deleted(self, image_id: str) -> bool:
        """Return whether this id was listed once and has been deleted since."""
        if not is_valid_id(image_id):
            return False
        row = self._one(
            'SELECT 1 FROM look_images WHERE id = %s AND deleted_at IS NOT NULL', (image_id,)
        )
        return row is not None

    def count(self) -> int:
        """Return how many images there are."""
        row = self._one('SELECT count(*) FROM look_images WHERE deleted_at IS NULL', ())
        return int(row[0]) if row else 0

    def problems(self) -> list[str]:
        """Return nothing: the database keeps no damaged records for look to skip."""
        return []

    def check(self) -> str | None:
        """Return None if the database answers now, else why not."""
        try:
            self._one('SELECT 1', ())
        except BackendUnavailable:
            return 'the index database does not answer'
        return None

    # -- writing ----------------------------------------------------------

    def add(self, image: StoredImage) -> None:
        """Insert the row of ``image`` (or list a deleted id again, in its place).

        A connection found dropped before the commit was sent committed
        nothing: that is BackendUnreachable, so the caller may take its JPEG
        back. One dropped during the commit may have committed.
        """
        committing = False
        try:
            with self._connection() as connection, connection.transaction():
                self._insert(connection, image)
                committing = True
        except _ConnectionLost as ex:
            if committing:
                raise
            raise BackendUnreachable(_UNAVAILABLE) from ex

    def _insert(self, connection: psycopg.Connection[Any], image: StoredImage) -> None:
        # NOTE: numbers are taken under a transaction lock, so no row gets a
        #   lower number than one already committed: a reader paging with
        #   after= never skips a row that commits late.
        connection.execute('SELECT pg_advisory_xact_lock(%s)', (_ORDER_LOCK,))
        row = connection.execute(
            'INSERT INTO look_images (id, modified, width, height, length, token_hash) '
            'VALUES (%s, %s, %s, %s, %s, %s) '
            'ON CONFLICT (id) DO UPDATE SET deleted_at = NULL, modified = EXCLUDED.modified, '
            'width = EXCLUDED.width, height = EXCLUDED.height, length = EXCLUDED.length, '
            'token_hash = EXCLUDED.token_hash '
            'WHERE look_images.deleted_at IS NOT NULL RETURNING 1',
            (image.id, image.modified, *image.size, image.length, image.token_hash),
        ).fetchone()
        if row is None:
            raise ImageExists(f'An image with the id {image.id} already exists.')

    def delete(self, image_id: str) -> StoredImage:
        """Mark the image's row deleted and return the image, or raise ImageNotFound."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        with self._connection() as connection:
            row = connection.execute(
                f'UPDATE look_images SET deleted_at = %s WHERE id = %s AND deleted_at IS NULL '
                f'RETURNING {_COLUMNS}',
                (int(time.time()), image_id),
            ).fetchone()
        if row is None:
            raise ImageNotFound(f'No image has the id {image_id}.')
        return _image(row)

    def rewrite(self) -> None:
        """Do nothing: there are no damaged records to leave out."""

    def writes_paused(self) -> contextlib.AbstractContextManager[None]:
        """Pause nothing: a check of shared backends relies on its grace time instead."""
        return contextlib.nullcontext()

    # -- moving a local index in ------------------------------------------

    def import_entries(self, entries: Iterable[tuple[str, StoredImage | None]]) -> int:
        """Insert images and deleted ids (None) in order, skipping ids already here.

        One transaction: all of them or none. Returns how many rows were new.
        """
        added = 0
        with self._connection() as connection, connection.transaction():
            connection.execute('SELECT pg_advisory_xact_lock(%s)', (_ORDER_LOCK,))
            for image_id, image in entries:
                if image is None:
                    cursor = connection.execute(
                        'INSERT INTO look_images (id, modified, width, height, deleted_at) '
                        'VALUES (%s, 0, 0, 0, 0) ON CONFLICT (id) DO NOTHING',
                        (image_id,),
                    )
                else:
                    cursor = connection.execute(
                        'INSERT INTO look_images (id, modified, width, height, length, '
                        'token_hash) VALUES (%s, %s, %s, %s, %s, %s) '
                        'ON CONFLICT (id) DO NOTHING',
                        (image.id, image.modified, *image.size, image.length, image.token_hash),
                    )
                added += cursor.rowcount
        return added

    def analyze(self) -> None:
        """Refresh the planner's statistics, as after a bulk import.

        NOTE: with statistics from an empty table, a page after a cursor was
          planned as a sort of every later row: 15 ms at 50 000 rows, not 0.1 ms.
        """
        with self._connection() as connection:
            connection.execute('ANALYZE look_images')

    def known(self, image_ids: list[str]) -> set[str]:
        """Return which of these ids have a row (listed or deleted)."""
        rows = self._read(
            lambda connection: connection.execute(
                'SELECT id::text FROM look_images WHERE id = ANY(%s::uuid[])', (image_ids,)
            ).fetchall()
        )
        return {row[0] for row in rows}
