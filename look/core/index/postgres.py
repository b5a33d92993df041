"""The index in PostgreSQL, shared by any number of look hosts.

One table, ``look_images``: a row per image ever added, numbered in commit
order by ``seq``. A delete keeps the row as a tombstone (``deleted_at``
set), so a page cursor naming a deleted image resumes where it was and a
check can tell a delete's leftover object from an image to restore. A
second, ``look_removals``, is the list of objects to remove: a delete adds
its image's in the statement that marks the row; every host claims due
entries with ``FOR UPDATE SKIP LOCKED``, and times are the database's, so
hosts whose clocks differ agree on what is due.

Connections come from a pool made lazily in each process that uses it
(never before gunicorn forks, never in an image process), ``pool_size``
connections at most. A database that cannot be reached is
BackendUnavailable (503) within ``timeout`` seconds; the pool reconnects
by itself when it is back.

A row changes only by a delete (which marks it) or an amend (its alt text or
placeholder), and each notifies every host; so each process keeps the rows
``get`` read, and one more connection of its own that hears every delete
and amend (``LISTEN``) and drops the row: see ROW_MAX_AGE for how soon a
change is seen.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from look.core.breaker import Breaker
from look.core.ids import is_valid_id
from look.core.index import DELETED, Backlog, CommitInDoubt, Removal, StoredImage
from look.core.lazy import PerProcess
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
    """
    ALTER TABLE look_images
        ADD COLUMN alt text NOT NULL DEFAULT '',
        ADD COLUMN thumbhash text NOT NULL DEFAULT '',
        ADD COLUMN color text NOT NULL DEFAULT '',
        ADD COLUMN frames integer NOT NULL DEFAULT 0,
        ADD COLUMN duration_ms integer NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE look_removals (
        id uuid PRIMARY KEY,
        reason text NOT NULL,
        listed double precision NOT NULL,
        due double precision NOT NULL
    );
    CREATE INDEX look_removals_due ON look_removals (due);
    """,
)
# The database's clock, in Unix seconds: what every host's removal times are.
_NOW = 'extract(epoch FROM clock_timestamp())::double precision'

_COLUMNS = (
    'id::text, modified, width, height, length, token_hash, alt, thumbhash, color, frames, '
    'duration_ms'
)
_UNAVAILABLE = 'The index database does not answer now; try again shortly.'
# NOTE: a connection lent again within this many seconds of its last use is
#   not checked with a round trip first; a dropped one is found by its read,
#   which then runs again on a new connection (see _read).
CHECK_IDLE_AFTER = 2.0
# NOTE: after the database could not be reached, requests answer 503 at once
#   for this long rather than each wait out the pool's timeout, as the image
#   store's requests do after it failed to answer.
OUTAGE_PAUSE = 2.0
_LAST_USED = 'look_last_used'

# NOTE: a download, a HEAD, a thumbnail and an image page each ask for the
#   image's row; each process keeps up to CACHED_ROWS rows it has read, so
#   a repeat costs no round trip. A miss is never kept: an image uploaded
#   on another host is found at once. A delete notifies DELETES_CHANNEL in
#   its own transaction, and a listener in each process (a thread with a
#   connection of its own) drops the row, and calls ``on_deleted``, as the
#   notification arrives. Rows are served only while the listener has heard
#   from the database within LISTENER_SILENCE (it asks every
#   LISTENER_HEARTBEAT): while it connects, after a restart or a cut, or
#   when its connection goes quiet, the rows are dropped and every get asks
#   the database, so a notification missed meanwhile leaves nothing stale.
#   So a delete on any host is seen by every host within the time its
#   notification takes (milliseconds), a lost listener stops serving rows
#   within LISTENER_SILENCE, and no row is served longer than ROW_MAX_AGE
#   after it was read, however the image was deleted (by hand in SQL too).
CACHED_ROWS = 4096
ROW_MAX_AGE = 5.0
LISTENER_HEARTBEAT = 1.0
LISTENER_SILENCE = 2.0
DELETES_CHANNEL = 'look_images_deleted'
# An image whose alt text or placeholder changed: its row is read again.
AMENDS_CHANNEL = 'look_images_amended'
# The listener's application_name, as pg_stat_activity shows it.
LISTENER_NAME = 'look-listener'
# Pauses between the listener's attempts to connect: doubling up to the last.
_LISTEN_RETRY = (0.05, 2.0)


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


def _connect_options(timeout: float) -> dict[str, Any]:
    """Return the options of every connection look makes to the index database."""
    return {
        'autocommit': True,
        'connect_timeout': max(1, int(timeout)),
        # NOTE: a database host that stops acknowledging (a network cut)
        #   drops the connection in seconds, not the kernel's quarter of an hour.
        'tcp_user_timeout': int(timeout * 1000),
        'keepalives_idle': 30,
    }


def _image(row: tuple[Any, ...]) -> StoredImage:
    image_id, modified, width, height, length, token_hash, alt, thumbhash, color = row[:9]
    frames, duration_ms = row[9:11]
    return StoredImage(
        image_id,
        modified,
        (width, height),
        length,
        token_hash,
        alt=alt,
        thumbhash=thumbhash,
        color=color,
        frames=frames,
        duration_ms=duration_ms,
    )


# The columns an image's row is written with, in order, and its values for them.
_WRITTEN = (
    'id, modified, width, height, length, token_hash, alt, thumbhash, color, frames, duration_ms'
)


def _values(image: StoredImage) -> tuple[Any, ...]:
    return (
        image.id,
        image.modified,
        *image.size,
        image.length,
        image.token_hash,
        image.alt,
        image.thumbhash,
        image.color,
        image.frames,
        image.duration_ms,
    )


def _unavailable(ex: Exception, *, reached: bool = True) -> BackendUnavailable:
    log.error('the index database does not answer: %s', ex)
    kind = BackendUnavailable if reached else BackendUnreachable
    return kind(_UNAVAILABLE)


class PostgresIndex:
    """The index in the table ``look_images`` of a PostgreSQL database."""

    # NOTE: the database loses no committed row: an object with no row is a
    #   failed write's leftover, never an image to restore.
    keeps_every_row = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        timeout: float = 3.0,
        cached_rows: int = CACHED_ROWS,
        row_max_age: float = ROW_MAX_AGE,
        on_deleted: Callable[[str], None] | None = None,
    ) -> None:
        """Use the database at ``url``; nothing connects before the first use.

        ``on_deleted(image_id)`` is called, in the listener's thread, for
        each delete heard from any host (this host's copies may go with it).
        """
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self.cached_rows = cached_rows
        self.row_max_age = row_max_age
        self.on_deleted = on_deleted
        self.read_only = False
        self._pool = PerProcess(self._new_pool)
        self._pool_born = 0.0
        self._listener = PerProcess(self._new_listener)
        self._breaker = Breaker(OUTAGE_PAUSE)

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
        """Close this process's pool and stop its listener, if it made them."""
        listener = self._listener.take()
        if listener is not None:
            listener.close()
        pool = self._pool.take()
        if pool is not None:
            pool.close()

    # -- connections ------------------------------------------------------

    def _new_pool(self) -> psycopg_pool.ConnectionPool:
        """Make this process's pool of connections, connecting in the background."""
        pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.timeout,
            kwargs=_connect_options(self.timeout),
            # A connection broken by a database restart while it
            # was idle is found here, not by the request that gets it.
            check=_check_if_idle,
            reconnect_timeout=float('inf'),
            name=f'look-index-{os.getpid()}',
        )
        pool.open(wait=False)
        self._pool_born = time.monotonic()
        return pool

    def _replace_pool(self, pool: psycopg_pool.ConnectionPool) -> None:
        """Drop a pool that found no connection, so the next request connects at once.

        NOTE: a pool retries a lost database with growing pauses (up to
          minutes); a new pool tries at once. At most one pool per timeout.
        """
        if time.monotonic() - self._pool_born < self.timeout or not self._pool.drop(pool):
            return
        threading.Thread(target=pool.close, name='look-index-close', daemon=True).start()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection; a database that does not answer is BackendUnavailable.

        After one found the database gone, the next fail at once for a
        moment (OUTAGE_PAUSE) rather than each wait out the pool's timeout.
        """
        if self._breaker.open:
            raise BackendUnreachable(_UNAVAILABLE)
        pool = self._pool.get()
        lent: psycopg.Connection[Any] | None = None
        try:
            with pool.connection() as connection:
                lent = connection
                yield connection
                setattr(connection, _LAST_USED, time.monotonic())
            if self._breaker.close():
                log.info('the index database answers again')
        except psycopg_pool.PoolTimeout as ex:
            # No connection was lent: nothing was sent, let alone committed.
            self._breaker.trip()
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

    # -- rows kept in this process ----------------------------------------

    def _new_listener(self) -> _Listener:
        """Start this process's listener, with the rows it keeps."""
        listener = _Listener(
            self.url,
            _Rows(self.cached_rows, self.row_max_age),
            self.on_deleted,
            timeout=self.timeout,
        )
        listener.start()
        return listener

    def _rows(self) -> _Rows | None:
        """Return this process's rows, starting its listener on first use (after any fork)."""
        if not self.cached_rows and self.on_deleted is None:
            return None
        return self._listener.get().rows

    def _forget(self, image_id: str) -> None:
        """Drop a row this process may keep (its own delete: no need to wait to hear it)."""
        listener = self._listener.peek()
        if listener is not None:
            listener.rows.drop(image_id)

    @property
    def listening(self) -> bool:
        """Whether this process hears deletes now, so rows it has read are served from memory."""
        listener = self._listener.peek()
        return listener is not None and listener.rows.live()

    # -- reading ----------------------------------------------------------

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound.

        A row read before is served from memory while this process hears
        deletes (see ROW_MAX_AGE); a miss always asks the database.
        """
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        rows = self._rows()
        ticket = None
        if rows is not None:
            image = rows.get(image_id)
            if image is not None:
                return image
            ticket = rows.ticket()
        row = self._one(
            f'SELECT {_COLUMNS} FROM look_images WHERE id = %s AND deleted_at IS NULL',
            (image_id,),
        )
        if row is None:
            raise ImageNotFound(f'No image has the id {image_id}.')
        image = _image(row)
        if rows is not None:
            rows.keep(image, ticket)
        return image

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
        back. A commit that got no answer may have committed: CommitInDoubt.
        """
        # PERF: four round trips (BEGIN, the lock, the INSERT, COMMIT): about
        #   0.24 ms of CPU here and 0.23 ms in the database. The first three
        #   sent as one pipeline cost the database the same and look more.
        committing = False
        try:
            with self._connection() as connection, connection.transaction():
                self._insert(connection, image)
                committing = True
        except _ConnectionLost as ex:
            if committing:
                raise CommitInDoubt(_UNAVAILABLE) from ex
            raise BackendUnreachable(_UNAVAILABLE) from ex
        except BackendUnavailable as ex:
            if committing and not isinstance(ex, CommitInDoubt):
                raise CommitInDoubt(_UNAVAILABLE) from ex
            raise

    def _insert(self, connection: psycopg.Connection[Any], image: StoredImage) -> None:
        # NOTE: numbers are taken under a transaction lock, so no row gets a
        #   lower number than one already committed: a reader paging with
        #   after= never skips a row that commits late.
        connection.execute('SELECT pg_advisory_xact_lock(%s)', (_ORDER_LOCK,))
        updates = ', '.join(f'{column} = EXCLUDED.{column}' for column in _WRITTEN.split(', ')[1:])
        row = connection.execute(
            f'INSERT INTO look_images ({_WRITTEN}) VALUES ({", ".join(["%s"] * 11)}) '
            f'ON CONFLICT (id) DO UPDATE SET deleted_at = NULL, {updates} '
            'WHERE look_images.deleted_at IS NOT NULL RETURNING 1',
            _values(image),
        ).fetchone()
        if row is None:
            raise ImageExists(f'An image with the id {image.id} already exists.')

    def amend(
        self,
        image_id: str,
        *,
        alt: str | None = None,
        thumbhash: str | None = None,
        color: str | None = None,
    ) -> StoredImage:
        """Change an image's alt text or placeholder and return it, or raise ImageNotFound.

        Every process listening on any host drops its row (AMENDS_CHANNEL),
        as the row changes: one statement, one transaction.
        """
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        asked = {'alt': alt, 'thumbhash': thumbhash, 'color': color}
        changes = {column: value for column, value in asked.items() if value is not None}
        if not changes:
            return self.get(image_id)
        assignments = ', '.join(f'{column} = %s' for column in changes)
        try:
            with self._connection() as connection:
                row = connection.execute(
                    f'WITH amended AS (UPDATE look_images SET {assignments} '
                    f'WHERE id = %s AND deleted_at IS NULL RETURNING {_COLUMNS}) '
                    f'SELECT *, pg_notify(%s, id) FROM amended',
                    (*changes.values(), image_id, AMENDS_CHANNEL),
                ).fetchone()
        finally:
            self._forget(image_id)
        if row is None:
            raise ImageNotFound(f'No image has the id {image_id}.')
        return _image(row)

    def delete(self, image_id: str) -> StoredImage:
        """Mark the image's row deleted and return the image, or raise ImageNotFound.

        Every process listening on any host hears of it (DELETES_CHANNEL),
        and its object is listed for removal, as the row is marked: one
        statement, one transaction.
        """
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        try:
            with self._connection() as connection:
                row = connection.execute(
                    f'WITH deleted AS (UPDATE look_images SET deleted_at = %s '
                    f'WHERE id = %s AND deleted_at IS NULL RETURNING {_COLUMNS}), '
                    f'listed AS (INSERT INTO look_removals (id, reason, listed, due) '
                    f'SELECT id::uuid, %s, {_NOW}, {_NOW} FROM deleted '
                    f'ON CONFLICT (id) DO NOTHING) '
                    f'SELECT *, pg_notify(%s, id) FROM deleted',
                    (int(time.time()), image_id, DELETED, DELETES_CHANNEL),
                ).fetchone()
        finally:
            self._forget(image_id)
        if row is None:
            raise ImageNotFound(f'No image has the id {image_id}.')
        return _image(row)

    # -- the list of objects to remove -------------------------------------
    # NOTE: each of these writes may run twice when the connection is found
    #   dropped (``_read``): run again, it does the same.

    def remove_later(self, image_id: str, *, reason: str, after: float) -> None:
        """List the object of ``image_id``, due ``after`` seconds from now (the database's)."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image can have the id {image_id!r}.')
        self._read(
            lambda connection: connection.execute(
                f'INSERT INTO look_removals (id, reason, listed, due) '
                f'VALUES (%s, %s, {_NOW}, {_NOW} + %s) '
                f'ON CONFLICT (id) DO UPDATE SET due = GREATEST(look_removals.due, EXCLUDED.due)',
                (image_id, reason, after),
            )
        )

    def claim_removals(self, *, limit: int, hold: float) -> list[Removal]:
        """Return due entries no row lists, due again in ``hold`` seconds; skip others' claims.

        An entry whose id a row lists (an add that committed after all) is dropped.
        """

        def claim(connection: psycopg.Connection[Any]) -> tuple[list[Any], list[Any]]:
            with connection.transaction():
                live = connection.execute(
                    f'DELETE FROM look_removals WHERE id IN (SELECT r.id FROM look_removals r '
                    f'JOIN look_images i ON i.id = r.id AND i.deleted_at IS NULL '
                    f'WHERE r.due <= {_NOW} FOR UPDATE OF r SKIP LOCKED) RETURNING id::text'
                ).fetchall()
                claimed = connection.execute(
                    f'UPDATE look_removals r SET due = {_NOW} + %s FROM ('
                    f'SELECT id FROM look_removals WHERE due <= {_NOW} AND NOT EXISTS ('
                    f'SELECT 1 FROM look_images i WHERE i.id = look_removals.id '
                    f'AND i.deleted_at IS NULL) ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED'
                    f') claimed WHERE r.id = claimed.id RETURNING r.id::text, r.reason, r.listed',
                    (hold, limit),
                ).fetchall()
            return live, claimed

        live, claimed = self._read(claim)
        for (image_id,) in live:
            log.warning('image %s is listed: its object stays, off the list to remove', image_id)
        return [Removal(image_id, reason, listed) for image_id, reason, listed in claimed]

    def postpone_removals(self, image_ids: list[str], *, after: float) -> None:
        """Make these entries due ``after`` seconds from now."""
        if image_ids:
            self._read(
                lambda connection: connection.execute(
                    f'UPDATE look_removals SET due = {_NOW} + %s WHERE id = ANY(%s::uuid[])',
                    (after, image_ids),
                )
            )

    def removal_done(self, image_id: str) -> None:
        """Drop the entry of ``image_id``."""
        self._read(
            lambda connection: connection.execute(
                'DELETE FROM look_removals WHERE id = %s', (image_id,)
            )
        )

    def awaiting_removal(self) -> set[str]:
        """Return the ids on the list."""
        rows = self._read(
            lambda connection: connection.execute('SELECT id::text FROM look_removals').fetchall()
        )
        return {row[0] for row in rows}

    def removal_backlog(self) -> Backlog:
        """Return how many objects wait to be removed, and the oldest's age."""
        row = self._one(f'SELECT count(*), {_NOW} - min(listed) FROM look_removals', ())
        if row is None or not row[0]:
            return Backlog(0, None)
        return Backlog(int(row[0]), max(0.0, float(row[1])))

    # -- upkeep -----------------------------------------------------------

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
                        f'INSERT INTO look_images ({_WRITTEN}) '
                        f'VALUES ({", ".join(["%s"] * 11)}) ON CONFLICT (id) DO NOTHING',
                        _values(image),
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


# -- rows kept in a process, and the listener that keeps them honest --------------

# What a read took before asking the database: the generation of the rows then,
# and when (monotonic); None while the listener is not heard from.
_Ticket = tuple[int, float] | None


class _Rows:
    """Rows read here, the least recently used out first, served while deletes are heard."""

    def __init__(self, size: int, max_age: float) -> None:
        self.size = size
        self.max_age = max_age
        self._lock = threading.Lock()
        self._rows: collections.OrderedDict[str, tuple[StoredImage, float]] = (
            collections.OrderedDict()
        )
        # NOTE: bumped by every delete heard and whenever the rows are
        #   dropped: a read that began before keeps nothing, since the row it
        #   read may be the one just deleted.
        self._generation = 0
        self._heard_until = 0.0

    def get(self, image_id: str) -> StoredImage | None:
        """Return the kept row of ``image_id``, or None if the database must be asked."""
        now = time.monotonic()
        with self._lock:
            if not self._live(now):
                return None
            entry = self._rows.get(image_id)
            if entry is None:
                return None
            image, expires = entry
            if now >= expires:
                del self._rows[image_id]
                return None
            self._rows.move_to_end(image_id)
            return image

    def ticket(self) -> _Ticket:
        """Return what a read about to ask the database shows ``keep`` afterwards."""
        now = time.monotonic()
        with self._lock:
            return (self._generation, now) if self._live(now) else None

    def keep(self, image: StoredImage, ticket: _Ticket) -> None:
        """Keep a row read with ``ticket`` unless a delete was heard, or the listener lost, since.

        A row is served for ``max_age`` from when its read began.
        """
        if ticket is None or not self.size:
            return
        generation, read_at = ticket
        with self._lock:
            if generation != self._generation or not self._live(time.monotonic()):
                return
            self._rows[image.id] = (image, read_at + self.max_age)
            self._rows.move_to_end(image.id)
            if len(self._rows) > self.size:
                self._rows.popitem(last=False)

    def drop(self, image_id: str) -> None:
        """Forget the row of a deleted image."""
        with self._lock:
            self._generation += 1
            self._rows.pop(image_id, None)

    def heard(self, until: float) -> None:
        """Serve rows until ``until`` (monotonic): every delete before then has been heard."""
        with self._lock:
            self._heard_until = until

    def deaf(self) -> None:
        """Drop every row and serve none until the listener is heard from again."""
        with self._lock:
            self._heard_until = 0.0
            self._drop_all()

    def live(self) -> bool:
        """Whether rows are served now."""
        with self._lock:
            return self._live(time.monotonic())

    def _live(self, now: float) -> bool:
        # Called with the lock held; a listener gone quiet drops the rows.
        if now < self._heard_until:
            return True
        if self._rows:
            self._drop_all()
        return False

    def _drop_all(self) -> None:
        self._generation += 1
        self._rows.clear()


class _Listener:
    """A thread with a connection of its own that hears every delete, for one process's rows."""

    def __init__(
        self,
        url: str,
        rows: _Rows,
        on_deleted: Callable[[str], None] | None,
        *,
        timeout: float,
    ) -> None:
        self.url = url
        self.rows = rows
        self.on_deleted = on_deleted
        self.timeout = timeout
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[Any] | None = None
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=LISTENER_NAME, daemon=True)

    def start(self) -> None:
        """Start listening, in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; it closes its connection."""
        self._stopped.set()
        with self._lock:
            # NOTE: under the lock the thread takes before it closes the
            #   connection, so the socket shut here is still the connection's.
            connection = self._connection
            if connection is not None:
                _shut(connection)
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._connect_and_listen()
            except Exception as ex:
                if self._stopped.is_set():
                    break
                if self._failures == 0:
                    log.warning(
                        'the index listener lost the database (%s): every read asks it '
                        'until it listens again',
                        ex,
                    )
                self._failures += 1
            finally:
                self.rows.deaf()
            first, most = _LISTEN_RETRY
            self._stopped.wait(min(most, first * 2 ** max(0, self._failures - 1)))

    def _connect_and_listen(self) -> None:
        connection = psycopg.connect(
            self.url, **_connect_options(self.timeout), application_name=LISTENER_NAME
        )
        try:
            with self._lock:
                if self._stopped.is_set():
                    return
                self._connection = connection
            self._listen(connection)
        finally:
            with self._lock:
                self._connection = None
            connection.close()

    def _listen(self, connection: psycopg.Connection[Any]) -> None:
        asked = time.monotonic()
        connection.execute(f'LISTEN {DELETES_CHANNEL}')
        connection.execute(f'LISTEN {AMENDS_CHANNEL}')
        self.rows.heard(asked + LISTENER_SILENCE)
        if self._failures:
            log.info('the index listener hears deletes again')
            self._failures = 0
        while not self._stopped.is_set():
            for notify in connection.notifies(timeout=LISTENER_HEARTBEAT):
                self._heard(notify)
            asked = time.monotonic()
            connection.execute('SELECT 1')
            # NOTE: the database sends a notification before the answer to a
            #   query asked after it: once those that came with the answer are
            #   dropped, every delete made before ``asked`` has been heard.
            for notify in connection.notifies(timeout=0):
                self._heard(notify)
            self.rows.heard(asked + LISTENER_SILENCE)

    def _heard(self, notify: psycopg.Notify) -> None:
        if notify.channel == AMENDS_CHANNEL:
            self.rows.drop(notify.payload)  # read again, as it is now
        else:
            self._deleted(notify.payload)

    def _deleted(self, image_id: str) -> None:
        self.rows.drop(image_id)
        if self.on_deleted is not None and is_valid_id(image_id):
            try:
                self.on_deleted(image_id)
            except Exception:
                log.exception("could not forget this host's copies of deleted image %s", image_id)


def _shut(connection: psycopg.Connection[Any]) -> None:
    """Wake a thread waiting on ``connection`` by shutting its socket down (it then closes it)."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(connection.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
