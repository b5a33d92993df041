"""The shared backends on their own: PostgreSQL start-up and rows, the originals cache, outages.

Real SeaweedFS and PostgreSQL; an outage is a TCP proxy in front of them
that refuses and resets connections, as a server that went down would.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from falcon.testing import TestClient
from PIL import Image

from look.__main__ import main
from look.config import Config
from look.core.backends import open_library
from look.core.imagestore import PutInDoubt
from look.core.imagestore.originals import OriginalsCache
from look.core.imagestore.s3 import S3ImageStore
from look.core.index import FAILED_UPLOAD, StoredImage
from look.core.index.postgres import (
    LISTENER_NAME,
    LISTENER_SILENCE,
    MIGRATIONS,
    ROW_MAX_AGE,
    PostgresIndex,
)
from look.core.library import Library
from look.core.spool import Spool
from look.core.upkeep import check
from look.errors import BackendUnavailable, BackendUnreachable, ImageNotFound

from support.client import upload
from support.imagegen import encode, image_bytes, same_placeholder
from support.postgres import PostgresDatabase
from support.processes import wait_until
from support.proxy import TcpProxy
from support.seaweed import SeaweedServer
from support.storage import remove_jpeg, storage_state, stored_ids

pytestmark = [pytest.mark.backends('shared'), pytest.mark.servers]

MakeClient = Callable[..., TestClient]
MakeConfig = Callable[..., Config]
UPLOAD = image_bytes('PNG', size=(640, 360))


def fetches(library: Library) -> list[str]:
    """Record the keys the store's client GETs from now on."""
    keys: list[str] = []
    client = library.images.client  # type: ignore[attr-defined]
    client.meta.events.register(
        'before-call.s3.GetObject', lambda params, **_: keys.append(params['url_path'])
    )
    return keys


# -- PostgreSQL ---------------------------------------------------------------------


def test_hosts_starting_at_once_create_the_schema_once(postgres: PostgresDatabase) -> None:
    url = postgres.create_schema(f's{os.urandom(5).hex()}')
    indexes = [PostgresIndex(url) for _ in range(4)]
    errors: list[BaseException] = []

    def open_index(index: PostgresIndex) -> None:
        try:
            index.open()
        except BaseException as ex:
            errors.append(ex)

    threads = [threading.Thread(target=open_index, args=(index,)) for index in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    schema = urllib.parse.unquote(url).rsplit('=', 1)[1]
    with postgres.connect() as connection:
        versions = connection.execute(f'SELECT version FROM {schema}.look_schema').fetchall()
    assert versions == [(number,) for number in range(1, len(MIGRATIONS) + 1)]
    for index in indexes:
        assert index.count() == 0
        index.close()


def drop_connections(database: PostgresDatabase, application_name: str = '%') -> int:
    """End the sessions on ``database`` (of one application only), as a database restart would."""
    with database.admin() as connection:
        ended = connection.execute(
            'SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity '
            'WHERE datname = %s AND application_name LIKE %s',
            (database.name, application_name),
        ).fetchone()
    return int(ended[0]) if ended else 0


def listeners(database: PostgresDatabase) -> int:
    """Return how many index listeners are connected to ``database``."""
    with database.admin() as connection:
        row = connection.execute(
            'SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s',
            (database.name, LISTENER_NAME),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def database() -> Iterator[PostgresDatabase]:
    """A database of this test's own: its connections may be dropped without touching others'."""
    with PostgresDatabase() as database:
        yield database


MakeIndex = Callable[..., PostgresIndex]


@pytest.fixture
def make_index(database: PostgresDatabase) -> Iterator[MakeIndex]:
    """A factory of opened indexes on this test's database (each one a host), closed after it."""
    made: list[PostgresIndex] = []

    def make(url: str | None = None, **options: Any) -> PostgresIndex:
        index = PostgresIndex(url or database.url, **options)
        index.open()
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()


@pytest.fixture
def index(make_index: MakeIndex) -> PostgresIndex:
    """An index that keeps no rows: every read here reaches the database."""
    return make_index(cached_rows=0)


def stored_image() -> StoredImage:
    return StoredImage(str(uuid.uuid4()), 1_700_000_000, (640, 360), 1234, 'hash')


def test_a_read_on_a_connection_the_database_dropped_runs_again_on_a_new_one(
    index: PostgresIndex, database: PostgresDatabase
) -> None:
    image = StoredImage(str(uuid.uuid4()), 1_700_000_000, (640, 360), 1234, 'hash')
    index.add(image)
    assert index.get(image.id) == image  # its connection goes back just used: lent unchecked

    assert drop_connections(database) >= 1

    assert index.get(image.id) == image
    drop_connections(database)
    assert index.page(limit=10) == [image]


def test_an_add_on_a_dropped_connection_says_nothing_was_written(
    index: PostgresIndex, database: PostgresDatabase
) -> None:
    """So an upload takes its JPEG back, as when the database cannot be reached at all."""
    first = StoredImage(str(uuid.uuid4()), 1_700_000_000, (640, 360))
    index.add(first)
    assert drop_connections(database) >= 1
    second = StoredImage(str(uuid.uuid4()), 1_700_000_001, (640, 360))

    with pytest.raises(BackendUnreachable):
        index.add(second)

    assert index.known([first.id, second.id]) == {first.id}


def test_a_write_on_a_dropped_connection_is_refused_not_sent_again(
    index: PostgresIndex, database: PostgresDatabase
) -> None:
    image = StoredImage(str(uuid.uuid4()), 1_700_000_000, (640, 360))
    index.add(image)
    assert drop_connections(database) >= 1

    with pytest.raises(BackendUnavailable):
        index.delete(image.id)

    assert index.get(image.id) == image
    assert index.delete(image.id) == image


# -- rows kept by the index ----------------------------------------------------------

# NOTE: a delete, or the end of the listener's connection, is heard in
#   milliseconds; a host that missed it would serve rows for a second or
#   more (until LISTENER_SILENCE or ROW_MAX_AGE). This tells the two apart.
HEARD_WITHIN = 0.5
assert HEARD_WITHIN < LISTENER_SILENCE / 2 < ROW_MAX_AGE


@pytest.fixture
def row_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the id of each row any index in this process reads from now on."""
    reads: list[str] = []
    execute = psycopg.Connection.execute

    def spy(connection: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        text = str(query)
        if text.startswith('SELECT') and 'FROM look_images' in text and params:
            reads.append(params[0])
        return execute(connection, query, params, **kw)

    monkeypatch.setattr(psycopg.Connection, 'execute', spy)
    return reads


def heard(index: PostgresIndex) -> bool:
    """Wait until ``index`` hears deletes (its listener starts with its first read)."""
    return bool(wait_until(lambda: index.listening, 5))


def test_a_row_read_once_is_served_without_a_query_and_a_miss_is_never_kept(
    make_index: MakeIndex, row_reads: list[str]
) -> None:
    host, elsewhere = make_index(), make_index()
    image = stored_image()
    elsewhere.add(image)
    assert host.get(image.id) == image
    assert heard(host)
    assert host.get(image.id) == image
    assert row_reads == [image.id, image.id]

    for _ in range(3):
        assert host.get(image.id) == image
    assert row_reads == [image.id, image.id]

    # An image added on another host is found at once, after a miss too.
    later = stored_image()
    with pytest.raises(ImageNotFound):
        host.get(later.id)
    elsewhere.add(later)
    assert host.get(later.id) == later
    assert row_reads[2:] == [later.id, later.id]


def test_the_listener_starts_with_the_first_read_and_stops_with_close(
    make_index: MakeIndex, database: PostgresDatabase
) -> None:
    index = make_index()
    image = stored_image()
    index.add(image)

    def threads() -> list[str]:
        return [thread.name for thread in threading.enumerate() if thread.name == LISTENER_NAME]

    assert (threads(), listeners(database)) == ([], 0)
    index.get(image.id)
    assert heard(index)
    assert (threads(), listeners(database)) == ([LISTENER_NAME], 1)

    index.close()

    assert threads() == []
    assert wait_until(lambda: listeners(database) == 0, 5)


def test_a_row_read_as_its_image_is_deleted_is_not_kept(
    make_index: MakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    deletes_heard: list[str] = []
    host = make_index(on_deleted=deletes_heard.append)
    elsewhere = make_index(cached_rows=0)
    image, other = stored_image(), stored_image()
    for stored in (image, other):
        elsewhere.add(stored)
    host.get(other.id)
    assert heard(host)
    execute = psycopg.Connection.execute
    reading: list[str] = []

    def deleted_during_the_read(
        connection: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any
    ) -> Any:
        cursor = execute(connection, query, params, **kw)
        if params == (image.id,) and not reading:
            reading.append(image.id)  # the row is read, not yet kept
            elsewhere.delete(image.id)
            assert wait_until(lambda: image.id in deletes_heard, 5)
        return cursor

    monkeypatch.setattr(psycopg.Connection, 'execute', deleted_during_the_read)

    assert host.get(image.id) == image  # read before the delete: served
    with pytest.raises(ImageNotFound):
        host.get(image.id)
    assert reading == [image.id]


def test_the_rows_kept_are_bounded_the_least_recently_used_out_first(
    make_index: MakeIndex, row_reads: list[str]
) -> None:
    host = make_index(cached_rows=2)
    first, second, third = images = [stored_image() for _ in range(3)]
    for image in images:
        host.add(image)
    host.get(third.id)
    assert heard(host)

    for image in (first, second, first, third):
        host.get(image.id)
    row_reads.clear()
    for image in (first, third, second):
        host.get(image.id)

    assert row_reads == [second.id]


def test_a_delete_on_one_host_is_404_on_another_at_once_and_takes_its_copy_of_the_original(
    make_config: MakeConfig, make_client: MakeClient, row_reads: list[str]
) -> None:
    config = make_config()
    uploader = make_client(config)
    image = upload(uploader)
    elsewhere = another_host(make_config, config, redis_url='')  # no thumbnail from Redis
    host = make_client(elsewhere)
    copy = pathlib.Path(elsewhere.storage_path) / 'originals' / f'{image["id"]}.jpeg'
    thumbnail = image['thumbnails'][0]

    def answers() -> set[int]:
        return {
            host.simulate_get(image['image']).status_code,
            host.simulate_head(image['image']).status_code,
            host.simulate_get(thumbnail).status_code,
        }

    def served_from_memory() -> bool:
        row_reads.clear()
        return answers() == {200} and row_reads == []

    assert wait_until(served_from_memory, 5)  # once the host hears deletes
    assert copy.exists()  # a download read to its end is kept

    assert uploader.simulate_delete(image['image']).status_code == 204
    deleted = time.monotonic()

    assert wait_until(lambda: answers() == {404} and not copy.exists(), HEARD_WITHIN, 0.005)
    assert time.monotonic() - deleted < HEARD_WITHIN


def test_rows_are_not_served_while_the_listener_is_away_so_a_delete_meanwhile_is_seen(
    make_index: MakeIndex, database: PostgresDatabase, row_reads: list[str]
) -> None:
    host, elsewhere = make_index(), make_index(cached_rows=0)
    deleted, kept = stored_image(), stored_image()
    for image in (deleted, kept):
        elsewhere.add(image)
    host.get(kept.id)
    assert heard(host)
    for image in (deleted, kept):
        host.get(image.id)
    row_reads.clear()
    host.get(deleted.id)
    assert row_reads == []

    with database.refusing_connections():  # so the listener cannot come back meanwhile
        assert drop_connections(database, LISTENER_NAME) == 1
        assert wait_until(lambda: not host.listening, HEARD_WITHIN, 0.005)

        # Every read asks the database, so a delete the host cannot hear is seen at once.
        assert [host.get(kept.id), host.get(kept.id)] == [kept, kept]
        assert row_reads == [kept.id, kept.id]
        elsewhere.delete(deleted.id)
        with pytest.raises(ImageNotFound):
            host.get(deleted.id)
        assert not host.listening

    assert heard(host)
    with pytest.raises(ImageNotFound):
        host.get(deleted.id)
    host.get(kept.id)
    row_reads.clear()
    assert host.get(kept.id) == kept
    assert row_reads == []


def test_a_listener_whose_connection_goes_quiet_stops_serving_rows(
    make_index: MakeIndex, database: PostgresDatabase, row_reads: list[str]
) -> None:
    """A network that drops every packet: nothing is closed, nothing arrives."""
    server = urllib.parse.urlsplit(database.server_url)
    with TcpProxy(server.hostname or '127.0.0.1', server.port or 5432) as proxy:
        host = make_index(database.url.replace(server.netloc, f'127.0.0.1:{proxy.port}'))
        image = stored_image()
        host.add(image)
        host.get(image.id)
        assert heard(host)

        proxy.stall()
        stalled = time.monotonic()
        assert wait_until(lambda: not host.listening, LISTENER_SILENCE + 1)
        assert time.monotonic() - stalled <= LISTENER_SILENCE + 0.1

        proxy.mend()
        assert heard(host)
        row_reads.clear()
        assert [host.get(image.id), host.get(image.id)] == [image, image]
        assert row_reads == [image.id]  # the rows went with the silence


def test_no_row_is_served_longer_than_its_maximum_age(
    make_index: MakeIndex, database: PostgresDatabase, row_reads: list[str]
) -> None:
    """However the image was deleted: here by hand in SQL, which notifies no one."""
    max_age = 1.0
    host = make_index(row_max_age=max_age)
    image = stored_image()
    host.add(image)
    host.get(image.id)
    assert heard(host)
    read = time.monotonic()
    host.get(image.id)
    with database.connect() as connection:
        connection.execute('UPDATE look_images SET deleted_at = 0 WHERE id = %s', (image.id,))
    row_reads.clear()
    assert host.get(image.id) == image  # kept, unheard of
    assert row_reads == []

    def gone() -> bool:
        try:
            host.get(image.id)
        except ImageNotFound:
            return True
        return False

    assert wait_until(gone, max_age + 1, 0.01)
    assert time.monotonic() - read <= max_age + 0.1


# -- the originals cache ------------------------------------------------------------


def another_host(make_config: MakeConfig, config: Config, **overrides: Any) -> Config:
    """Return a Config on the same bucket prefix and schema, with scratch space of its own."""
    return make_config(
        images_url=config.images_url,
        index_url=config.index_url,
        storage_path=pathlib.Path(config.storage_path).parent / f'host-{os.urandom(3).hex()}',
        **overrides,
    )


def test_an_original_is_fetched_once_for_every_render_of_it_on_a_host(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    config = make_config()
    image = upload(make_client(config))
    library = open_library(another_host(make_config, config))
    fetched = fetches(library)
    stored = library.get(image['id'])

    for _ in range(3):
        with library.local_path(stored) as path:
            assert pathlib.Path(path).read_bytes()[:2] == b'\xff\xd8'

    assert len(fetched) == 1
    # The host that took the upload kept it: its renders fetch nothing.
    uploader = open_library(config)
    with uploader.local_path(stored):
        pass
    assert fetches(uploader) == []


def test_without_a_cache_each_render_fetches_its_original_once(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    config = make_config()
    image = upload(make_client(config))
    library = open_library(another_host(make_config, config, originals_cache_bytes=0))
    fetched = fetches(library)

    for _ in range(2):
        with library.local_path(library.get(image['id'])) as path:
            assert os.path.getsize(path) == library.get(image['id']).length
        assert not os.path.exists(path)

    assert len(fetched) == 2
    assert os.listdir(pathlib.Path(library.images.originals.directory)) == []  # type: ignore[attr-defined]


def test_a_download_read_to_its_end_is_kept_for_the_next_render_and_download(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    config = make_config()
    image = upload(make_client(config))
    library = open_library(another_host(make_config, config))
    fetched = fetches(library)
    stored = library.get(image['id'])

    original = library.open_original(stored)
    data = b''.join(iter(lambda: original.stream.read(8192), b''))
    original.stream.close()
    with library.local_path(stored) as path:
        assert pathlib.Path(path).read_bytes() == data
    again = library.open_original(stored)
    again.stream.close()

    assert len(data) == stored.length
    assert len(fetched) == 1


def test_a_download_cut_short_keeps_nothing(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    """The client went away: what was fetched is thrown away, not kept half."""
    config = make_config()
    noise = Image.merge('RGB', [Image.effect_noise((1024, 768), 64) for _ in range(3)])
    response = make_client(config).simulate_post('/images', body=encode(noise, 'PNG'))
    assert response.status_code == 201
    image = response.json
    host = another_host(make_config, config)
    library = open_library(host)

    stored = library.get(image['id'])
    assert stored.length > 2 * 256 * 1024  # more than one piece of a download
    original = library.open_original(stored)
    assert original.stream.read(1000)
    original.stream.close()

    assert os.listdir(pathlib.Path(host.storage_path) / 'originals') == []


def test_the_cache_keeps_to_its_size_least_recently_used_out_never_one_being_read(
    tmp_path: pathlib.Path,
) -> None:
    cache = OriginalsCache(tmp_path, max_bytes=2500)
    cache.open()
    ids = [f'00000000-0000-4000-8000-00000000000{n}' for n in range(4)]

    def write(out: Any) -> None:
        out.write(b'x' * 1000)

    with cache.fill(ids[0], write), cache.fill(ids[1], write):
        pass
    with cache.lease(ids[0]) as path:
        assert path is not None  # ids[0] is now used more recently than ids[1]
    with cache.lease(ids[0]) as reading:
        for image_id in ids[2:]:
            with cache.fill(image_id, write):
                pass
        assert reading is not None and os.path.exists(reading)

    kept = sorted(name for name in os.listdir(tmp_path) if name.endswith('.jpeg'))
    assert kept == [f'{ids[0]}.jpeg', f'{ids[3]}.jpeg']
    assert cache.size() <= 2500


def test_new_originals_read_the_whole_cache_only_once_in_a_while(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = OriginalsCache(tmp_path / 'cache', max_bytes=1_000_000)
    cache.open()
    source = tmp_path / 'upload.jpeg'
    source.write_bytes(b'x' * 1000)
    scans = []
    entries = cache._entries
    monkeypatch.setattr(cache, '_entries', lambda: scans.append(1) or entries())

    for n in range(200):
        cache.add(f'00000000-0000-4000-8000-{n:012d}', source)

    # One look at the start, then one per sixteenth of the size added.
    assert len(scans) <= 1 + 200_000 * 16 // 1_000_000
    assert cache.size() == 200_000


def test_a_trim_leaves_a_file_being_read_and_catches_up_once_it_is_not(
    tmp_path: pathlib.Path,
) -> None:
    cache = OriginalsCache(tmp_path, max_bytes=1500)
    cache.open()
    first, second, third = (f'00000000-0000-4000-8000-00000000000{n}' for n in (1, 2, 3))
    with cache.fill(first, lambda out: out.write(b'x' * 1000)) as path:
        held = os.open(path, os.O_RDONLY)
        fcntl.flock(held, fcntl.LOCK_SH)  # a render in another process reads it
    try:
        with cache.fill(second, lambda out: out.write(b'y' * 1000)):
            pass
        assert os.path.exists(cache.path(first))
    finally:
        os.close(held)

    with cache.fill(third, lambda out: out.write(b'z' * 1000)):
        pass

    assert [os.path.exists(cache.path(i)) for i in (first, second, third)] == [False, False, True]


# -- check ------------------------------------------------------------------------------


def test_check_finds_and_repairs_what_the_backends_disagree_on(
    make_config: MakeConfig,
    make_client: MakeClient,
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On PostgreSQL an object no row lists is a failed write's: removed, never restored."""
    config = make_config()
    client = make_client(config)
    kept, missing, deleted = (upload(client, image_bytes('PNG', seed=seed)) for seed in range(3))
    library = open_library(config)
    remove_jpeg(config, missing['id'])  # an object removed behind look's back
    # Uploads that failed after their put, or whose host died before their row:
    failed, waiting = put_object(library, config), put_object(library, config)
    library.index.remove_later(waiting, reason=FAILED_UPLOAD, after=3600)
    with library.index._connection() as connection:  # type: ignore[attr-defined]
        # A delete by hand in SQL (or by a look older than the list), which lists nothing.
        connection.execute('UPDATE look_images SET deleted_at = 1 WHERE id = %s', (deleted['id'],))
    for variable in [name for name in os.environ if name.startswith('LOOK_')]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv('LOOK_STORAGE_PATH', str(config.storage_path))
    monkeypatch.setenv('LOOK_INDEX_URL', config.index_url)
    monkeypatch.setenv('LOOK_IMAGES_URL', config.images_url)
    monkeypatch.setenv('LOOK_REMOVE_FAILED_UPLOADS_AFTER', '0.001')
    for variable, value in seaweed.environ.items():
        monkeypatch.setenv(variable, value)

    assert main(['check', '--grace', '0']) == 1

    report = capsys.readouterr().out
    assert 'index: 2 images; image store: 4 JPEGs' in report
    for line in (
        f'listed, but their JPEG is gone: 1\n  {missing["id"]}',
        f'JPEGs no row lists, left by failed writes: 1\n  {failed}',
        f'left behind by deletes: 1\n  {deleted["id"]}',
        f'waiting to be removed by look itself: 1\n  {waiting}',
    ):
        assert line in report
    assert 'JPEGs the index does not list' not in report  # not on PostgreSQL
    assert 'in quarantine: 0' in report

    assert main(['check', '--grace', '0', '--repair']) == 0
    assert (
        '1 entries dropped, 0 images restored, 1 leftovers removed, '
        '1 left by failed writes removed'
    ) in capsys.readouterr().out

    assert main(['check', '--grace', '0']) == 0
    assert 'index and images agree' in capsys.readouterr().out
    listed = {image['id'] for image in client.simulate_get('/images').json}
    assert listed == {kept['id']}
    assert stored_ids(config) == {kept['id'], waiting}  # for look to remove, in an hour


def test_placeholders_are_kept_and_listed_on_postgresql_and_check_makes_missing_ones(
    make_config: MakeConfig,
    make_client: MakeClient,
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An image from before placeholders (its row has none) gets its own from check --repair."""
    config = make_config()
    client = make_client(config)
    new, old = (upload(client, image_bytes('PNG', seed=seed)) for seed in range(2))
    placeholders = {image['id']: image['placeholder'] for image in (new, old)}
    listing = client.simulate_get('/images').json
    assert {image['id']: image['placeholder'] for image in listing} == placeholders
    library = open_library(config)
    with library.index._connection() as connection:  # type: ignore[attr-defined]
        connection.execute(
            "UPDATE look_images SET thumbhash = '', color = '' WHERE id = %s", (old['id'],)
        )
    for variable in [name for name in os.environ if name.startswith('LOOK_')]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv('LOOK_STORAGE_PATH', str(config.storage_path))
    monkeypatch.setenv('LOOK_INDEX_URL', config.index_url)
    monkeypatch.setenv('LOOK_IMAGES_URL', config.images_url)
    for variable, value in seaweed.environ.items():
        monkeypatch.setenv(variable, value)
    listing = client.simulate_get('/images').json
    assert [('placeholder' in image) for image in listing] == [True, False]

    assert main(['check']) == 1
    assert 'without a placeholder: 1' in capsys.readouterr().out
    assert main(['check', '--repair']) == 0
    assert '1 placeholders made' in capsys.readouterr().out
    assert main(['check']) == 0

    listing = client.simulate_get('/images').json
    made = {image['id']: image['placeholder'] for image in listing}
    assert made[new['id']] == placeholders[new['id']]
    # from the stored JPEG rather than the uploaded PNG: the same picture
    assert same_placeholder(made[old['id']], placeholders[old['id']])


def put_object(library: Library, config: Config) -> str:
    """Put an object with no row, as an upload that failed after its put leaves one."""
    image_id = str(uuid.uuid4())
    spool = Spool(pathlib.Path(config.storage_path) / 'spool')
    spool.open()
    jpeg = spool.create()
    try:
        jpeg.file.write(image_bytes('JPEG', size=(32, 24)))
        jpeg.file.flush()
        library.images.put(image_id, jpeg)
    finally:
        jpeg.close()
    return image_id


def test_check_leaves_a_young_unlisted_object_alone(
    make_config: MakeConfig, make_client: MakeClient
) -> None:
    """An object whose row is a moment behind it is an upload in progress, not a leftover."""
    config = make_config()
    image = upload(make_client(config))
    library = open_library(config)
    with library.index._connection() as connection:  # type: ignore[attr-defined]
        connection.execute('DELETE FROM look_images WHERE id = %s', (image['id'],))

    findings = check.inspect(library.index, library.images)

    assert findings.sound
    assert findings.objects == 1


# -- outages --------------------------------------------------------------------------


@pytest.fixture
def outages(
    make_config: MakeConfig, seaweed: SeaweedServer, postgres: PostgresDatabase
) -> Iterator[tuple[Config, TcpProxy, TcpProxy]]:
    """A Config that reaches the object store and the database through proxies that can be cut."""
    config = make_config()
    s3_port = urllib.parse.urlsplit(seaweed.endpoint_url).port
    pg = urllib.parse.urlsplit(postgres.server_url)
    with (
        TcpProxy('127.0.0.1', s3_port or 0) as store,
        TcpProxy(pg.hostname or '127.0.0.1', pg.port or 5432) as database,
    ):
        config.s3_options = {**config.s3_options, 'endpoint_url': f'http://127.0.0.1:{store.port}'}
        config.index_url = config.index_url.replace(
            f'{pg.hostname}:{pg.port}', f'127.0.0.1:{database.port}'
        )
        yield config, store, database


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers['Retry-After']) > 0
    assert set(response.json) == {'title', 'description'}


def test_object_store_down_is_503_and_look_recovers_by_itself(
    outages: tuple[Config, TcpProxy, TcpProxy], make_client: MakeClient
) -> None:
    config, store, _ = outages
    client = make_client(config)
    image = upload(client)
    cached = image['thumbnails'][0]
    assert client.simulate_get(cached).headers['X-Look-Cache'] == 'Miss'
    uncached = image['thumbnails'][1]
    remove_jpeg_copy(config, image['id'])  # this host keeps no copy of it now
    before = storage_state(config)

    store.cut()
    try:
        assert_unavailable(client.simulate_post('/images', body=UPLOAD))
        assert_unavailable(client.simulate_get(image['image']))
        assert_unavailable(client.simulate_get(uncached))
        hit = client.simulate_get(cached)
        assert (hit.status_code, hit.headers['X-Look-Cache']) == (200, 'Hit')
        health = client.simulate_get('/health')
        assert health.status_code == 503
        assert health.json['storage']['status'] == 'fail'
        assert health.json['index']['status'] == 'ok'
    finally:
        store.mend()

    assert storage_state(config) == before  # nothing half-stored
    # Requests answer 503 at once for a moment after a failure, then try the store again.
    assert wait_until(lambda: client.simulate_get(image['image']).status_code == 200, 10)
    # A render that failed in the outage is answered with its 503 for a moment more.
    assert wait_until(lambda: client.simulate_get(uncached).status_code == 200, 5)
    upload(client, image_bytes('PNG', seed=1))
    assert client.simulate_get('/health').json['status'] == 'ok'


def test_a_put_the_store_does_not_answer_is_in_doubt_and_its_late_object_is_left_alone(
    seaweed: SeaweedServer, tmp_path: pathlib.Path
) -> None:
    """The store is not asked to remove it at once, before a write held on its way lands."""
    s3_port = urllib.parse.urlsplit(seaweed.endpoint_url).port or 0
    with TcpProxy('127.0.0.1', s3_port) as proxy:
        images = S3ImageStore(
            f's3://look-tests/t{os.urandom(6).hex()}',
            options={**seaweed.options, 'endpoint_url': f'http://127.0.0.1:{proxy.port}'},
            originals=OriginalsCache(tmp_path / 'originals', 0),
            timeout=0.5,
        )
        images.open()
        spool = Spool(tmp_path / 'spool')
        spool.open()
        jpeg = spool.create()
        jpeg.file.write(image_bytes('JPEG', size=(32, 24)))
        jpeg.file.flush()
        image_id = str(uuid.uuid4())
        images.exists(image_id)  # a connection made, then held with the rest
        proxy.stall()
        started = time.monotonic()
        try:
            with pytest.raises(PutInDoubt):
                images.put(image_id, jpeg)
            gave_up = time.monotonic() - started
        finally:
            proxy.mend()
            jpeg.close()

        assert gave_up <= images.put_gives_up_within
        client = seaweed.client()  # behind look's back: its breaker is open for a moment

        def stored() -> bool:
            listing = client.list_objects_v2(Bucket=images.bucket, Prefix=images.key(image_id))
            return bool(listing.get('KeyCount'))

        try:
            assert wait_until(stored, 10)  # the held write landed
            time.sleep(1)
            assert stored()  # and nothing removed it behind the library's back
        finally:
            client.close()
            images.close()


def remove_jpeg_copy(config: Config, image_id: str) -> None:
    (pathlib.Path(config.storage_path) / 'originals' / f'{image_id}.jpeg').unlink()


def test_database_down_is_503_and_look_recovers_without_a_restart(
    outages: tuple[Config, TcpProxy, TcpProxy], make_client: MakeClient
) -> None:
    config, _, database = outages
    client = make_client(config)
    image = upload(client)
    cached = image['thumbnails'][0]
    client.simulate_get(cached)
    before = stored_ids(config)

    database.cut()
    try:
        assert_unavailable(client.simulate_get('/images'))
        # Once the database was found gone, requests do not wait for it again.
        started = time.monotonic()
        assert_unavailable(client.simulate_post('/images', body=UPLOAD))
        assert time.monotonic() - started < 0.5
        assert client.simulate_get(cached).headers['X-Look-Cache'] == 'Hit'
        health = client.simulate_get('/health')
        assert health.status_code == 503
        assert health.json['index']['status'] == 'fail'
        assert health.json['storage']['status'] == 'ok'
    finally:
        database.mend()

    # Requests answer 503 at once for a moment after a failure, then try the database again.
    assert wait_until(lambda: client.simulate_get('/images').status_code == 200, 10)
    listed = client.simulate_get('/images')
    assert [listed_image['id'] for listed_image in listed.json] == [image['id']]
    # The upload refused while the index was down left no object behind.
    assert stored_ids(config) == before
    upload(client, image_bytes('PNG', seed=2))
