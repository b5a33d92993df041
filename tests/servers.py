"""Real processes for the integration tests: redis-server, gunicorn, nginx, and HTTP clients.

Test modules use the fixtures by importing them::

    from servers import gunicorn_fixture, redis_server_fixture  # noqa: F401

They are registered under the names ``gunicorn`` and ``redis_server``; the
Python names differ so that test arguments do not shadow the imports (ruff F811).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The upload limit of the shared gunicorn fixture: small, so 413s are cheap to provoke.
MAX_UPLOAD_BYTES = 1024 * 1024


# -- waiting and processes ----------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; return its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One live process, as /proc describes it."""

    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str

    @property
    def is_image_process(self) -> bool:
        """Whether this is a thumbnailer pool process (spawned by multiprocessing)."""
        return 'multiprocessing.spawn' in self.cmdline


def live_processes() -> list[ProcessInfo]:
    """Return every process that is not a zombie (zombies have exited; only reaping is left)."""
    found = []
    for entry in pathlib.Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
            argv = (entry / 'cmdline').read_bytes().split(b'\0')
        except OSError:
            continue  # it exited while we looked
        # NOTE: the command name in parentheses may hold spaces or ')'; the
        #   fields after the last ')' are fixed.
        state, ppid, pgid = stat[stat.rindex(')') + 2 :].split()[:3]
        if state not in ('Z', 'X'):
            pid = int(entry.name)
            cmdline = b' '.join(argv).decode('utf-8', 'replace').strip()
            found.append(ProcessInfo(pid, int(ppid), int(pgid), state, cmdline))
    return found


def process_group(pgid: int) -> list[ProcessInfo]:
    """Return the live processes of process group ``pgid``."""
    return [process for process in live_processes() if process.pgid == pgid]


def _tail(path: pathlib.Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return '(no log)'
    return '\n'.join(text.splitlines()[-lines:])


# -- HTTP ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Response:
    """What came back: status, headers (case-insensitive) and the whole body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        """Return a header's value, or None."""
        return self.headers.get(name)

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


def send(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
) -> Response:
    """Send one request on an open connection and read the whole response."""
    headers = dict(headers or {})
    # NOTE: a server may answer before reading the whole body (a 413) and
    #   stop reading (RFC 9112, section 9.6); look shuts the read side, and
    #   gunicorn drains at most 64 KiB. Like curl, read that early answer.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        connection.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    response = connection.getresponse()
    return Response(response.status, response.headers, response.read())


def connect(url: str, timeout: float = 30.0) -> http.client.HTTPConnection:
    """Return an unopened connection to the host and port of ``url``."""
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or '127.0.0.1', parts.port, timeout=timeout)


def request(
    method: str,
    url: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    timeout: float = 30.0,
) -> Response:
    """Send one request on a new connection, so any worker may answer it.

    ``url`` is sent as written (no normalisation of ``..``); with ``chunked``
    the body (bytes or an iterable of bytes) goes without Content-Length.
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f'?{parts.query}' if parts.query else '')
    connection = connect(url, timeout)
    try:
        return send(connection, method, path, body, headers, chunked=chunked)
    finally:
        connection.close()


def get(url: str, headers: Mapping[str, str] | None = None) -> Response:
    """GET ``url`` on a new connection."""
    return request('GET', url, headers=headers)


def post(url: str, body: bytes, content_type: str = 'application/octet-stream') -> Response:
    """POST ``body`` to ``url`` on a new connection."""
    return request('POST', url, body, {'Content-Type': content_type})


def multipart(
    field: str, filename: str, data: bytes, content_type: str, boundary: str | None = None
) -> tuple[bytes, str]:
    """Return a multipart/form-data body with one file field, and its Content-Type."""
    boundary = boundary or f'look-test-{os.urandom(8).hex()}'
    body = b''.join(
        (
            f'--{boundary}\r\n'.encode(),
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode(),
            f'Content-Type: {content_type}\r\n\r\n'.encode(),
            data,
            f'\r\n--{boundary}--\r\n'.encode(),
        )
    )
    return body, f'multipart/form-data; boundary={boundary}'


# -- slow clients -------------------------------------------------------------------


@dataclasses.dataclass
class SlowClient:
    """One connection that sends its bytes slowly, and what the server did with it."""

    sock: socket.socket
    to_send: bytes
    started: float  # when it connected, or (reset by the caller) sent its first byte
    received: bytes = b''
    closed_at: float | None = None

    @property
    def held(self) -> float:
        """Seconds from ``started`` until the server closed the connection (inf if it did not)."""
        return float('inf') if self.closed_at is None else self.closed_at - self.started


def open_slow_clients(
    port: int, count: int, to_send: bytes, head: bytes = b''
) -> list[SlowClient]:
    """Connect ``count`` clients to 127.0.0.1:``port``, each sending ``head`` at once.

    ``to_send`` is what each will trickle (see ``trickle``).
    """
    clients = []
    for _ in range(count):
        sock = socket.create_connection(('127.0.0.1', port), timeout=5.0)
        clients.append(SlowClient(sock, to_send, time.monotonic()))
        if head:
            sock.sendall(head)
    return clients


def trickle(clients: list[SlowClient], interval: float, until: float) -> None:
    """Send each client's bytes one per ``interval`` s; note answers and closes until ``until``.

    One thread and a selector for all of them, as a cheap attacker would.
    Every socket is closed on return.
    """
    with selectors.DefaultSelector() as selector:
        for client in clients:
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, client)
        next_byte = time.monotonic()
        still_open = len(clients)
        while still_open and time.monotonic() < until:
            timeout = max(0.0, min(next_byte, until) - time.monotonic())
            for key, _ in selector.select(timeout):
                client = key.data
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b''
                if data:
                    client.received += data
                    continue
                client.closed_at = time.monotonic()
                selector.unregister(client.sock)
                still_open -= 1
            if time.monotonic() >= next_byte:
                next_byte += interval
                for client in clients:
                    if client.closed_at is None and client.to_send:
                        try:
                            client.sock.send(client.to_send[:1])
                        except OSError:
                            continue  # closed by the server: the selector reports it
                        client.to_send = client.to_send[1:]
    for client in clients:
        client.sock.close()


# -- programs and redis-server ----------------------------------------------------


def require_executable(name: str) -> str:
    """Return the path of a program (the venv's bin first); skip without it, fail under CI=true."""
    venv_bin = str(pathlib.Path(sys.executable).parent)
    # NOTE: servers such as nginx live in sbin, which a user's PATH may lack.
    search = (venv_bin, os.environ.get('PATH', ''), '/usr/local/sbin', '/usr/sbin')
    path = shutil.which(name, path=os.pathsep.join(search))
    if path is None:
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(f'{name} is not installed, and CI=true needs these tests to run')
        pytest.skip(f'{name} is not installed')
    return path


@contextlib.contextmanager
def tmpfs(mount_point: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """Mount a tmpfs of ``size`` (``2m``) at ``mount_point`` for the block; skip, or fail under CI.

    A disk of its own can be filled or made read-only for real.
    """
    mounted = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(f'cannot mount a tmpfs: {mounted.stderr}')
        pytest.skip(f'cannot mount a tmpfs: {mounted.stderr.strip()}')
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(['umount', str(mount_point)], check=False)
        if unmounted.returncode != 0:
            subprocess.run(['umount', '-l', str(mount_point)], check=False)


class _Server:
    """A process started on entering a with block and closed, whatever happens, on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisServer(_Server):
    """A private redis-server on a unix socket in its own temp dir; no TCP, no persistence."""

    def __init__(self) -> None:
        self.executable = require_executable('redis-server')
        # NOTE: a short /tmp path, because unix socket paths stop at 107 bytes.
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix='look-redis-'))
        self.socket_path = self.directory / 'redis.sock'
        self.log_path = self.directory / 'redis.log'
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The LOOK_REDIS_URL of this server."""
        return f'unix://{self.socket_path}'

    def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
        options = {
            'port': '0',  # no TCP at all, so never the shared Redis on 6379
            'unixsocket': str(self.socket_path),
            'unixsocketperm': '700',
            'save': '',
            'appendonly': 'no',
            'dir': str(self.directory),
        }
        argv = [self.executable]
        for name, value in options.items():
            argv += [f'--{name}', value]
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self.ping, START_TIMEOUT):
            self.kill()
            pytest.fail(f'redis-server did not answer PING:\n{_tail(self.log_path)}')

    def ping(self) -> bool:
        """Return whether the server answers PING now."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b'PING\r\n')
                return sock.recv(64).startswith(b'+PONG')
        except OSError:
            return False

    @property
    def running(self) -> bool:
        """Whether the process has been started and not yet exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server with SIGTERM (SIGKILL if it lingers)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: it accepts connections but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same socket (stopping first if it still runs)."""
        if self.running:
            self.stop()
        self.start()

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            process.send_signal(signal.SIGCONT)  # a paused server could not act on it
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- nginx ----------------------------------------------------------------------


class Nginx(_Server):
    """nginx in the foreground, everything it writes (pid, logs, temp files) in its own temp dir.

    ``http_config`` goes inside ``http {}`` as it is: upstream and server blocks.
    """

    def __init__(self, http_config: str, port: int, *, worker_connections: int = 4096) -> None:
        self.executable = require_executable('nginx')
        self.http_config = http_config
        self.port = port
        self.worker_connections = worker_connections
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix='look-nginx-'))
        # NOTE: started as root, nginx runs its worker as nobody, who must
        #   reach the temp paths that the master creates for it in here.
        self.directory.chmod(0o755)
        self.config_path = self.directory / 'nginx.conf'
        self.error_log = self.directory / 'error.log'
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f'http://127.0.0.1:{self.port}'

    def config(self) -> str:
        """Return the whole nginx.conf: this directory's paths around ``http_config``."""
        directory = self.directory
        temp_paths = ''.join(
            f'    {kind}_temp_path {directory / kind};\n'
            for kind in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi')
        )
        return (
            'daemon off;\n'
            'worker_processes 1;\n'
            f'worker_rlimit_nofile {2 * self.worker_connections + 100};\n'
            f'pid {directory / "nginx.pid"};\n'
            f'error_log {self.error_log} info;\n'
            f'events {{\n    worker_connections {self.worker_connections};\n}}\n'
            'http {\n'
            f'    access_log {directory / "access.log"};\n'
            f'{temp_paths}'
            f'{self.http_config}\n'
            '}\n'
        )

    def start(self) -> None:
        """Start nginx and wait until it accepts connections on its port."""
        self.config_path.write_text(self.config())
        argv = [self.executable, '-p', f'{self.directory}/', '-c', str(self.config_path)]
        argv += ['-e', str(self.error_log)]
        with open(self.directory / 'output.log', 'ab') as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._ready, START_TIMEOUT) or self.process.poll() is not None:
            self.close()
            pytest.fail(f'nginx did not start:\n{self.log_tail()}')

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return True  # no use waiting: start() reports the exit
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 60) -> str:
        """Return the end of nginx's error log and of its output, for assertion messages."""
        return f'{_tail(self.error_log, lines)}\n{_tail(self.directory / "output.log", lines)}'

    def close(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL), assert none of it is left, and remove its dir."""
        process = self.process
        try:
            if process is not None:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(STOP_TIMEOUT)
                gone = wait_until(lambda: not process_group(process.pid), STOP_TIMEOUT)
                if not gone:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                assert gone, f'nginx processes outlived SIGTERM:\n{self.log_tail()}'
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- gunicorn -------------------------------------------------------------------


class Gunicorn(_Server):
    """``gunicorn -c gunicorn.conf.py look.wsgi:app`` from the repository root, in its own session.

    Each instance gets its own XDG_RUNTIME_DIR: gunicorn >= 25 opens a control
    socket there (or in ~/.gunicorn), and instances side by side would take
    each other's. Output goes to ``log_path``; failures quote its tail.
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
    ) -> None:
        self.storage_path = pathlib.Path(storage_path)
        self.redis_url = redis_url
        self.workers = workers
        self.environ = dict(environ or {})
        self.bind_from_env = bind_from_env
        self.host = host  # what gunicorn binds; tests talk to it on 127.0.0.1
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
        argv = [sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', 'look.wsgi:app']
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
        return _tail(self.log_path, lines)

    def answering_worker(self, connection: http.client.HTTPConnection) -> int | None:
        """Return the pid of the worker holding the server end of an open keep-alive connection."""
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
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                for fd in pathlib.Path(f'/proc/{pid}/fd').iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == target:
                            return pid
        return None

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


# -- fixtures -----------------------------------------------------------------

MakeGunicorn = Callable[..., Gunicorn]


@pytest.fixture(name='redis_server')
def redis_server_fixture() -> Iterator[RedisServer]:
    """A fresh redis-server for one test; tests may kill and restart it."""
    with RedisServer() as server:
        yield server


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
