"""A redis-server of the test run's own, on a unix socket (and TCP, for what needs it)."""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from support.processes import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    Server,
    require_executable,
    tail,
    wait_until,
)


class RedisServer(Server):
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
            pytest.fail(f'redis-server did not answer PING:\n{tail(self.log_path)}')

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


@pytest.fixture(name='redis_server')
def redis_server_fixture() -> Iterator[RedisServer]:
    """A fresh redis-server for one test; tests may kill and restart it."""
    with RedisServer() as server:
        yield server
