"""Several look hosts on one object store, one database and one Redis behave as one.

Each host is a gunicorn master with scratch space of its own, started from
the same LOOK_IMAGES_URL, LOOK_INDEX_URL and LOOK_REDIS_URL, as on separate
machines.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import shutil
import signal
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from look.core.imagestore.s3 import parse_images_url

from support.gunicorn import Gunicorn, upload
from support.http import ClientThreads, get, request
from support.imagegen import image_bytes
from support.postgres import PostgresDatabase
from support.processes import STOP_TIMEOUT, process_group, wait_until
from support.redis import RedisServer
from support.seaweed import SeaweedServer

pytestmark = pytest.mark.e2e

SMALL = [image_bytes('PNG', size=(320, 240), seed=seed) for seed in range(8)]


def shared_environ(seaweed: SeaweedServer, postgres: PostgresDatabase) -> dict[str, str]:
    """The settings every host of one deployment shares, on a fresh prefix and schema."""
    name = f'h{os.urandom(5).hex()}'
    return {
        **seaweed.environ,
        'LOOK_IMAGES_URL': f's3://look-tests/{name}',
        'LOOK_INDEX_URL': postgres.create_schema(name),
    }


@pytest.fixture(scope='module')
def deployment(
    seaweed: SeaweedServer, postgres: PostgresDatabase
) -> Iterator[tuple[dict[str, str], RedisServer]]:
    """The shared settings of this module's hosts, and their Redis."""
    with RedisServer() as redis:
        yield shared_environ(seaweed, postgres), redis


@pytest.fixture(scope='module')
def hosts(
    deployment: tuple[dict[str, str], RedisServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gunicorn]]:
    """Two hosts, started at once on an empty database (each migrates it, under a lock)."""
    environ, redis = deployment
    started = [
        Gunicorn(
            tmp_path_factory.mktemp(f'host{number}'),
            redis_url=redis.url,
            workers=2,
            environ=environ,
        )
        for number in range(2)
    ]
    with contextlib.ExitStack() as stack:
        for server in started:
            stack.callback(server.close)
        threads = [threading.Thread(target=server.start) for server in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for server in started:
            assert server.running, server.log_tail()
        yield started


def page(host: Gunicorn, path: str) -> tuple[list[str], str | None]:
    response = get(f'{host.url}{path}')
    assert response.status == 200, response.body
    return [image['id'] for image in response.json()], response.header('Link')


def keys(seaweed: SeaweedServer, images_url: str) -> set[str]:
    bucket, prefix = parse_images_url(images_url)
    client = seaweed.client()
    try:
        pages = client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix)
        return {item['Key'] for listing in pages for item in listing.get('Contents', ())}
    finally:
        client.close()


def test_an_upload_on_one_host_is_listed_downloaded_and_thumbnailed_on_the_other(
    hosts: list[Gunicorn],
) -> None:
    first, second = hosts
    image = upload(first, SMALL[0])

    assert image['id'] in page(second, '/images?limit=1000')[0]
    original = get(f'{first.url}{image["image"]}')
    elsewhere = get(f'{second.url}{image["image"]}')
    assert (elsewhere.status, elsewhere.body) == (200, original.body)
    assert elsewhere.header('ETag') == original.header('ETag')
    thumbnail = image['thumbnails'][0]
    rendered = get(f'{second.url}{thumbnail}')
    assert (rendered.status, rendered.header('X-Look-Cache')) == (200, 'Miss')
    # One Redis: the other host serves what this one rendered.
    cached = get(f'{first.url}{thumbnail}')
    assert (cached.header('X-Look-Cache'), cached.body) == ('Hit', rendered.body)


def test_a_delete_on_any_host_removes_the_image_its_object_and_its_thumbnails_for_all(
    hosts: list[Gunicorn], deployment: tuple[dict[str, str], RedisServer], seaweed: SeaweedServer
) -> None:
    first, second = hosts
    environ, _ = deployment
    image = upload(second, SMALL[1])
    for thumbnail in image['thumbnails']:
        assert get(f'{first.url}{thumbnail}').status == 200
    assert get(f'{first.url}{image["image"]}').status == 200
    key = f'{parse_images_url(environ["LOOK_IMAGES_URL"])[1]}images/{image["id"]}.jpeg'
    assert key in keys(seaweed, environ['LOOK_IMAGES_URL'])

    deleted = request(
        'DELETE',
        f'{second.url}{image["image"]}',
        headers={'Authorization': f'Bearer {image["delete_token"]}'},
    )

    assert deleted.status == 204
    for host in hosts:
        assert get(f'{host.url}{image["image"]}').status == 404
        for thumbnail in image['thumbnails']:
            assert get(f'{host.url}{thumbnail}').status == 404, 'a cached thumbnail outlived it'
        assert image['id'] not in page(host, '/images?limit=1000')[0]
    assert key not in keys(seaweed, environ['LOOK_IMAGES_URL'])


def test_every_host_lists_the_same_pages_with_the_same_cursors(hosts: list[Gunicorn]) -> None:
    first, second = hosts
    uploaded = [upload(hosts[n % 2], SMALL[n])['id'] for n in range(2, 7)]
    gone = uploaded[1]
    assert request('DELETE', f'{first.url}/images/{gone}.jpeg').status == 204

    for order in ('oldest', 'newest'):
        path: str | None = f'/images?limit=2&order={order}'
        while path is not None:
            ids, link = page(first, path)
            assert page(second, path) == (ids, link)
            path = link.split(';')[0].strip('<>') if link else None
    # A cursor naming the deleted image resumes where it was, on either host.
    for host in hosts:
        ids, _ = page(host, f'/images?limit=1000&after={gone}')
        assert ids[:3] == uploaded[2:5]


def test_image_processes_hold_no_connection(
    hosts: list[Gunicorn], seaweed: SeaweedServer, postgres: PostgresDatabase
) -> None:
    """The pool is handed file paths: its processes never connect to the store or the database."""
    image = upload(hosts[0], SMALL[7])
    assert get(f'{hosts[0].url}{image["thumbnails"][-1]}').status == 200
    image_processes = [p.pid for p in hosts[0].processes() if p.is_image_process]
    assert image_processes

    backends = backend_ports(seaweed, postgres)
    assert {pid: connected_ports(pid) & backends for pid in image_processes} == {
        pid: set() for pid in image_processes
    }


def test_a_preloaded_master_holds_no_connection_its_workers_would_share(
    deployment: tuple[dict[str, str], RedisServer],
    seaweed: SeaweedServer,
    postgres: PostgresDatabase,
    tmp_path: pathlib.Path,
) -> None:
    """With --preload the master makes the app: it checks the backends, then lets go of them."""
    environ, redis = deployment
    with Gunicorn(
        tmp_path / 'preloaded',
        redis_url=redis.url,
        workers=2,
        environ={**environ, 'GUNICORN_CMD_ARGS': '--preload'},
    ) as host:
        image = upload(host, SMALL[0])
        assert get(f'{host.url}{image["image"]}').status == 200
        backends = backend_ports(seaweed, postgres)
        assert connected_ports(host.pid) & backends == set()
        # The worker that answered made connections of its own, after the fork.
        assert any(connected_ports(worker) & backends for worker in host.worker_pids())


def backend_ports(seaweed: SeaweedServer, postgres: PostgresDatabase) -> set[int]:
    """The TCP ports of the object store and the database."""
    return {
        urllib.parse.urlsplit(seaweed.endpoint_url).port or 0,
        urllib.parse.urlsplit(postgres.server_url).port or 5432,
    }


def connected_ports(pid: int) -> set[int]:
    """Return the remote ports of the TCP connections process ``pid`` holds open."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in pathlib.Path(f'/proc/{pid}/fd').iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith('socket:['):
                    inodes.add(target[len('socket:[') : -1])
    ports = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                # fields: local address, remote address (hex ip:port), state, ..., inode
                if fields[9] in inodes and fields[3] == '01':  # ESTABLISHED
                    ports.add(int(fields[2].rsplit(':', 1)[1], 16))
    return ports


# -- a host killed in an upload storm -----------------------------------------------------


class Storm(ClientThreads):
    """Client threads uploading without pause, each to the hosts in turn."""

    def __init__(self, hosts: list[Gunicorn], threads: int) -> None:
        self.hosts = hosts
        self.acknowledged: set[str] = set()
        self.unexpected: list[str] = []
        super().__init__([(number,) for number in range(threads)])

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, number: int) -> None:
        while not self._stop.is_set():
            host = self.hosts[number % len(self.hosts)]
            body = SMALL[number % len(SMALL)]
            number += 1
            try:
                response = request('POST', f'{host.url}/images', body, timeout=30)
            except (OSError, http.client.HTTPException):
                self._stop.wait(0.02)  # the killed host: connection refused or cut
                continue
            with self._lock:
                if response.status == 201:
                    self.acknowledged.add(response.json()['id'])
                elif response.status != 503:
                    self.unexpected.append(f'{response.status}: {response.body[:200]!r}')


def test_sigkill_of_one_host_in_an_upload_storm_loses_nothing_acknowledged(
    hosts: list[Gunicorn],
    deployment: tuple[dict[str, str], RedisServer],
    tmp_path: pathlib.Path,
) -> None:
    """8 clients upload to two hosts in turn; one host's whole process group is SIGKILLed."""
    environ, redis = deployment
    survivor = hosts[1]
    victim = Gunicorn(tmp_path / 'victim', redis_url=redis.url, workers=2, environ=environ)
    victim.start()
    try:
        with Storm([victim, survivor], threads=8) as storm:
            assert wait_until(lambda: storm.count() >= 40, 60), victim.log_tail()
            os.killpg(victim.pid, signal.SIGKILL)
            assert victim.process is not None
            victim.process.wait(STOP_TIMEOUT)
            before = storm.count()
            assert wait_until(lambda: storm.count() >= before + 16, 60), survivor.log_tail()
        assert wait_until(lambda: not process_group(victim.pid), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            if victim.process is not None:
                victim.process.wait(STOP_TIMEOUT)
        shutil.rmtree(victim.runtime_dir, ignore_errors=True)

    assert storm.unexpected == []
    listed: list[str] = []
    path: str | None = '/images?limit=1000'
    while path is not None:
        ids, link = page(survivor, path)
        listed += ids
        path = link.split(';')[0].strip('<>') if link else None
    lost = storm.acknowledged - set(listed)
    print(
        f'storm: {len(storm.acknowledged)} uploads acknowledged by two hosts, one SIGKILLed '
        f'after {before}; {len(listed)} listed by the survivor, {len(lost)} lost'
    )
    assert not lost, f'{len(lost)} of {len(storm.acknowledged)} acknowledged uploads not listed'
    unreadable = [
        image_id
        for image_id in storm.acknowledged
        if get(f'{survivor.url}/images/{image_id}.jpeg').status != 200
    ]
    assert unreadable == []
