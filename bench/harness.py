"""Processes for the benchmark: our own redis-server and gunicorns, and readings from /proc.

Every process starts in a session of its own, so its process group holds its
children too (gunicorn workers, their pool processes, multiprocessing's
resource tracker), and every start is paired with a stop in a ``finally`` that
ends with SIGKILL to the whole group: nothing outlives the benchmark, even
after Ctrl-C or an exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping

from bench.procfs import OURS, children, cpu_seconds

from support.processes import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
# NOTE: the venv's own scripts, as `make run` starts them; not resolved, so a
#   symlinked venv python still finds its gunicorn beside it.
GUNICORN = pathlib.Path(sys.executable).with_name('gunicorn')
GUNICORN_CONF = REPO / 'gunicorn.conf.py'
_STARTED = time.monotonic()


class BenchError(RuntimeError):
    """A process did not start, or a request did not answer as the benchmark needs."""


def log(message: str) -> None:
    """Print progress to stderr, so stdout keeps only the table."""
    print(f'[bench {time.monotonic() - _STARTED:5.0f}s] {message}', file=sys.stderr, flush=True)


def _stop_group(process: subprocess.Popen[bytes], stop_signal: int, timeout: float) -> None:
    """Ask the leader to stop, then SIGKILL whatever is left of its process group."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
    finally:
        # NOTE: the group outlives its leader while any member lives (a pool
        #   process orphaned by a killed worker); a second Ctrl-C during the
        #   wait above still gets here.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _tail(path: pathlib.Path, lines: int = 20) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


@contextlib.contextmanager
def redis_server(workdir: pathlib.Path) -> Iterator[str]:
    """Run a private redis-server on a unix socket (no TCP port); yield its URL."""
    import redis

    directory = pathlib.Path(tempfile.mkdtemp(prefix='redis-', dir=workdir))
    sock = directory / 'redis.sock'
    log_path = directory / 'redis.log'
    command = [
        'redis-server',
        '--port', '0',
        '--unixsocket', str(sock),
        '--unixsocketperm', '700',
        '--save', '',
        '--appendonly', 'no',
        '--dir', str(directory),
        '--logfile', str(log_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
    OURS.add(process.pid)
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise BenchError(
                    f'redis-server exited with {process.returncode}:\n{_tail(log_path)}'
                )
            with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                if sock.exists() and client.ping():
                    break
            if time.monotonic() > deadline:
                raise BenchError(f'redis-server did not answer in 10s:\n{_tail(log_path)}')
            time.sleep(0.05)
        client.close()
        yield f'unix://{sock}'
    finally:
        _stop_group(process, signal.SIGTERM, 5)


@dataclasses.dataclass
class Server:
    """A running gunicorn: where it listens and which processes are its workers."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def workers(self) -> list[int]:
        """Return the pids of the master's children: the web workers."""
        return children(self.process.pid)

    def worker_cpu(self) -> dict[int, float]:
        """Return each web worker's CPU seconds so far (not its pool's)."""
        return {pid: cpu_seconds(pid) for pid in self.workers()}


@contextlib.contextmanager
def gunicorn(
    name: str,
    app: str,
    workdir: pathlib.Path,
    env: Mapping[str, str],
    *,
    workers: int | None = None,
) -> Iterator[Server]:
    """Run ``gunicorn -c gunicorn.conf.py APP`` on a loopback port until the block ends."""
    port = free_port()
    directory = pathlib.Path(tempfile.mkdtemp(prefix=f'{name}-', dir=workdir))
    # NOTE: gunicorn >= 25 opens its control socket in $XDG_RUNTIME_DIR; a
    #   shared one would make concurrent gunicorns fight over one path.
    runtime = directory / 'xdg-runtime'
    runtime.mkdir(mode=0o700)
    full_env = {**os.environ, **env, 'XDG_RUNTIME_DIR': str(runtime)}
    if workers is not None:
        full_env['WEB_CONCURRENCY'] = str(workers)
    expected_workers = int(full_env.get('WEB_CONCURRENCY') or os.cpu_count() or 1)
    command = [str(GUNICORN), '-c', str(GUNICORN_CONF), '-b', f'127.0.0.1:{port}', app]
    log_path = directory / 'gunicorn.log'
    with open(log_path, 'wb') as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=full_env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    OURS.add(process.pid)
    server = Server(name, port, process, log_path)
    try:
        _wait_ready(server, expected_workers)
        yield server
    finally:
        # SIGTERM is gunicorn's graceful stop: worker_exit hooks close the pools.
        _stop_group(process, signal.SIGTERM, 20)


def _wait_ready(server: Server, workers: int, timeout: float = 60.0) -> None:
    """Wait until every worker is forked and one answers HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise BenchError(
                f'gunicorn {server.name} exited with {server.process.returncode}:\n'
                + _tail(server.log_path)
            )
        if len(server.workers()) >= workers and _answers(server.port):
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f'gunicorn {server.name} not ready in {timeout:g}s:\n' + _tail(server.log_path)
            )
        time.sleep(0.1)


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
    try:
        # Any status will do (a 404 here): the app is loaded and routing.
        connection.request('GET', '/images/00000000-0000-4000-8000-000000000000.jpeg')
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()
