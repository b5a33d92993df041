"""The documented nginx recipe, run as written in front of look: slow clients wait in nginx.

The test takes the ```nginx block of docs/operations.md's "Behind nginx" section, so the
recipe and the test cannot drift apart. Only two values change: look's default
bind (``server 127.0.0.1:8000;``) and the public port (``listen 80;``) become
this test's ports.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import re
import resource
import time
from collections.abc import Iterator

import pytest

from support.documents import code_block, section
from support.gunicorn import Gunicorn
from support.http import SlowClient, open_slow_clients, request, trickle
from support.imagegen import image_bytes
from support.nginx import Nginx
from support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.nginx]

RECIPE_UPSTREAM = 'server 127.0.0.1:8000;'
RECIPE_LISTEN = 'listen 80;'

SLOW_CLIENTS = 1000
# NOTE: past the recipe's client_header_timeout (10 s), so nginx drops the
#   slow heads while the test looks on; a byte every 2 s keeps slow bodies
#   within its client_body_timeout (10 s between reads), so they stay.
ATTACK = 13.0
TRICKLE_INTERVAL = 2.0
CLIENT_HEADER_TIMEOUT = 10.0
# Every normal request, and an upload, is answered within this meanwhile.
PROMPT = 1.0
BODY_SIZE = 100_000
UPLOAD_HEAD = (
    b'POST /images HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n'
    b'Content-Length: %d\r\n\r\n' % BODY_SIZE
)


def recipe() -> str:
    """Return the ```nginx block of docs/operations.md's "Behind nginx" section."""
    return code_block(section(pathlib.Path('docs/operations.md'), 'Behind nginx'), 'nginx')


def recipe_environment() -> dict[str, str]:
    """Return the variables the section starts look with, in its ```console block."""
    block = code_block(section(pathlib.Path('docs/operations.md'), 'Behind nginx'), 'console')
    environ = dict(re.findall(r'\b(LOOK_[A-Z_]+)=(\S+)', block))
    assert {'LOOK_ALLOWED_HOSTS', 'LOOK_PUBLIC_URL'} <= set(environ), block
    return environ


def with_ports(config: str, upstream_port: int, listen_port: int) -> str:
    """Return ``config`` with look's bind and nginx's public port replaced by the test's."""
    for placeholder in (RECIPE_UPSTREAM, RECIPE_LISTEN):
        assert config.count(placeholder) == 1, f'the recipe must have {placeholder!r} once'
    config = config.replace(RECIPE_UPSTREAM, f'server 127.0.0.1:{upstream_port};')
    return config.replace(RECIPE_LISTEN, f'listen 127.0.0.1:{listen_port};')


@pytest.fixture
def open_files_for_slow_clients() -> Iterator[None]:
    """Let this process hold SLOW_CLIENTS sockets and more, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CLIENTS + 1000
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f'the hard limit on open files ({hard}) is under {wanted}')
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_recipe_names_what_the_test_replaces() -> None:
    """The recipe names look's default bind and port 80, each once."""
    config = recipe()
    with_ports(config, 1, 2)
    assert 'proxy_request_buffering on;' in config


def test_a_thousand_slow_clients_wait_in_nginx_and_look_answers_the_rest_at_once(
    tmp_path: pathlib.Path, open_files_for_slow_clients: None
) -> None:
    """500 heads and 500 upload bodies trickle: GETs and an upload are answered within a second."""
    port = free_port()
    with Gunicorn(tmp_path / 'storage', workers=2, environ=recipe_environment()) as look:
        config = with_ports(recipe(), look.port, port)
        with Nginx(config, port) as nginx:
            heads = open_slow_clients(port, SLOW_CLIENTS // 2, UPLOAD_HEAD)
            bodies = open_slow_clients(
                port, SLOW_CLIENTS // 2, b'\xff' * BODY_SIZE, head=UPLOAD_HEAD
            )
            until = time.monotonic() + ATTACK
            with concurrent.futures.ThreadPoolExecutor(1) as background:
                attack = background.submit(trickle, heads + bodies, TRICKLE_INTERVAL, until)
                try:
                    answers, most_connections = answer_times(nginx.url, until - PROMPT, look.port)
                finally:
                    attack.result()
            nginx_log = nginx.log_tail()

    slow = [(what, seconds) for what, seconds in answers if seconds > PROMPT]
    assert not slow, f'{len(slow)} of {len(answers)} answers were slow: {slow[:5]}\n{nginx_log}'
    assert sum(what == 'upload' for what, _ in answers) >= 3, answers
    # nginx kept its own few connections to look (upstream keepalive 16).
    assert most_connections <= 32, f'look had {most_connections} connections from nginx'
    # nginx, not look, held them all: the heads until client_header_timeout,
    # the bodies for as long as they kept coming.
    check_held(heads, CLIENT_HEADER_TIMEOUT - 0.5, CLIENT_HEADER_TIMEOUT + 2.0)
    check_held(bodies, ATTACK, float('inf'))


def test_through_the_recipe_look_answers_its_names_names_its_pages_and_knows_its_origin(
    tmp_path: pathlib.Path,
) -> None:
    """Its name is answered and names the pages; others get 421; its own pages may write."""
    environ = recipe_environment()
    public = environ['LOOK_PUBLIC_URL']
    name = environ['LOOK_ALLOWED_HOSTS']
    port = free_port()
    with (
        Gunicorn(tmp_path / 'storage', workers=1, environ=environ) as look,
        Nginx(with_ports(recipe(), look.port, port), port) as nginx,
    ):
        images = f'{nginx.url}/images'
        photo = image_bytes('JPEG', (640, 360), seed=2)
        own_page = {'Host': name, 'Origin': public, 'Sec-Fetch-Site': 'same-origin'}
        created = request('POST', images, photo, own_page)
        elsewhere = request(
            'POST', images, photo, {'Host': name, 'Origin': 'https://evil.example'}
        )
        listed = request('GET', images, headers={'Host': name})
        misdirected = request('GET', images, headers={'Host': 'rebind.evil.example'})
        page = request('GET', f'{nginx.url}/view/{created.json()["id"]}', headers={'Host': name})

    assert created.status == 201, created.body
    assert (elsewhere.status, misdirected.status) == (403, 421)
    assert [image['id'] for image in listed.json()] == [created.json()['id']]
    assert f'<meta property="og:url" content="{public}/view/' in page.body.decode()


def answer_times(url: str, until: float, look_port: int) -> tuple[list[tuple[str, float]], int]:
    """GET /health every 0.5 s, and upload a small JPEG every 4th time, until ``until``.

    Return what each request was and how long its answer took (inf for a wrong
    one), and the most connections look had open meanwhile.
    """
    photo = image_bytes('JPEG', (64, 64), seed=7)
    answers: list[tuple[str, float]] = []
    most_connections = 0
    while time.monotonic() < until:
        time.sleep(0.5)
        most_connections = max(most_connections, connections_to(look_port))
        upload = len(answers) % 4 == 3
        started = time.monotonic()
        try:
            if upload:
                response = request('POST', f'{url}/images', photo, timeout=PROMPT + 1.0)
                ok = response.status == 201
            else:
                response = request('GET', f'{url}/health', timeout=PROMPT + 1.0)
                ok = response.status == 200 and response.json()['status'] == 'ok'
        except TimeoutError:
            ok = False
        took = time.monotonic() - started
        answers.append(('upload' if upload else 'get', took if ok else float('inf')))
    return answers, most_connections


def connections_to(port: int) -> int:
    """Return how many TCP connections to 127.0.0.1:``port`` are established."""
    local = f'0100007F:{port:04X}'
    with open('/proc/net/tcp') as table:
        next(table)
        return sum(fields[1] == local and fields[3] == '01' for fields in map(str.split, table))


def check_held(clients: list[SlowClient], at_least: float, at_most: float) -> None:
    """Assert each client's connection lasted between ``at_least`` and ``at_most`` seconds."""
    held = sorted(client.held for client in clients)
    assert at_least <= held[0] and held[-1] <= at_most, (
        f'connections lasted {held[0]:.1f}s to {held[-1]:.1f}s, not {at_least}s to {at_most}s'
    )
