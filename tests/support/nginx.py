"""nginx with the documented recipe in front of look, for the tests of it."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from support.processes import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    Server,
    process_group,
    require_executable,
    tail,
    wait_until,
)


class Nginx(Server):
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
        return f'{tail(self.error_log, lines)}\n{tail(self.directory / "output.log", lines)}'

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
