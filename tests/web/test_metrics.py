"""/metrics: every worker in one scrape, valid for Prometheus, and behind a key if asked."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
import redis
from falcon.testing import TestClient

from support.gunicorn import Gunicorn, MakeGunicorn
from support.http import get, post, request
from support.imagegen import image_bytes
from support.processes import require_executable, wait_until
from support.redis import RedisServer

MakeClient = Callable[..., TestClient]
KEY = 'operator:0123456789abcdef0123'
UPLOAD = image_bytes('JPEG', size=(640, 360))


def samples(text: str, name: str) -> dict[str, float]:
    """Return {labels: value} of one metric in an exposition."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf'{name}(?:{{(.*)}})? (\S+)$', line)
        if match:
            found[match[1] or ''] = float(match[2])
    return found


@pytest.fixture(scope='module')
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, str]]:
    """Two workers with Redis, after some traffic on both; returns the server and a scrape."""
    with RedisServer() as redis:
        storage = tmp_path_factory.mktemp('metrics')
        with Gunicorn(storage, workers=2, redis_url=redis.url) as server:
            image = post(f'{server.url}/images', UPLOAD, 'image/jpeg').json()
            for _ in range(6):  # new connections: both workers answer some
                for url in (image['thumbnails'][0], image['image'], '/nowhere'):
                    get(server.url + url)
            post(f'{server.url}/images', b'not an image')
            yield server, get(f'{server.url}/metrics').body.decode()


@pytest.mark.e2e
@pytest.mark.redis
def test_one_scrape_counts_every_worker(served: tuple[Gunicorn, str]) -> None:
    server, text = served
    requests = samples(text, 'look_http_requests_total')

    thumbnail = (
        'method="GET",route="/thumbnails/{image_id}/{width}x{height}.{format}",status="200"'
    )
    assert requests[thumbnail] == 6
    assert requests['method="GET",route="/images/{image_id}.jpeg",status="200"'] == 6
    assert requests['method="GET",route="unrouted",status="404"'] == 6
    assert requests['method="POST",route="/images",status="201"'] == 1
    assert requests['method="POST",route="/images",status="415"'] == 1
    assert samples(text, 'look_cache_requests_total') == {'result="miss"': 1, 'result="hit"': 5}
    assert samples(text, 'look_renders_total') == {'format="jpeg"': 1}
    assert samples(text, 'look_uploads_total') == {'': 1}
    assert samples(text, 'look_upload_bytes_total') == {'': len(UPLOAD)}
    assert samples(text, 'look_thumbnailer_tasks') == {'': 0}
    assert samples(text, 'look_thumbnailer_pool_restarts_total') == {'': 0}
    latency = samples(text, 'look_http_request_duration_seconds_count')
    answered = sum(v for labels, v in requests.items() if 'route="/images"' in labels)
    assert latency['route="/images"'] == answered >= 2
    # Both workers answered, and both are in the one scrape.
    assert len(server.worker_pids()) == 2


@pytest.mark.e2e
@pytest.mark.redis
def test_the_exposition_passes_promtool(served: tuple[Gunicorn, str]) -> None:
    promtool = require_executable('promtool')
    _, text = served
    checked = subprocess.run(
        [promtool, 'check', 'metrics'], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Those with samples so far (refusals and Redis errors have tests of their own).
    for name in (
        'look_http_requests',
        'look_http_request_duration_seconds',
        'look_cache_requests',
        'look_uploads',
        'look_upload_bytes',
        'look_renders',
        'look_render_duration_seconds',
        'look_thumbnailer_tasks',
        'look_thumbnailer_pool_restarts',
    ):
        assert re.search(rf'^# TYPE {name}(_total)? ', text, re.MULTILINE), name


def test_redis_errors_are_counted(make_client: MakeClient) -> None:
    client = make_client(redis_url='redis://127.0.0.1:1/0', redis_from_url=redis.Redis.from_url)
    image = client.simulate_post('/images', body=UPLOAD).json
    client.simulate_get(image['thumbnails'][0])

    errors = samples(client.simulate_get('/metrics').text, 'look_redis_errors_total')
    assert errors.get('operation="GET"', 0) >= 1


def test_metrics_take_an_api_key_where_keys_are_set(make_client: MakeClient) -> None:
    client = make_client(api_keys=KEY)
    secret = KEY.partition(':')[2]

    refused = client.simulate_get('/metrics')
    allowed = client.simulate_get('/metrics', headers={'Authorization': f'Bearer {secret}'})

    assert refused.status_code == 401
    assert refused.headers['WWW-Authenticate'].startswith('Bearer')
    assert allowed.status_code == 200
    assert allowed.headers['Content-Type'].startswith('text/plain')
    assert 'look_http_requests_total' in allowed.text


def test_metrics_public_opens_them_and_no_keys_means_open(make_client: MakeClient) -> None:
    assert (
        make_client(api_keys=KEY, metrics_public=True).simulate_get('/metrics').status_code == 200
    )
    assert make_client().simulate_get('/metrics').status_code == 200


@pytest.mark.e2e
def test_a_worker_gone_leaves_its_counts_and_no_stale_gauge(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path
) -> None:
    """A worker replaced (here: killed) keeps what it counted in the sums."""
    server = make_gunicorn(tmp_path / 'storage', workers=1)
    for _ in range(3):
        request('GET', f'{server.url}/health')
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)

    def replaced() -> bool:
        pids = server.worker_pids()
        return bool(pids) and worker not in pids

    assert wait_until(replaced, 30)
    assert wait_until(lambda: get(f'{server.url}/health').status == 200, 30)
    text = get(f'{server.url}/metrics').body.decode()
    health = samples(text, 'look_http_requests_total')
    assert health['method="GET",route="/health",status="200"'] >= 4
    assert samples(text, 'look_thumbnailer_tasks') == {'': 0}
