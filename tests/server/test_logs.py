"""What look writes to its log: a line per upload, delete and 5xx; JSON lines on request."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable

import pytest
from falcon.testing import TestClient

from look.config import Config

from support.gunicorn import MakeGunicorn
from support.http import post, request
from support.imagegen import image_bytes
from support.processes import wait_until

MakeClient = Callable[..., TestClient]
MakeConfig = Callable[..., Config]
UPLOAD = image_bytes('JPEG', size=(640, 360))
KEY = 'alice:0123456789abcdef0123'


def test_uploads_and_deletes_are_logged_with_who(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(api_keys=KEY)
    key = {'Authorization': f'Bearer {KEY.partition(":")[2]}'}
    caplog.set_level(logging.INFO, logger='look')

    created = client.simulate_post('/images', body=UPLOAD, headers=key).json
    token = {'Authorization': f'Bearer {created["delete_token"]}'}
    client.simulate_delete(created['image'], headers=token)

    stored, deleted = (r.getMessage() for r in caplog.records if r.name == 'look.web.images')
    assert stored.startswith(f'stored image {created["id"]}: 640x360, ')
    assert f'({len(UPLOAD)} received), by alice' in stored
    assert deleted == f'deleted image {created["id"]}: 640x360, by delete token'
    assert created['delete_token'] not in caplog.text
    assert KEY.partition(':')[2] not in caplog.text


def test_every_5xx_is_one_line_naming_the_request(
    make_config: MakeConfig, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    image = make_client(config).simulate_post('/images', body=UPLOAD).json
    # The same storage, with a render time limit nothing meets.
    slow = make_client(make_config(storage_path=config.storage_path, render_timeout=0.0001))
    caplog.set_level(logging.INFO, logger='look')

    answer = slow.simulate_get(image['thumbnails'][0])

    assert answer.status_code == 503
    (line,) = [r for r in caplog.records if r.name == 'look.web.errors']
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(
        f'GET {image["thumbnails"][0]} answered 503 Thumbnailer unavailable: '
    )


@pytest.mark.e2e
def test_json_log_format_writes_every_line_as_json(
    make_gunicorn: MakeGunicorn, tmp_path: pathlib.Path
) -> None:
    server = make_gunicorn(tmp_path / 'storage', workers=1, environ={'LOOK_LOG_FORMAT': 'json'})
    created = post(f'{server.url}/images', UPLOAD, 'image/jpeg').json()
    request('DELETE', f'{server.url}{created["image"]}')
    assert wait_until(lambda: 'deleted image' in server.log(), 10)

    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]

    assert {'time', 'level', 'logger', 'pid', 'message'} <= set(lines[0])
    messages = [line['message'] for line in lines]
    assert any(m.startswith(f'stored image {created["id"]}: 640x360') for m in messages)
    assert any(m.startswith(f'deleted image {created["id"]}') for m in messages)
    assert any(m.startswith('Booting worker') for m in messages)  # gunicorn's own lines too


def test_an_unknown_log_format_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ValueError, match='LOOK_LOG_FORMAT must be text or json'):
        Config(environ={'LOOK_LOG_FORMAT': 'xml'})
