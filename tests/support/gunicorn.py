"""look under real gunicorn, started as make run starts it, spoken to over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import pytest

from support.http import Response, connect, get, request, send
from support.imagegen import image_bytes
from support.processes import (
    REPO_ROOT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ProcessInfo,
    Server,
    free_port,
    live_processes,
    process_group,
    tail,
    wait_until,
)

# The upload limit of the shared gunicorn fixture: small, so 413s are cheap to provoke.
MAX_UPLOAD_BYTES = 1024 * 1024
# How long a test tries new connections until every worker has answered one.
# The kernel, not the test, hands each connection to a worker, the quickest to
# wake: a worker still busy with earlier requests loses every race for a while.
REACH_EVERY_WORKER = 30.0


NEXT_PAGE = re.compile(r'<([^>]+)>;\s*rel="next"')


def upload(
    server: Gunicorn, data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Upload ``data`` (a seeded 640x360 PNG by default) on a new connection; return the 201's."""
    response = request(
        'POST', f'{server.url}/images', data if data is not None else image_bytes('PNG'), headers
    )
    assert response.status == 201, response.body
    created: dict[str, Any] = response.json()
    return created


def list_ids(server: Gunicorn, connection: http.client.HTTPConnection | None = None) -> list[str]:
    """Return the id of every listed image, oldest first, following the Link pages.

    With ``connection``, every page comes from the worker holding that connection.
    """
    ids: list[str] = []
    path: str | None = '/images?limit=1000'
    while path is not None:
        via = connection if connection is not None else connect(server.url)
        try:
            response = send(via, 'GET', path)
        finally:
            if connection is None:
                via.close()
        assert response.status == 200, response.body
        ids += [image['id'] for image in response.json()]
        link = NEXT_PAGE.search(response.header('Link') or '')
        path = link[1] if link else None
    return ids


class Gunicorn(Server):
    """``gunicorn -c gunicorn.conf.py look.wsgi:app`` from the repository root, in its own session.

    Each instance gets its own XDG_RUNTIME_DIR: gunicorn >= 25 opens a control
    socket there (or in ~/.gunicorn), and instances side by side would take
    each other's. Output goes to ``log_path``; failures quote its tail.
    ``app`` serves another WSGI app with look's settings (the benchmark's bare
    app); it is ready once ``GET /images`` answers 200, as look's listing does.
    """

    def __init__(
        self,
        storage_path: pathlib.Path,
        *,
        redis_url: str = '',
        workers: int = 2,
        environ: Mapping[str, str | None] | None = None,
        bind_from_env: bool = False,
        host: str = '127.0.0.1',
        app: str = 'look.wsgi:app',
    ) -> None:
        self.storage_path = pathlib.Path(storage_path)
        self.redis_url = redis_url
        self.workers = workers
        self.environ = dict(environ or {})
        self.bind_from_env = bind_from_env
        self.host = host  # what gunicorn binds; tests talk to it on 127.0.0.1
        self.app = app
        self.port = free_port()
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix='look-gunicorn-'))
        self.log_path = self.runtime_dir / 'gunicorn.log'
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f'http://127.0.0.1:{self.port}'

    @property
    def pid(self) -> int:
        """The master's pid (also its process group id)."""
        assert self.process is not None, 'gunicorn was not started'
        return self.process.pid

    def command(self) -> tuple[list[str], dict[str, str]]:
        """Return the argv and environment gunicorn is started with."""
        # NOTE: the caller's own LOOK_* or gunicorn settings must not leak in.
        inherited = ('GUNICORN_CMD_ARGS', 'WEB_CONCURRENCY')
        environ = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith('LOOK_') and name not in inherited
        }
        environ.update(
            LOOK_STORAGE_PATH=str(self.storage_path),
            LOOK_REDIS_URL=self.redis_url,
            LOOK_PROCESSES='1',
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            PYTHONUNBUFFERED='1',
        )
        argv = [sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', self.app]
        argv += ['--workers', str(self.workers)]
        bind = f'[{self.host}]:{self.port}' if ':' in self.host else f'{self.host}:{self.port}'
        if self.bind_from_env:
            environ['GUNICORN_CMD_ARGS'] = f'--bind {bind}'
        else:
            argv += ['--bind', bind]
        for name, value in self.environ.items():  # None unsets a variable
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return argv, environ

    def start(self) -> None:
        """Start gunicorn and wait until all its workers run and HTTP answers."""
        for _ in range(3):
            if self._start_once():
                return
            # NOTE: free_port() cannot reserve the port; if something took it
            #   meanwhile, try another rather than fail.
            self.port = free_port()
        pytest.fail(f'gunicorn found no free port:\n{self.log_tail()}')

    def _start_once(self) -> bool:
        """Start gunicorn; return False if its port was taken, fail on any other problem."""
        argv, environ = self.command()
        self._stopped = False
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(argv, environ)
        ready = wait_until(self._ready, START_TIMEOUT, interval=0.1)
        running = self.process.poll() is None
        if ready and running:
            return True
        self._stopped = True
        self._kill_group()
        with open(self.log_path, 'rb') as log:
            log.seek(log_start)
            if b'Connection in use' in log.read():
                return False
        state = 'did not become ready' if running else 'exited'
        pytest.fail(f'gunicorn {state}:\n{self.log_tail()}')

    def _spawn(self, argv: list[str], environ: dict[str, str]) -> None:
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # no use waiting: start() reports the exit
        if len(self.worker_pids()) < self.workers:
            return False
        try:
            # 401: API keys are set, and the listing answers only to them.
            return get(f'{self.url}/images').status in (200, 401)
        except OSError:
            return False

    def run_until_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Start gunicorn expecting it to refuse to run; return its exit status.

        Fail (after killing it) if it is still running after ``timeout`` seconds.
        """
        argv, environ = self.command()
        self._stopped = True
        self._spawn(argv, environ)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            pytest.fail(f'gunicorn still ran after {timeout}s:\n{self.log_tail()}')

    @property
    def running(self) -> bool:
        """Whether the master has been started and not yet exited."""
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> set[int]:
        """Return the pids of the master's children: the workers."""
        if self.process is None:
            return set()
        return {process.pid for process in live_processes() if process.ppid == self.process.pid}

    def processes(self) -> list[ProcessInfo]:
        """Return every live process of this gunicorn: master, workers, pools, trackers."""
        return process_group(self.pid) if self.process is not None else []

    def stop(self) -> None:
        """Stop gracefully with SIGTERM; assert a clean exit that leaves no process behind."""
        process = self.process
        if process is None or self._stopped:
            return
        self._stopped = True
        if process.poll() is not None:
            self._kill_group()
            raise AssertionError(
                f'gunicorn exited by itself with {process.returncode}:\n{self.log_tail()}'
            )
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_group()
            raise AssertionError(
                f'gunicorn did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log_tail()}'
            ) from None
        # NOTE: the master may exit a moment before its grandchildren (pool
        #   processes, multiprocessing's resource tracker) have gone.
        gone = wait_until(lambda: not process_group(process.pid), 10.0)
        leftovers = [] if gone else process_group(process.pid)
        if leftovers:
            self._kill_group()
        assert not leftovers, f'processes outlived gunicorn: {leftovers}\n{self.log_tail()}'
        assert returncode == 0, f'gunicorn exited with {returncode}:\n{self.log_tail()}'

    def restart(self) -> None:
        """Stop (asserting a clean stop) and start again on the same port and storage."""
        self.stop()
        self.start()

    def _kill_group(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)

    def log(self) -> str:
        """Return everything gunicorn has written so far."""
        return self.log_path.read_text(errors='replace')

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines of the log, for assertion messages."""
        return tail(self.log_path, lines)

    def answering_worker(
        self, connection: http.client.HTTPConnection, workers: Iterable[int] | None = None
    ) -> int | None:
        """Return the pid of the worker holding the server end of an open keep-alive connection.

        ``workers``: the pids to look among, when the caller knows them (the benchmark).
        """
        if connection.sock is None:
            return None
        client_port = connection.sock.getsockname()[1]
        local = f'0100007F:{self.port:04X}'
        remote = f'0100007F:{client_port:04X}'
        inode = None
        with open('/proc/net/tcp') as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[1] == local and fields[2] == remote:
                    inode = fields[9]
                    break
        if inode is None or inode == '0':
            return None
        target = f'socket:[{inode}]'
        for pid in self.worker_pids() if workers is None else workers:
            with contextlib.suppress(OSError):
                for fd in pathlib.Path(f'/proc/{pid}/fd').iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == target:
                            return pid
        return None

    def until_every_worker(self, *reached: Collection[int | None]) -> Iterator[int]:
        """Count rounds (0, 1, ...) until each of ``reached`` holds every worker, or time is up.

        The caller adds the worker that answered each round to its sets, and
        asserts afterwards that every worker is in them.
        """
        workers = self.worker_pids()
        deadline = time.monotonic() + REACH_EVERY_WORKER
        number = 0
        while time.monotonic() < deadline and not all(workers <= set(r) for r in reached):
            yield number
            number += 1

    def request_worker(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Response, int | None]:
        """Send a request on a new connection; return the response and the worker that answered."""
        connection = connect(self.url)
        try:
            response = send(connection, method, path, body, headers)
            return response, self.answering_worker(connection)
        finally:
            connection.close()

    def close(self) -> None:
        """Stop (asserting a clean stop) and remove the runtime dir, whatever happens."""
        try:
            self.stop()
        finally:
            self._kill_group()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


@pytest.fixture(scope='module', name='gunicorn')
def gunicorn_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One gunicorn (2 workers, no Redis, MAX_UPLOAD_BYTES) shared by a module's tests."""
    storage = tmp_path_factory.mktemp('storage')
    environ = {'LOOK_MAX_UPLOAD_BYTES': str(MAX_UPLOAD_BYTES)}
    with Gunicorn(storage, workers=2, environ=environ) as server:
        yield server


@pytest.fixture(name='make_gunicorn')
def make_gunicorn_fixture(tmp_path: pathlib.Path) -> Iterator[Callable[..., Gunicorn]]:
    """A factory for extra gunicorn instances, each stopped (and checked) after the test."""
    started: list[Gunicorn] = []

    def make(storage_path: pathlib.Path | None = None, **options: Any) -> Gunicorn:
        storage = storage_path if storage_path is not None else tmp_path / f'storage{len(started)}'
        server = Gunicorn(storage, **options)
        started.append(server)
        server.start()
        return server

    yield make
    errors = []
    for server in started:
        try:
            server.close()
        except AssertionError as ex:
            errors.append(str(ex))
    assert not errors, '\n\n'.join(errors)


MakeGunicorn = Callable[..., Gunicorn]
