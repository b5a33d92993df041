"""The ``look`` command: serve, check and migrate, from any directory."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from look.__main__ import main

from support.http import get
from support.processes import STOP_TIMEOUT, free_port, wait_until

LOOK = pathlib.Path(sys.executable).parent / 'look'


def test_look_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(['--help'])

    assert exited.value.code == 0
    usage = capsys.readouterr().out
    for command in ('serve', 'check', 'migrate'):
        assert command in usage


@pytest.mark.servers
def test_look_serve_runs_gunicorn_with_looks_settings_outside_a_checkout(
    tmp_path: pathlib.Path,
) -> None:
    """No gunicorn.conf.py where it runs: the settings come with look itself."""
    port = free_port()
    environ = {
        **{name: value for name, value in os.environ.items() if not name.startswith('LOOK_')},
        'LOOK_STORAGE_PATH': str(tmp_path / 'storage'),
        'LOOK_REDIS_URL': '',
        'LOOK_PROCESSES': '1',
        'WEB_CONCURRENCY': '1',
        'XDG_RUNTIME_DIR': str(tmp_path),
    }
    log = tmp_path / 'look.log'
    with open(log, 'wb') as output:
        process = subprocess.Popen(
            [str(LOOK), 'serve', '--bind', f'127.0.0.1:{port}'],
            cwd=tmp_path,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            try:
                return get(f'http://127.0.0.1:{port}/health').status == 200
            except OSError:
                return False

        assert wait_until(healthy, 30), log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(STOP_TIMEOUT)
    text = log.read_text()
    assert returncode == 0, text
    assert 'Using worker: look.server.worker.HeadFirstWorker' in text
    assert f'storing images in {tmp_path / "storage"}' in text
