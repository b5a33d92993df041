"""A private SeaweedFS (weed server -s3): the S3-compatible store of the shared-backend tests."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from support.http import get
from support.processes import (
    START_TIMEOUT,
    Server,
    free_port,
    require_executable,
    tail,
    wait_until,
)

S3_ACCESS_KEY = 'look-test'
S3_SECRET_KEY = 'look-test-secret'


class SeaweedServer(Server):
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
        pytest.fail(f'weed found no free ports:\n{tail(self.log_path)}')

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
            # NOTE: a master started again waits this long to become its own
            #   leader (10 s by default): a store killed and started again is
            #   back in seconds.
            '-master.electionTimeout=1s',
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
        pytest.fail(f'weed did not answer on {self.endpoint_url}:\n{tail(self.log_path)}')

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


@pytest.fixture(scope='session', name='seaweed')
def seaweed_fixture() -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole run; tests keep apart by bucket prefix, never stop it."""
    with SeaweedServer() as server:
        yield server
