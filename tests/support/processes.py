"""Real processes for the tests: waiting, free ports, process trees, the base of every server."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


START_TIMEOUT = 30.0


STOP_TIMEOUT = 15.0


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


def tail(path: pathlib.Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return '(no log)'
    return '\n'.join(text.splitlines()[-lines:])


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


class Server:
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
