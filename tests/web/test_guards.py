"""Before routing: the Host, writes from other sites, one spelling of each address; nosniff, Vary.

In-process, with the Host, Origin and Sec-Fetch-Site a browser would send.
tests/e2e/test_origins.py asks the same of real gunicorn, and test_browser.py of Chromium.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from falcon.testing import Result, TestClient

from look.config import Config, ConfigError
from look.web.guards import parse_host, parse_origin

from support.client import upload
from support.imagegen import image_bytes

MakeClient = Callable[..., TestClient]
KEY = 'guard-test-key-0123456789'
BEARER = {'Authorization': f'Bearer {KEY}'}
SITE = 'https://photos.example.org'
PNG = image_bytes('PNG', (320, 200))


def check_error(result: Result, status: int) -> dict[str, str]:
    assert result.status_code == status, result.text
    assert set(result.json) == {'title', 'description'}
    assert result.headers['Cache-Control'] == 'no-store'
    document: dict[str, str] = result.json
    return document


# -- the Host ---------------------------------------------------------------------------

LOOPBACK = [
    '127.0.0.1',
    '127.0.0.1:8000',
    '127.1.2.3:8000',
    'localhost',
    'localhost:8000',
    'LocalHost.:8000',
    'photos.localhost:8000',
    '[::1]',
    '[::1]:8000',
    '[::ffff:127.0.0.1]:8000',
]


@pytest.mark.parametrize('host', LOOPBACK)
def test_loopback_names_and_addresses_are_always_answered(
    make_client: MakeClient, host: str
) -> None:
    """Health checks, the machine's own browser and scripts: with no keys, and no list."""
    client = make_client(allowed_hosts=())
    assert client.simulate_get('/images', host=host).status_code == 200
    created = client.simulate_post('/images', body=PNG, host=host)
    assert created.status_code == 201, created.text


@pytest.mark.parametrize(
    'host',
    [
        'rebind.evil.example',
        'rebind.evil.example:8000',
        '127.0.0.1.evil.example',
        'localhost.evil.example',
        '10.0.0.5:8000',
        '0.0.0.0:8000',
        '[fe80::1]:8000',
    ],
)
def test_with_no_keys_any_other_host_is_misdirected_before_routing(
    make_client: MakeClient, host: str
) -> None:
    """A page whose name resolves to 127.0.0.1 (DNS rebinding) reaches nothing."""
    client = make_client(allowed_hosts=())
    image = upload(client, PNG, headers={'Host': '127.0.0.1:8000'})

    for method, path in [
        ('GET', '/images'),
        ('GET', '/'),
        ('DELETE', image['image']),
        ('POST', '/images'),
        ('GET', '/no/such/path'),
        ('GET', '/health'),
    ]:
        result = client.simulate_request(method, path, host=host, body=PNG)
        assert 'not answer to the host' in check_error(result, 421)['description']
        assert result.headers['X-Content-Type-Options'] == 'nosniff'
    assert client.simulate_get(image['image'], host='localhost').status_code == 200


@pytest.mark.parametrize('host', ['a b', 'x:port', '[zz]:80', 'x:99999', '', 'a/b'])
def test_a_host_that_is_no_host_is_a_bad_request(make_client: MakeClient, host: str) -> None:
    result = make_client(allowed_hosts='*').simulate_get('/health', headers={'Host': host})
    assert check_error(result, 400)['title'] == 'Bad Host header'


def test_listed_names_and_domains_are_answered_and_others_are_not(
    make_client: MakeClient,
) -> None:
    client = make_client(allowed_hosts='photos.example.org, .example.net, 192.0.2.7')
    for host in (
        'photos.example.org',
        'PHOTOS.example.org.:443',
        'example.net',
        'a.b.example.net:8080',
        '192.0.2.7:8000',
        '127.0.0.1:8000',
    ):
        assert client.simulate_get('/images', host=host).status_code == 200, host
    for host in ('example.org', 'other.example.org', 'notexample.net', '192.0.2.8'):
        check_error(client.simulate_get('/images', host=host), 421)


def test_with_keys_set_an_unset_list_answers_any_host(make_client: MakeClient) -> None:
    """The key is the defence there; a list, once set, is kept to."""
    open_to_all = make_client(api_keys=KEY, allowed_hosts=())
    assert open_to_all.simulate_get('/images', host='anything.example', headers=BEARER).json == []

    listed = make_client(api_keys=KEY, allowed_hosts='photos.example.org')
    check_error(listed.simulate_get('/images', host='anything.example', headers=BEARER), 421)
    assert listed.simulate_get('/images', host='photos.example.org', headers=BEARER).json == []
    assert listed.simulate_get('/health', host='localhost:8000').status_code == 200


def test_the_public_urls_host_is_answered_and_a_star_answers_all(make_client: MakeClient) -> None:
    public = make_client(allowed_hosts=(), public_url=SITE)
    assert public.simulate_get('/images', host='photos.example.org').status_code == 200
    check_error(public.simulate_get('/images', host='other.example.org'), 421)

    every = make_client(allowed_hosts='*')
    assert every.simulate_get('/images', host='whatever.example:81').status_code == 200


@pytest.mark.parametrize(
    ('header', 'parsed'),
    [
        ('127.0.0.1:8000', ('127.0.0.1', 8000)),
        ('[::1]:8000', ('::1', 8000)),
        ('[0:0::1]', ('::1', None)),
        ('Photos.Example.org.', ('photos.example.org', None)),
        ('::1', None),  # an IPv6 address in a Host is in brackets
        ('a:b:c', None),
        ('x:', None),
    ],
)
def test_hosts_are_compared_in_one_spelling(header: str, parsed: object) -> None:
    assert parse_host(header) == parsed


@pytest.mark.parametrize(
    ('variable', 'value'),
    [
        ('LOOK_ALLOWED_HOSTS', 'photos.example.org:443'),
        ('LOOK_ALLOWED_HOSTS', 'https://photos.example.org'),
        ('LOOK_ALLOWED_HOSTS', 'a..b'),
        ('LOOK_ALLOWED_HOSTS', '*.example.org'),
        ('LOOK_PUBLIC_URL', 'photos.example.org'),
        ('LOOK_PUBLIC_URL', 'https://photos.example.org/look'),
        ('LOOK_PUBLIC_URL', 'https://photos.example.org?x=1'),
        ('LOOK_PUBLIC_URL', 'https://user@photos.example.org'),
        ('LOOK_PUBLIC_URL', 'ftp://photos.example.org'),
        ('LOOK_PUBLIC_URL', 'https://photos.example.org:99999'),
    ],
)
def test_a_bad_host_list_or_public_url_stops_start_up_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Config(environ={variable: value})


def test_hosts_and_the_public_url_are_read_in_one_spelling() -> None:
    config = Config(
        environ={
            'LOOK_ALLOWED_HOSTS': ' Photos.Example.org. , .Example.NET,[::1], 192.0.2.7 ',
            'LOOK_PUBLIC_URL': 'HTTPS://Photos.Example.org/',
        }
    )
    assert config.allowed_hosts == ('photos.example.org', '.example.net', '::1', '192.0.2.7')
    assert config.public_url == SITE


# -- writes from other sites --------------------------------------------------------------

CROSS_SITE = {
    'a form on another site': {'Origin': 'https://evil.example', 'Sec-Fetch-Site': 'cross-site'},
    'a fetch from another site': {'Origin': 'https://evil.example'},
    'a sandboxed page': {'Origin': 'null', 'Sec-Fetch-Site': 'cross-site'},
    'another port of this host': {'Origin': 'http://127.0.0.1:3000'},
    'another scheme': {'Origin': 'https://127.0.0.1:8000'},
    'a subdomain': {'Origin': 'http://a.localhost:8000', 'Sec-Fetch-Site': 'same-site'},
    'cross-site without an origin': {'Sec-Fetch-Site': 'cross-site'},
}
OWN = {
    "the gallery's own fetch": {
        'Origin': 'http://127.0.0.1:8000',
        'Sec-Fetch-Site': 'same-origin',
    },
    'a form on the own page': {'Origin': 'http://127.0.0.1:8000'},
    'curl': {},
    'a typed address': {'Sec-Fetch-Site': 'none'},
}


@pytest.mark.parametrize('headers', CROSS_SITE.values(), ids=CROSS_SITE)
def test_with_no_keys_a_write_from_another_site_is_refused(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = make_client(allowed_hosts=())
    host = {'Host': '127.0.0.1:8000'}
    image = upload(client, PNG, headers=host)

    posted = client.simulate_post('/images', body=PNG, headers={**host, **headers})
    deleted = client.simulate_delete(image['image'], headers={**host, **headers})

    for result in (posted, deleted):
        assert check_error(result, 403)['title'] == 'Cross-site request refused'
    assert [i['id'] for i in client.simulate_get('/images', headers=host).json] == [image['id']]
    # Reads are anyone's, as image links are.
    assert client.simulate_get(image['image'], headers={**host, **headers}).status_code == 200


@pytest.mark.parametrize('headers', OWN.values(), ids=OWN)
def test_with_no_keys_own_pages_and_clients_that_are_no_browser_write_as_before(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    client = make_client(allowed_hosts=())
    host = {'Host': '127.0.0.1:8000'}
    image = upload(client, PNG, headers={**host, **headers})
    deleted = client.simulate_delete(image['image'], headers={**host, **headers})
    assert deleted.status_code == 204, deleted.text


def test_behind_a_proxy_the_public_urls_origin_is_the_own_one(make_client: MakeClient) -> None:
    """nginx passes the Host without its port, and TLS ends there: the browser's origin differs."""
    client = make_client(allowed_hosts=(), public_url=SITE)
    headers = {'Origin': SITE, 'Sec-Fetch-Site': 'same-origin'}
    assert (
        client.simulate_post('/images', body=PNG, host='127.0.0.1', headers=headers).status_code
        == 201
    )
    refused = client.simulate_post(
        '/images', body=PNG, host='127.0.0.1', headers={'Origin': 'https://evil.example'}
    )
    check_error(refused, 403)


def test_origins_listed_for_cors_may_write_and_with_keys_the_key_decides(
    make_client: MakeClient,
) -> None:
    other = 'https://app.example.com'
    listed = make_client(allowed_hosts=(), cors_origins=(other,))
    created = listed.simulate_post(
        '/images',
        body=PNG,
        host='localhost',
        headers={'Origin': other, 'Sec-Fetch-Site': 'cross-site'},
    )
    assert created.status_code == 201
    assert created.headers['Access-Control-Allow-Origin'] == other

    keyed = make_client(api_keys=KEY)
    cross_site = {'Origin': 'https://evil.example', 'Sec-Fetch-Site': 'cross-site'}
    assert (
        keyed.simulate_post('/images', body=PNG, headers={**cross_site, **BEARER}).status_code
        == 201
    )
    check_error(keyed.simulate_post('/images', body=PNG, headers=cross_site), 401)


def test_origins_are_compared_with_default_ports() -> None:
    assert parse_origin('https://photos.example.org') == ('https', 'photos.example.org', 443)
    assert parse_origin('http://[::1]:8000') == ('http', '::1', 8000)
    assert parse_origin('null') is None


# -- what every answer carries --------------------------------------------------------------


def answers_of_every_kind(
    client: TestClient, image: dict[str, Any], headers: dict[str, str]
) -> dict[str, Result]:
    thumbnail = image['thumbnails'][0]
    first = client.simulate_get(thumbnail, headers=headers)
    page = client.simulate_get(f'/view/{image["id"]}', headers=headers)
    style = re.search(r'href="(/static/[^"]+\.css)"', page.text)
    assert style is not None, page.text
    return {
        'list': client.simulate_get('/images', headers=headers),
        'error': client.simulate_get('/no/such/path', headers=headers),
        'misdirected': client.simulate_get('/images', headers={**headers, 'Host': 'x.example'}),
        'cache miss': first,
        'cache hit': client.simulate_get(thumbnail, headers=headers),
        'negotiated': client.simulate_get(thumbnail.rpartition('.')[0], headers=headers),
        '304': client.simulate_get(
            thumbnail, headers={**headers, 'If-None-Match': first.headers['ETag']}
        ),
        'head': client.simulate_head(image['image'], headers=headers),
        'page': page,
        'static': client.simulate_get(style[1], headers=headers),
        'openapi': client.simulate_get('/openapi.json', headers=headers),
        'preflight': client.simulate_options(
            '/images', headers={**headers, 'Access-Control-Request-Method': 'POST'}
        ),
    }


def test_every_answer_says_nosniff_and_varies_by_origin_where_cors_answers_differ(
    make_client: MakeClient,
) -> None:
    client = make_client(cors_origins=(SITE, 'https://other.example'))
    image = upload(client, PNG)
    for origin in (SITE, 'https://unlisted.example'):
        answers = answers_of_every_kind(client, image, {'Origin': origin})
        assert answers['cache hit'].headers['X-Look-Cache'] == 'Hit'
        assert answers['304'].status_code == 304
        for kind, answer in answers.items():
            assert answer.headers['X-Content-Type-Options'] == 'nosniff', kind
            vary = [v.strip() for v in answer.headers['Vary'].split(',')]
            assert vary.count('Origin') == 1, (kind, vary)
        assert 'Accept' in answers['negotiated'].headers['Vary']
        assert 'Authorization' in answers['page'].headers['Vary']


def test_no_vary_on_origin_where_every_origin_gets_the_same_answer(
    make_client: MakeClient,
) -> None:
    for origins in ((), ('*',)):
        client = make_client(cors_origins=origins)
        image = upload(client, PNG)
        for kind, answer in answers_of_every_kind(client, image, {'Origin': SITE}).items():
            assert 'Origin' not in answer.headers.get('Vary', ''), (origins, kind)
            assert answer.headers['X-Content-Type-Options'] == 'nosniff', kind


# -- one spelling of each address -------------------------------------------------------------


@pytest.mark.parametrize(
    ('spelling', 'canonical'),
    [
        ('/thumbnails/{id}/{size}%2Ejpeg', '/thumbnails/{id}/{size}.jpeg'),
        ('/thumbnails/{id}/{size}%2ejpeg', '/thumbnails/{id}/{size}.jpeg'),
        ('/thumbnails/{id}%2F{size}.jpeg', '/thumbnails/{id}/{size}.jpeg'),
        ('/thumbnails/%7Bid%7D/{size}.jpeg', None),
        ('/images/{id}%2Ejpeg', '/images/{id}.jpeg'),
        ('/images/{head}%{hex}{tail}.jpeg', '/images/{id}.jpeg'),
        ('/%69mages', None),
        ('/view/{id}%00', None),
    ],
)
def test_a_percent_escaped_spelling_of_an_address_is_404_naming_the_one_spelling(
    make_client: MakeClient, spelling: str, canonical: str | None
) -> None:
    """gunicorn hands on the raw request line (RAW_URI); WSGI's path has the escapes decoded."""
    client = make_client()
    image = upload(client, PNG)
    size = image['thumbnails'][0].rpartition('/')[2].partition('.')[0]
    head, tail = image['id'][:1], image['id'][2:]
    fields = {'id': image['id'], 'size': size, 'head': head, 'hex': f'{ord(image["id"][1]):02X}'}
    raw = spelling.format(**fields, tail=tail)
    decoded = urllib.parse.unquote(raw)
    result = client.simulate_get(decoded, extras={'RAW_URI': raw})

    description = check_error(result, 404)['description']
    if canonical is not None:
        assert f'Did you mean {canonical.format(**fields)}?' in description
    assert result.headers['X-Content-Type-Options'] == 'nosniff'


def test_escapes_in_the_query_and_the_plain_spelling_are_answered(make_client: MakeClient) -> None:
    client = make_client()
    image = upload(client, PNG)
    assert (
        client.simulate_get(image['image'], extras={'RAW_URI': image['image']}).status_code == 200
    )
    listed = client.simulate_get(
        '/images', query_string='limit=%31', extras={'RAW_URI': '/images?limit=%31'}
    )
    assert listed.status_code == 200
    absolute = f'http://127.0.0.1:8000{image["image"]}'
    assert client.simulate_get(image['image'], extras={'RAW_URI': absolute}).status_code == 200
