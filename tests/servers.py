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
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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
NEXT_PAGE = re.compile(r'<([^>]+)>;\s*rel="next"')


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
    if connection.sock is None:  # the send failed, and took the connection with it
        raise ConnectionResetError(f'{method} {path}: the connection closed while sending')
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


# -- SeaweedFS and PostgreSQL ------------------------------------------------------

S3_ACCESS_KEY = 'look-test'
S3_SECRET_KEY = 'look-test-secret'


class SeaweedServer(_Server):
    """A private SeaweedFS (``weed server -s3``) on free ports, in its own temp dir.

    Master, volume, filer and S3 gateway in one process; one identity with
    the access key ``S3_ACCESS_KEY``. ``stop()`` and ``start()`` again keep
    its data and ports, as a store that was down and is back.
    """

    def __init__(self) -> None:
        self.executable = require_executable('weed')
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix='look-weed-'))
        self.log_path = self.directory / 'weed.log'
        self.ports = [free_port() for _ in range(8)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint (AWS_ENDPOINT_URL_S3)."""
        return f'http://127.0.0.1:{self.ports[6]}'

    @property
    def environ(self) -> dict[str, str]:
        """The AWS_* variables that point look (or any AWS tool) at this server."""
        return {
            'AWS_ENDPOINT_URL_S3': self.endpoint_url,
            'AWS_ACCESS_KEY_ID': S3_ACCESS_KEY,
            'AWS_SECRET_ACCESS_KEY': S3_SECRET_KEY,
            'AWS_DEFAULT_REGION': 'us-east-1',
        }

    @property
    def options(self) -> dict[str, str]:
        """The same settings as Config.s3_options holds them."""
        return {
            'endpoint_url': self.endpoint_url,
            'aws_access_key_id': S3_ACCESS_KEY,
            'aws_secret_access_key': S3_SECRET_KEY,
            'region_name': 'us-east-1',
        }

    def client(self) -> Any:
        """Return a boto3 client of this server, to look behind look's back."""
        import boto3
        import botocore.config

        config = botocore.config.Config(s3={'addressing_style': 'path'})
        return boto3.session.Session().client('s3', config=config, **self.options)

    def start(self) -> None:
        """Start weed and wait until its S3 gateway answers (on other ports if one was taken)."""
        for _ in range(3):
            if self._start_once():
                return
            # NOTE: free_port() cannot reserve a port; another process took one.
            self.ports = [free_port() for _ in range(8)]
        pytest.fail(f'weed found no free ports:\n{_tail(self.log_path)}')

    def _start_once(self) -> bool:
        """Start weed; return False if it exited at once (a port taken), fail if it hangs."""
        identities = {
            'identities': [
                {
                    'name': 'look',
                    'credentials': [{'accessKey': S3_ACCESS_KEY, 'secretKey': S3_SECRET_KEY}],
                    'actions': ['Admin', 'Read', 'Write', 'List', 'Tagging'],
                }
            ]
        }
        config_path = self.directory / 's3.json'
        config_path.write_text(json.dumps(identities))
        data = self.directory / 'data'
        data.mkdir(exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        argv = [
            self.executable,
            'server',
            f'-dir={data}',
            '-ip=127.0.0.1',
            '-ip.bind=127.0.0.1',
            f'-master.port={master}',
            f'-master.port.grpc={master_grpc}',
            '-master.volumeSizeLimitMB=64',
            f'-volume.port={volume}',
            f'-volume.port.grpc={volume_grpc}',
            '-volume.max=0',
            '-filer',
            f'-filer.port={filer}',
            f'-filer.port.grpc={filer_grpc}',
            f'-filer.localSocket={self.directory}/filer.sock',
            '-s3',
            f'-s3.port={s3}',
            f'-s3.port.grpc={s3_grpc}',
            '-s3.port.iceberg=0',
            '-s3.port.lance=0',
            f'-s3.localSocket={self.directory}/s3.sock',
            f'-s3.config={config_path}',
        ]
        with open(self.log_path, 'ab') as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        if wait_until(lambda: self.answers() or process.poll() is not None, START_TIMEOUT, 0.1):
            return process.poll() is None
        self.stop()
        pytest.fail(f'weed did not answer on {self.endpoint_url}:\n{_tail(self.log_path)}')

    def answers(self) -> bool:
        """Return whether the S3 gateway answers a request and its volumes take writes."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            # NOTE: S3 answers 403 to an unsigned request as soon as it runs.
            return get(f'{self.endpoint_url}/').status == 403 and self._writable()
        except OSError:
            return False

    def _writable(self) -> bool:
        try:
            status = json.loads(get(f'http://127.0.0.1:{self.ports[0]}/dir/status').body)
        except (OSError, ValueError):
            return False
        return bool(status.get('Topology', {}).get('DataCenters'))

    @property
    def running(self) -> bool:
        """Whether the process has been started and not yet exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Kill weed, as a crash would (its graceful stop takes over 10 s); its data stays."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def close(self) -> None:
        """Stop weed and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


POSTGRES_URL = os.environ.get('LOOK_TEST_POSTGRES_URL', 'postgresql://postgres@127.0.0.1:5432')


class PostgresDatabase(_Server):
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


class TcpProxy(_Server):
    """Forward a free port on 127.0.0.1 to ``target``; ``cut()`` makes the target unreachable.

    While cut, open connections are reset and new ones refused, as when the
    server behind it is down; while stalled, what is sent either way is held
    and nothing is closed, as on a network that drops every packet. ``mend()``
    lets connections and bytes through again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._flowing = threading.Event()
        self._flowing.set()

    def start(self) -> None:
        """Listen and forward."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close() sends a reset, as a crashed server's host would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                sock.close()

    def stall(self) -> None:
        """Hold what is sent either way, closing nothing."""
        self._flowing.clear()

    def mend(self) -> None:
        """Accept and forward connections and bytes again, on the same port."""
        self._flowing.set()
        if self._listener is None:
            self.start()

    def close(self) -> None:
        """Stop forwarding for good."""
        self.cut()
        self._flowing.set()  # held bytes go nowhere: their sockets are closed


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


@pytest.fixture(scope='session', name='seaweed')
def seaweed_fixture() -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole run; tests keep apart by bucket prefix, never stop it."""
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope='session', name='postgres')
def postgres_fixture() -> Iterator[PostgresDatabase]:
    """One database of this run's own, dropped at the end; tests keep apart by schema."""
    with PostgresDatabase() as database:
        yield database


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
