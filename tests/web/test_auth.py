"""Only those who may: API keys for uploading and listing, a delete token per image.

In-process through TestClient for what the app answers; over real gunicorn for
what only a server can show: a refused body that is not read, and a server
that will not start open to a network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import pathlib
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest

from look.config import ApiKey, Config, ConfigError, parse_keys
from look.server import startup
from look.web import auth
from look.web.auth import Access, new_delete_token

from support.client import upload
from support.gunicorn import Gunicorn
from support.http import Response, request
from support.imagegen import image_bytes
from support.processes import free_port, require_executable
from support.storage import image_files, indexed_ids, storage_state

MakeClient = Callable[..., falcon.testing.TestClient]
MakeGunicorn = Callable[..., Gunicorn]

ALICE = 'alice-0123456789abcdef'
BOB = 'bob-fedcba9876543210'
KEYS = f'alice:{ALICE}, bob:{BOB}'
WRONG = 'mallory-0123456789abcdef'
UPLOAD = image_bytes('PNG', size=(160, 128))
MiB = 1024 * 1024


def bearer(credential: str) -> dict[str, str]:
    return {'Authorization': f'Bearer {credential}'}


def check_unauthorized(result: falcon.testing.Result | Response) -> None:
    """Assert a 401 with a Bearer challenge and the one JSON error shape, revealing no key."""
    if isinstance(result, Response):
        status, challenge, body = result.status, result.header('WWW-Authenticate'), result.body
    else:
        status, challenge, body = (
            result.status_code,
            result.headers.get('WWW-Authenticate'),
            result.content,
        )
    assert status == 401, body
    assert challenge is not None and challenge.startswith('Bearer'), challenge
    error = json.loads(body)
    assert set(error) == {'title', 'description'}, error
    for secret in (ALICE, BOB, WRONG, 'alice', 'bob'):
        assert secret not in body.decode(), body


@pytest.fixture
def keyed_config(make_config: Callable[..., Config]) -> Config:
    """A Config with two API keys set."""
    return make_config(api_keys=KEYS)


@pytest.fixture
def keyed(make_client: MakeClient, keyed_config: Config) -> falcon.testing.TestClient:
    """A client of an app with two API keys set."""
    return make_client(keyed_config)


# -- with no keys: as on one's own machine ------------------------------------------


def test_without_keys_the_anonymous_may_do_everything(
    client: falcon.testing.TestClient, config: Config
) -> None:
    """Upload, list, download and delete with no credential; the 201 still has a token."""
    created = upload(client, UPLOAD)
    token = created['delete_token']
    assert len(base64.urlsafe_b64decode(token + '=')) * 8 >= 128

    listing = client.simulate_get('/images')
    assert listing.status_code == 200
    assert [image['id'] for image in listing.json] == [created['id']]
    assert client.simulate_get(created['image']).status_code == 200

    assert client.simulate_delete(created['image']).status_code == 204
    assert client.simulate_get(created['image']).status_code == 404
    assert indexed_ids(config.storage_path) == []


def test_without_keys_a_token_deletes_only_its_image(client: falcon.testing.TestClient) -> None:
    """A token sent where none is needed must still be this image's: a wrong one is 403."""
    first, second = upload(client, UPLOAD), upload(client, UPLOAD)

    refused = client.simulate_delete(first['image'], headers=bearer(second['delete_token']))
    assert refused.status_code == 403, refused.text
    assert client.simulate_get(first['image']).status_code == 200

    deleted = client.simulate_delete(first['image'], headers=bearer(first['delete_token']))
    assert deleted.status_code == 204


# -- with keys: uploading and listing -----------------------------------------------


CREDENTIALS = {
    'none': {},
    'wrong key': bearer(WRONG),
    'empty bearer': {'Authorization': 'Bearer '},
    'basic': {'Authorization': 'Basic ' + base64.b64encode(f'alice:{ALICE}'.encode()).decode()},
    'bare secret': {'Authorization': ALICE},
    'key with a suffix': bearer(ALICE + 'x'),
    'key cut short': bearer(ALICE[:-1]),
    'two credentials': {'Authorization': f'Bearer {WRONG}, Bearer {ALICE}'},
    'not ascii': bearer('clé-0123456789abcdef'),
}


@pytest.mark.parametrize('headers', CREDENTIALS.values(), ids=CREDENTIALS.keys())
@pytest.mark.parametrize('method', ['POST', 'GET', 'HEAD'])
def test_with_keys_upload_and_listing_need_one(
    keyed: falcon.testing.TestClient,
    keyed_config: Config,
    method: str,
    headers: dict[str, str],
) -> None:
    """Each is 401 with a Bearer challenge and the JSON error; nothing is stored."""
    before = storage_state(keyed_config.storage_path)
    body = UPLOAD if method == 'POST' else None
    result = keyed.simulate_request(method, '/images', body=body, headers=headers)
    if method == 'HEAD':
        assert result.status_code == 401
        assert result.headers['WWW-Authenticate'].startswith('Bearer')
    else:
        check_unauthorized(result)
    assert storage_state(keyed_config.storage_path) == before


def test_with_keys_each_key_uploads_and_lists(keyed: falcon.testing.TestClient) -> None:
    """Either key works, and the scheme's name is matched in any case."""
    first = upload(keyed, UPLOAD, bearer(ALICE))
    spelled = keyed.simulate_post(
        '/images', body=UPLOAD, headers={'Authorization': f'bEaReR  {BOB} '}
    )
    assert spelled.status_code == 201, spelled.text
    listing = keyed.simulate_get('/images', headers=bearer(BOB))
    assert listing.status_code == 200
    assert [image['id'] for image in listing.json] == [first['id'], spelled.json['id']]


class CountingBody(io.RawIOBase):
    """A request body that counts what was read of it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.read_bytes += len(buffer)
        buffer[:] = b'\0' * len(buffer)
        return len(buffer)


def test_refused_upload_reads_nothing_of_the_body(keyed: falcon.testing.TestClient) -> None:
    """The 401 comes from the headers alone: not one byte of the body is read."""
    body = CountingBody()
    result = keyed.simulate_post(
        '/images',
        headers={**bearer(WRONG), 'Content-Length': str(30 * MiB)},
        extras={'wsgi.input': body},
    )
    check_unauthorized(result)
    assert body.read_bytes == 0


def test_with_keys_image_urls_health_and_document_stay_public(
    keyed: falcon.testing.TestClient,
) -> None:
    """An image id is the capability: downloads and thumbnails need no key."""
    created = upload(keyed, UPLOAD, bearer(ALICE))
    for path in (
        created['image'],
        created['thumbnails'][0],
        created['thumbnails'][0].removesuffix('.jpeg'),
        '/health',
        '/openapi.json',
    ):
        for method in ('GET', 'HEAD'):
            result = keyed.simulate_request(method, path)
            assert result.status_code == 200, (method, path, result.text)


def test_upload_log_names_the_key_never_its_secret(
    keyed: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level('INFO', logger='look')
    created = upload(keyed, UPLOAD, bearer(BOB))
    keyed.simulate_delete(created['image'], headers=bearer(created['delete_token']))
    assert f'stored image {created["id"]}' in caplog.text
    assert ', by bob' in caplog.text
    assert 'by delete token' in caplog.text
    for secret in (ALICE, BOB, created['delete_token']):
        assert secret not in caplog.text


# -- with keys: deleting --------------------------------------------------------------


def test_with_keys_delete_without_credential_is_401_and_the_image_stays(
    keyed: falcon.testing.TestClient,
) -> None:
    created = upload(keyed, UPLOAD, bearer(ALICE))
    check_unauthorized(keyed.simulate_delete(created['image']))
    assert keyed.simulate_get(created['image']).status_code == 200
    # The anonymous learn nothing of which ids exist.
    missing = '/images/00000000-0000-4000-8000-000000000000.jpeg'
    check_unauthorized(keyed.simulate_delete(missing))


@pytest.mark.parametrize('credential', ['other image', 'wrong', 'token hash'])
def test_with_keys_delete_with_a_foreign_credential_is_403_and_the_image_stays(
    keyed: falcon.testing.TestClient, keyed_config: Config, credential: str
) -> None:
    target, other = upload(keyed, UPLOAD, bearer(ALICE)), upload(keyed, UPLOAD, bearer(ALICE))
    sent = {
        'other image': other['delete_token'],
        'wrong': WRONG,
        'token hash': hashlib.sha256(target['delete_token'].encode()).hexdigest(),
    }[credential]
    before = storage_state(keyed_config.storage_path)

    refused = keyed.simulate_delete(target['image'], headers=bearer(sent))

    assert refused.status_code == 403, refused.text
    assert set(refused.json) == {'title', 'description'}
    assert sent not in refused.text
    assert storage_state(keyed_config.storage_path) == before
    assert keyed.simulate_get(target['image']).status_code == 200


@pytest.mark.parametrize('who', ['own token', 'API key'])
def test_with_keys_delete_takes_the_image_token_or_a_key(
    keyed: falcon.testing.TestClient, keyed_config: Config, who: str
) -> None:
    target, other = upload(keyed, UPLOAD, bearer(ALICE)), upload(keyed, UPLOAD, bearer(ALICE))
    credential = target['delete_token'] if who == 'own token' else BOB

    deleted = keyed.simulate_delete(target['image'], headers=bearer(credential))

    assert deleted.status_code == 204, deleted.text
    assert keyed.simulate_get(target['image']).status_code == 404
    assert image_files(keyed_config.storage_path) == {other['id']}
    # A token deletes once: the image it named is gone.
    again = keyed.simulate_delete(target['image'], headers=bearer(target['delete_token']))
    assert again.status_code == 404


# -- the delete token ---------------------------------------------------------------------


def test_delete_token_is_shown_once_and_only_its_hash_is_kept(
    keyed: falcon.testing.TestClient, keyed_config: Config
) -> None:
    """The index holds the token's SHA-256; no file, listing or other answer holds either."""
    created = upload(keyed, UPLOAD, bearer(ALICE))
    token = created['delete_token']
    token_hash = hashlib.sha256(token.encode()).hexdigest()

    index = (keyed_config.storage_path / 'index.jsonl').read_text()
    assert token_hash in index
    stored = b''.join(
        path.read_bytes() for path in keyed_config.storage_path.rglob('*') if path.is_file()
    )
    assert token.encode() not in stored

    answers = [
        keyed.simulate_get('/images', headers=bearer(ALICE)),
        keyed.simulate_get('/images', params={'order': 'newest'}, headers=bearer(ALICE)),
        keyed.simulate_get(created['image']),
        keyed.simulate_head(created['image']),
        keyed.simulate_get(created['thumbnails'][0]),
        keyed.simulate_get('/health'),
        keyed.simulate_get('/openapi.json'),
    ]
    for answer in answers:
        seen = answer.content + json.dumps(dict(answer.headers)).encode()
        assert token.encode() not in seen
        assert token_hash.encode() not in seen
    assert 'delete_token' not in answers[0].json[0]


def test_delete_tokens_are_random_urlsafe_and_hashed() -> None:
    """256 random bits each, URL-safe, never repeated; the index keeps sha256(token)."""
    tokens = set()
    for _ in range(200):
        token, token_hash = new_delete_token()
        assert len(base64.urlsafe_b64decode(token + '=')) == 32
        assert token_hash == hashlib.sha256(token.encode()).hexdigest()
        tokens.add(token)
    assert len(tokens) == 200


# -- how keys are compared --------------------------------------------------------------


class FakeRequest:
    """Just enough of a falcon.Request for Access: its Authorization header."""

    def __init__(self, credential: str | None) -> None:
        self._header = f'Bearer {credential}' if credential is not None else None

    def get_header(self, name: str) -> str | None:
        return self._header if name == 'Authorization' else None


@pytest.mark.parametrize('credential', ['key0', 'key4', 'key9', 'none of them'])
def test_every_key_is_compared_as_a_digest_whichever_matches(
    monkeypatch: pytest.MonkeyPatch, credential: str
) -> None:
    """hmac.compare_digest on SHA-256 digests, once per key, whichever key (if any) matches."""
    keys = [f'key{n}-secret-0123456789' for n in range(10)]
    access = Access([ApiKey.from_secret(f'key{n}', secret) for n, secret in enumerate(keys)])
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, 'compare_digest', compare)
    sent = next((key for key in keys if key.startswith(credential)), WRONG)
    request: Any = FakeRequest(sent)

    if credential == 'none of them':
        with pytest.raises(falcon.HTTPUnauthorized):
            access.require_key(request, 'list images')
    else:
        assert access.require_key(request, 'list images') == credential

    assert len(compared) == len(keys)
    digest = hashlib.sha256(sent.encode()).digest()
    assert all(a == digest and len(b) == 32 for a, b in compared)


def test_secrets_and_digests_stay_out_of_every_repr() -> None:
    config = Config(environ={'LOOK_API_KEYS': KEYS})
    access = Access(config.api_keys)
    shown = repr(config) + repr(config.api_keys) + repr(access)
    assert 'alice' in repr(config.api_keys)
    for secret in (ALICE, BOB):
        assert secret not in shown
        assert hashlib.sha256(secret.encode()).hexdigest() not in shown
        assert repr(hashlib.sha256(secret.encode()).digest()) not in shown


# -- keys in the configuration ---------------------------------------------------------------


def test_keys_from_the_environment_and_a_file_with_comments(tmp_path: pathlib.Path) -> None:
    """LOOK_API_KEYS pairs or bare secrets; the file skips comments and blank lines."""
    keys_file = tmp_path / 'keys'
    keys_file.write_bytes(
        b'\xef\xbb\xbf# look keys\r\n\r\ncarol:carol-0123456789abcdef\r\n'
        b'   # rotated: old-0123456789abcdef\n\ndave-0123456789abcdef\n'
    )
    config = Config(
        environ={'LOOK_API_KEYS': f'alice:{ALICE},{BOB}', 'LOOK_API_KEYS_FILE': str(keys_file)}
    )
    names = [key.name for key in config.api_keys]
    assert names == ['alice', 'LOOK_API_KEYS #2', 'carol', 'LOOK_API_KEYS_FILE #2']

    access = Access(config.api_keys)
    for secret, name in [
        (ALICE, 'alice'),
        (BOB, 'LOOK_API_KEYS #2'),
        ('carol-0123456789abcdef', 'carol'),
        ('dave-0123456789abcdef', 'LOOK_API_KEYS_FILE #2'),
    ]:
        request: Any = FakeRequest(secret)
        assert access.require_key(request, 'list images') == name
    rotated: Any = FakeRequest('old-0123456789abcdef')
    with pytest.raises(falcon.HTTPUnauthorized):
        access.require_key(rotated, 'list images')


@pytest.mark.parametrize(
    ('value', 'says'),
    [
        ('alice:short', "key 'alice' is 5 characters"),
        ('tooshort', 'is 8 characters'),
        (f'alice:{ALICE},bob:', "key 'bob' is 0 characters"),
        ('alice:' + 'x' * 5000, 'at most 4096'),
        ('alice:with space 0123456789', 'printable ASCII'),
        ('alice:ключ-0123456789abcdef', 'printable ASCII'),
    ],
)
def test_bad_secret_in_the_environment_is_a_config_error(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r'^LOOK_API_KEYS: ') as raised:
        Config(environ={'LOOK_API_KEYS': value})
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ('text', 'says'),
    [
        ('# keys\ncarol:carol-0123456789abcdef\nbob:short\n', 'line 3: the secret'),
        ('# nothing here yet\n\n', 'holds no key'),
        ('', 'holds no key'),
    ],
)
def test_bad_keys_file_is_a_config_error(tmp_path: pathlib.Path, text: str, says: str) -> None:
    keys_file = tmp_path / 'keys'
    keys_file.write_text(text)
    with pytest.raises(ConfigError, match=r'^LOOK_API_KEYS_FILE ') as raised:
        Config(environ={'LOOK_API_KEYS_FILE': str(keys_file)})
    assert says in str(raised.value)


def test_missing_keys_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r'^LOOK_API_KEYS_FILE .* cannot be read'):
        Config(environ={'LOOK_API_KEYS_FILE': str(tmp_path / 'absent')})


def test_error_for_a_short_secret_does_not_quote_it() -> None:
    with pytest.raises(ValueError) as raised:
        parse_keys('alice:s3cr3t-but-short'[:15], source='LOOK_API_KEYS')
    assert 's3cr3t' not in str(raised.value)


# -- start-up: the decision ----------------------------------------------------------------


@pytest.mark.parametrize(
    'address',
    [
        ('127.0.0.1', 8000),
        ('127.8.9.10', 80),
        ('::1', 8000),
        ('localhost', 8000),
        ('::ffff:127.0.0.1', 8000),
        '/run/look.sock',
    ],
)
def test_loopback_and_unix_sockets_are_local(address: startup.Address) -> None:
    assert startup.is_local(address)
    assert startup.refusal([address], environ={}) is None


@pytest.mark.parametrize(
    'address',
    [
        ('0.0.0.0', 8000),
        ('', 8000),
        ('::', 8000),
        ('192.0.2.7', 8000),
        ('2001:db8::1', 80),
        ('::ffff:192.0.2.7', 80),
    ],
)
def test_other_addresses_without_keys_are_refused(address: startup.Address) -> None:
    assert not startup.is_local(address)
    problem = startup.refusal([('127.0.0.1', 8000), address], environ={})
    assert problem is not None and '\n' not in problem
    assert 'LOOK_API_KEYS' in problem and 'LOOK_ALLOW_ANONYMOUS_WRITES' in problem
    assert startup.refusal([address], environ={'LOOK_API_KEYS': KEYS}) is None
    assert startup.refusal([address], environ={'LOOK_ALLOW_ANONYMOUS_WRITES': '1'}) is None
    assert startup.refusal([address], environ={'LOOK_ALLOW_ANONYMOUS_WRITES': '0'}) is not None


@pytest.mark.parametrize(('host', 'local'), [('127.0.0.1', True), ('0.0.0.0', False)])
def test_inherited_sockets_are_judged_by_their_address(host: str, local: bool) -> None:
    """systemd or a re-executed master hand over descriptors; their address decides."""
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind((host, 0))  # bound, never listening
        assert startup.is_local(tcp.fileno()) is local
        assert startup.is_local(unix.fileno())
        os.fstat(tcp.fileno())  # still open: only a duplicate was looked at
    read_end, write_end = os.pipe()
    try:
        assert not startup.is_local(read_end)  # not a socket at all
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_bad_setting_is_one_line_naming_it() -> None:
    problem = startup.refusal([('127.0.0.1', 8000)], environ={'LOOK_JPEG_QUALITY': '100'})
    assert problem == 'look cannot start: LOOK_JPEG_QUALITY must be at most 95, got 100'


# -- over real gunicorn -----------------------------------------------------------------------


BIG_BODY = 30 * MiB


@pytest.fixture(scope='module')
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One worker bound to 0.0.0.0 with keys set: what a public deployment runs."""
    storage = tmp_path_factory.mktemp('keyed')
    # NOTE: an upload deadline far beyond the client's timeout: an answer
    #   that waited for the body would never come in time.
    environ = {'LOOK_API_KEYS': KEYS, 'LOOK_UPLOAD_TIMEOUT': '600'}
    with Gunicorn(storage, workers=1, environ=environ, host='0.0.0.0') as server:
        yield server


@pytest.mark.e2e
def test_keys_let_look_listen_beyond_loopback(exposed: Gunicorn) -> None:
    assert exposed.running
    assert 'will not start' not in exposed.log()
    check_unauthorized(request('GET', f'{exposed.url}/images'))
    assert request('GET', f'{exposed.url}/images', headers=bearer(ALICE)).status == 200


@pytest.mark.e2e
def test_refused_30_mib_upload_is_answered_before_its_body_is_read(exposed: Gunicorn) -> None:
    """The 401 comes while the client still sends; the server never takes the body in.

    The client sends the body as fast as the server takes it. A server that read
    it would take all 30 MiB; look answers from the headers, gunicorn reads a
    little of the rest and closes, so the client's sending stalls on full buffers
    and then fails with most of the body never sent. (With the read side shut
    before the answer, gunicorn kept the connection in 2 runs of 16 and read all
    30 MiB.)
    """
    before = storage_state(exposed.storage_path)
    sent = 0
    sending_failed = threading.Event()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect(('127.0.0.1', exposed.port))
        sock.sendall(
            b'POST /images HTTP/1.1\r\nHost: look\r\nContent-Type: image/jpeg\r\n'
            b'Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n' % (WRONG.encode(), BIG_BODY)
        )

        def send_body() -> None:
            nonlocal sent
            piece = b'\0' * (64 * 1024)
            try:
                while sent < BIG_BODY:
                    sent += sock.send(piece)
            except OSError:
                sending_failed.set()

        sender = threading.Thread(target=send_body)
        sender.start()
        answer = b''
        try:
            while select.select([sock], [], [], 30)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass  # the server closed with the body unread; the answer came first
        sender.join(30)
        assert not sender.is_alive(), 'the client could still send after the answer'

    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 401 '), answer[:300]
    assert b'\r\nwww-authenticate: bearer' in head.lower(), head
    assert set(json.loads(body)) == {'title', 'description'}
    assert sending_failed.is_set(), f'all {sent} bytes were sent: the server read the body'
    assert sent < BIG_BODY // 4, f'{sent / MiB:.1f} MiB were taken in'
    assert storage_state(exposed.storage_path) == before


@pytest.mark.e2e
def test_command_line_clients_with_keys_and_tokens(
    exposed: Gunicorn, tmp_path: pathlib.Path
) -> None:
    """The README's commands: curl uploads with a key, httpie deletes with the token."""
    photo = tmp_path / 'photo.png'
    photo.write_bytes(UPLOAD)
    (tmp_path / 'httpie').mkdir()
    (tmp_path / 'httpie' / 'config.json').write_text('{"disable_update_warnings": true}')
    environ = {**os.environ, 'HTTPIE_CONFIG_DIR': str(tmp_path / 'httpie')}

    def run(*argv: str) -> str:
        command = [require_executable(argv[0]), *argv[1:]]
        result = subprocess.run(
            command, capture_output=True, env=environ, stdin=subprocess.DEVNULL, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode(errors='replace')
        return result.stdout.decode()

    created = json.loads(
        run(
            'curl',
            '-sS',
            '-H',
            f'Authorization: Bearer {ALICE}',
            '--data-binary',
            f'@{photo}',
            f'{exposed.url}/images',
        )
    )
    refused = run('http', '--print=h', 'DELETE', f'{exposed.url}{created["image"]}')
    assert refused.startswith('HTTP/1.1 401')
    deleted = run(
        'http',
        '--print=h',
        '-A',
        'bearer',
        # NOTE: with '=': a token may begin with '-', which would read as an option.
        f'--auth={created["delete_token"]}',
        'DELETE',
        f'{exposed.url}{created["image"]}',
    )
    assert deleted.startswith('HTTP/1.1 204'), deleted


# -- start-up over real gunicorn ----------------------------------------------------------------


def one_error_line(server: Gunicorn) -> str:
    """Return gunicorn's one ERROR line; assert no traceback and no worker booted."""
    log = server.log()
    assert 'Traceback' not in log, log
    assert 'Booting worker' not in log, log
    errors = [line for line in log.splitlines() if '[ERROR]' in line]
    assert len(errors) == 1, log
    return errors[0]


@pytest.mark.e2e
@pytest.mark.parametrize('bind_from_env', [False, True], ids=['--bind', 'GUNICORN_CMD_ARGS'])
def test_refusal_is_one_line_before_any_worker(
    tmp_path: pathlib.Path, bind_from_env: bool
) -> None:
    server = Gunicorn(tmp_path, workers=1, host='0.0.0.0', bind_from_env=bind_from_env)
    try:
        assert server.run_until_exit() != 0
        line = one_error_line(server)
    finally:
        server.close()
    assert 'LOOK_API_KEYS' in line and 'LOOK_ALLOW_ANONYMOUS_WRITES' in line
    assert '0.0.0.0' in line


@pytest.mark.e2e
def test_bad_setting_stops_start_up_with_one_line(tmp_path: pathlib.Path) -> None:
    server = Gunicorn(tmp_path, workers=2, environ={'LOOK_JPEG_QUALITY': '100'})
    try:
        assert server.run_until_exit() != 0
        line = one_error_line(server)
    finally:
        server.close()
    assert line.endswith('look cannot start: LOOK_JPEG_QUALITY must be at most 95, got 100')


@pytest.mark.e2e
def test_an_object_store_that_does_not_answer_stops_start_up_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    nobody = f'http://127.0.0.1:{free_port()}'
    environ = {
        'LOOK_IMAGES_URL': 's3://look-images',
        'LOOK_INDEX_URL': f'postgresql://postgres@127.0.0.1:{free_port()}/look',
        'AWS_ENDPOINT_URL_S3': nobody,
        'AWS_ACCESS_KEY_ID': 'look',
        'AWS_SECRET_ACCESS_KEY': 'look-secret',
    }
    server = Gunicorn(tmp_path, workers=2, environ=environ)
    try:
        assert server.run_until_exit() != 0
        line = one_error_line(server)
    finally:
        server.close()
    assert 'look cannot start: LOOK_IMAGES_URL s3://look-images cannot be used' in line
    assert nobody in line and 'AWS_ENDPOINT_URL_S3' in line


@pytest.mark.e2e
@pytest.mark.parametrize(
    ('host', 'environ'),
    [('0.0.0.0', {'LOOK_ALLOW_ANONYMOUS_WRITES': '1'}), ('127.0.0.1', {})],
    ids=['0.0.0.0 anonymous by choice', '127.0.0.1 without keys'],
)
def test_anonymous_writes_start_where_meant(
    make_gunicorn: MakeGunicorn, host: str, environ: dict[str, str]
) -> None:
    server = make_gunicorn(workers=1, host=host, environ=environ)
    created = request('POST', f'{server.url}/images', UPLOAD)
    assert created.status == 201, created.body
    assert created.json()['delete_token']
    assert 'will not start' not in server.log()
    # Open to a network with no keys: the log names the setting that lets its names in.
    assert ('list the names and addresses clients use in LOOK_ALLOWED_HOSTS' in server.log()) is (
        host == '0.0.0.0'
    )
