"""Outages of the object store leave nothing behind, with no command run.

Real gunicorn hosts on SeaweedFS and PostgreSQL. A TCP proxy in front of
the store cuts it (down) or holds every byte (a network that stalls); the
storm SIGKILLs a SeaweedFS of its own and starts it again. What is in the
bucket is read behind look's back, and ``look check`` runs as an operator
runs it.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import io
import os
import pathlib
import random
import re
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from look.__main__ import main
from look.core.imagestore.s3 import parse_images_url

from support.gunicorn import Gunicorn, list_ids, upload
from support.http import ClientThreads, Response, get, request
from support.imagegen import image_bytes
from support.postgres import PostgresDatabase
from support.processes import wait_until
from support.proxy import TcpProxy
from support.seaweed import SeaweedServer

pytestmark = pytest.mark.e2e

SMALL = [image_bytes('PNG', size=(320, 240), seed=seed) for seed in range(8)]
# Seconds a failed upload's object waits before its removal: short, for the tests.
SETTLE = 4.0
# What the issue asks: gone within a minute, with no command run.
WITHIN = 60.0
# Seconds the storm waits before it deletes an image it uploaded.
DELETE_AFTER = 3.0


def deployment_environ(
    seaweed: SeaweedServer, postgres: PostgresDatabase, endpoint_url: str
) -> dict[str, str]:
    """The settings of one deployment on a fresh prefix and schema, reaching the store there."""
    name = f'o{os.urandom(5).hex()}'
    return {
        **seaweed.environ,
        'AWS_ENDPOINT_URL_S3': endpoint_url,
        'LOOK_IMAGES_URL': f's3://look-tests/{name}',
        'LOOK_INDEX_URL': postgres.create_schema(name),
        'LOOK_REMOVE_FAILED_UPLOADS_AFTER': str(SETTLE),
    }


def stored(seaweed: SeaweedServer, environ: dict[str, str]) -> set[str]:
    """Return the ids of the objects in the bucket, read from SeaweedFS itself."""
    bucket, prefix = parse_images_url(environ['LOOK_IMAGES_URL'])
    client = seaweed.client()
    try:
        pages = client.get_paginator('list_objects_v2').paginate(
            Bucket=bucket, Prefix=f'{prefix}images/'
        )
        keys = [item['Key'] for page in pages for item in page.get('Contents', ())]
    finally:
        client.close()
    return {key.rsplit('/', 1)[1].removesuffix('.jpeg') for key in keys}


def waiting(host: Gunicorn) -> int:
    """Return how many objects wait to be removed, as /health says."""
    removals = get(f'{host.url}/health').json()['removals']
    assert removals['status'] in ('ok', 'overdue'), removals
    return int(removals['waiting'])


def metric(host: Gunicorn, name: str) -> float:
    text = get(f'{host.url}/metrics').body.decode()
    match = re.search(rf'^{name} (\S+)$', text, re.MULTILINE)
    assert match, f'{name} is not in /metrics'
    return float(match[1])


def check(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, *arguments: str) -> str:
    """Run ``look check`` with the deployment's settings; return what it printed."""
    with monkeypatch.context() as patch:
        for name in [name for name in os.environ if name.startswith('LOOK_')]:
            patch.delenv(name)
        for name, value in environ.items():
            patch.setenv(name, value)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            main(['check', *arguments])
    return output.getvalue()


# -- one host, the store behind a proxy ---------------------------------------------------


@pytest.fixture(scope='module')
def store(seaweed: SeaweedServer) -> Iterator[TcpProxy]:
    """A proxy in front of this run's SeaweedFS, to cut or stall."""
    port = urllib.parse.urlsplit(seaweed.endpoint_url).port or 0
    with TcpProxy('127.0.0.1', port) as proxy:
        yield proxy


@pytest.fixture(scope='module')
def environ(seaweed: SeaweedServer, postgres: PostgresDatabase, store: TcpProxy) -> dict[str, str]:
    return deployment_environ(seaweed, postgres, f'http://127.0.0.1:{store.port}')


@pytest.fixture(scope='module')
def host(environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    with Gunicorn(tmp_path_factory.mktemp('host'), workers=2, environ=environ) as server:
        yield server


def test_a_delete_answered_204_while_the_store_is_down_is_gone_once_it_is_back(
    host: Gunicorn, store: TcpProxy, seaweed: SeaweedServer, environ: dict[str, str]
) -> None:
    image = upload(host, SMALL[0])
    assert image['id'] in stored(seaweed, environ)

    store.cut()
    try:
        deleted = request(
            'DELETE',
            f'{host.url}{image["image"]}',
            headers={'Authorization': f'Bearer {image["delete_token"]}'},
        )
        assert deleted.status == 204
        assert get(f'{host.url}{image["image"]}').status == 404
        assert waiting(host) == 1  # every worker sees the one list
        assert metric(host, 'look_removals_waiting') == 1
        time.sleep(3)  # down long enough for the workers to back off
        assert image['id'] in stored(seaweed, environ)
    finally:
        store.mend()
    back = time.monotonic()

    assert wait_until(lambda: image['id'] not in stored(seaweed, environ), WITHIN, 0.1)
    gone = time.monotonic() - back
    assert wait_until(lambda: waiting(host) == 0, 5)
    assert metric(host, 'look_removals_oldest_age_seconds') == 0
    print(
        f'a delete made while the store was down: its object gone {gone:.1f} s after it was back'
    )
    assert 'removed the object of deleted image' in host.log()


def test_an_upload_held_at_the_store_is_never_listed_and_its_object_goes_after_the_wait(
    host: Gunicorn,
    store: TcpProxy,
    seaweed: SeaweedServer,
    environ: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every byte to the store is held until look gives up; then the write lands."""
    before = stored(seaweed, environ)
    store.stall()
    try:
        started = time.monotonic()
        refused = request('POST', f'{host.url}/images', SMALL[1], timeout=60)
        gave_up = time.monotonic() - started
    finally:
        store.mend()
    answered = time.monotonic()
    assert refused.status == 503, refused.body
    assert int(refused.header('Retry-After') or 0) > 0

    assert wait_until(lambda: stored(seaweed, environ) - before, 10, 0.05)
    (image_id,) = stored(seaweed, environ) - before  # the held write landed after the 503
    landed = time.monotonic() - answered

    assert image_id not in list_ids(host)
    assert get(f'{host.url}/images/{image_id}.jpeg').status == 404
    report = check(environ, monkeypatch, '--grace', '0', '--repair')
    assert f'waiting to be removed by look itself: 1\n  {image_id}' in report, report
    assert '0 images restored' in report or 'index and images agree' in report, report
    assert image_id not in list_ids(host)

    assert wait_until(lambda: image_id not in stored(seaweed, environ), WITHIN, 0.05)
    removed = time.monotonic() - answered
    assert removed >= SETTLE - 0.5  # never before a held write could land
    assert wait_until(lambda: waiting(host) == 0, 5)
    report = check(environ, monkeypatch, '--grace', '0', '--repair')
    assert 'index and images agree' in report, report
    assert image_id not in list_ids(host)
    print(
        f'an upload held at the store: 503 after {gave_up:.1f} s, its object landed '
        f'{landed:.1f} s later and was removed {removed:.1f} s after the 503 '
        f'(LOOK_REMOVE_FAILED_UPLOADS_AFTER={SETTLE:g})'
    )


# -- the storm: two hosts, the store SIGKILLed mid-run ------------------------------------


class Storm(ClientThreads):
    """Clients uploading, deleting and reading on two hosts in turn, counting every answer."""

    def __init__(self, hosts: list[Gunicorn]) -> None:
        self.hosts = hosts
        self.acknowledged: dict[str, str] = {}  # id: delete token
        self.deleted: set[str] = set()
        self.answers: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.first_201_after: float | None = None
        self.down = False  # while the store is down
        self.back_at: float | None = None
        self._to_delete: collections.deque[tuple[float, str]] = collections.deque()
        self._to_read: list[str] = []
        roles = ['upload'] * 4 + ['delete'] * 2 + ['read'] * 2
        super().__init__([(role, number) for number, role in enumerate(roles)])

    def count(self, answer: str) -> int:
        with self._lock:
            return self.answers[answer]

    def _run(self, role: str, number: int) -> None:
        chance = random.Random(number)
        while not self._stop.is_set():
            host = self.hosts[number % 2]
            number += 1
            try:
                getattr(self, f'_{role}')(host, chance)
            except (OSError, http.client.HTTPException) as ex:
                with self._lock:
                    self.unexpected.append(f'{role}: {ex!r}')

    def _note(self, what: str, response: Response, expected: tuple[int, ...]) -> None:
        self.answers[f'{what} {response.status}'] += 1
        if response.status not in expected:
            self.unexpected.append(f'{what} {response.status}: {response.body[:200]!r}')

    def _upload(self, host: Gunicorn, chance: random.Random) -> None:
        response = request('POST', f'{host.url}/images', chance.choice(SMALL), timeout=30)
        with self._lock:
            self._note('upload', response, (201, 503))
            if response.status == 201:
                image = response.json()
                self.acknowledged[image['id']] = image['delete_token']
                if self.back_at is not None and self.first_201_after is None:
                    self.first_201_after = time.monotonic() - self.back_at
                # Half are deleted again, DELETE_AFTER later (so some while the store
                # is down); the others are read.
                if chance.random() < 1 / 2:
                    self._to_delete.append((time.monotonic() + DELETE_AFTER, image['id']))
                else:
                    self._to_read.append(image['id'])
        if response.status == 503:
            self._stop.wait(0.05)

    def _delete(self, host: Gunicorn, chance: random.Random) -> None:
        with self._lock:
            due = self._to_delete and self._to_delete[0][0] <= time.monotonic()
            image_id = self._to_delete.popleft()[1] if due else None
            token = self.acknowledged.get(image_id or '')
        if image_id is None:
            self._stop.wait(0.02)
            return
        response = request(
            'DELETE',
            f'{host.url}/images/{image_id}.jpeg',
            headers={'Authorization': f'Bearer {token}'},
            timeout=30,
        )
        with self._lock:
            self._note('delete', response, (204,))
            if response.status == 204:
                self.deleted.add(image_id)
                self.answers['delete 204 while down'] += self.down

    def _read(self, host: Gunicorn, chance: random.Random) -> None:
        with self._lock:
            image_id = chance.choice(self._to_read) if self._to_read else None
        if image_id is None:
            self._stop.wait(0.02)
            return
        response = request('GET', f'{host.url}/images/{image_id}.jpeg', timeout=30)
        with self._lock:
            self._note('read', response, (200, 503))


@pytest.fixture
def own_seaweed() -> Iterator[SeaweedServer]:
    """A SeaweedFS of this test's own, to SIGKILL."""
    with SeaweedServer() as server:
        yield server


def test_a_storm_over_a_store_sigkilled_mid_run_loses_nothing_and_leaves_nothing(
    own_seaweed: SeaweedServer,
    postgres: PostgresDatabase,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two hosts, 4 uploaders, 2 deleters, 2 readers; the store killed and started again."""
    weed = own_seaweed
    environ = deployment_environ(weed, postgres, weed.endpoint_url)
    hosts = [Gunicorn(tmp_path / f'host{n}', workers=2, environ=environ) for n in range(2)]
    with contextlib.ExitStack() as stack:
        for server in hosts:
            stack.enter_context(server)
        backlog: list[int] = []

        with Storm(hosts) as storm:
            assert wait_until(lambda: storm.count('upload 201') >= 20, 30), hosts[0].log_tail()
            before = storm.count('upload 201')
            weed.stop()  # SIGKILL
            storm.down, killed = True, time.monotonic()
            time.sleep(2)
            backlog.append(waiting(hosts[0]))
            weed.start()
            storm.down, storm.back_at = False, time.monotonic()
            down = storm.back_at - killed
            after = storm.count('upload 201')
            assert wait_until(lambda: storm.count('upload 201') >= after + 20, 30)

        stopped = time.monotonic()
        backlog.append(waiting(hosts[1]))
        assert wait_until(lambda: all(waiting(host) == 0 for host in hosts), WITHIN, 0.2)
        drained = time.monotonic() - stopped

        listed = list_ids(hosts[0])
        assert list_ids(hosts[1]) == listed
        bucket = stored(weed, environ)
        kept = set(storm.acknowledged) - storm.deleted
        lost = kept - set(listed)
        deleted_in_bucket = storm.deleted & bucket
        orphans = bucket - set(listed)
        unreadable = [
            image_id
            for image_id in kept
            if get(f'{hosts[1].url}/images/{image_id}.jpeg').status != 200
        ]
        report = check(environ, monkeypatch, '--grace', '0')
        refused = storm.count('upload 503')
        reads = {answer: n for answer, n in storm.answers.items() if answer.startswith('read')}
        print(
            f'storm: {len(storm.acknowledged)} uploads acknowledged ({before} before the '
            f'SIGKILL), {refused} answered 503; {len(storm.deleted)} deletes answered 204 '
            f'({storm.count("delete 204 while down")} while the store was down); '
            f'reads {reads}; the store down {down:.1f} s, the first 201 '
            f'{storm.first_201_after or 0:.2f} s after it was back; waiting to be removed: '
            f'{backlog[0]} while down, {backlog[1]} as the storm ended, 0 {drained:.1f} s '
            f'later; {len(lost)} acknowledged lost, {len(deleted_in_bucket)} deleted in the '
            f'bucket, {len(orphans)} orphans; {len(listed)} listed, {len(bucket)} objects'
        )

    assert storm.unexpected == []
    assert lost == set()
    assert unreadable == []
    assert deleted_in_bucket == set()
    assert orphans == set()
    assert 'index and images agree' in report, report
    assert 'waiting to be removed by look itself: 0' in report
