"""What a request must show before it is routed, and what every answer carries.

- **The Host.** A browser sends the name it looked up: a page whose name
  resolves to 127.0.0.1 (DNS rebinding) reaches look under a name nobody
  listed. Loopback names always pass; other names only where
  LOOK_ALLOWED_HOSTS (or LOOK_PUBLIC_URL) names them. With API keys set and
  no list, any Host passes: the key is the defence there.
- **Writes from other sites.** With no keys, whoever reaches look may upload
  and delete, and a browser on this machine reaches it for any page: a form
  on another site posts to 127.0.0.1. A write that the browser says comes
  from elsewhere (``Origin``, ``Sec-Fetch-Site``) is refused, unless
  LOOK_CORS_ORIGINS lists its origin; clients that send neither header
  (curl, scripts) are no browser's pages, and write as before.
- **One spelling of each address.** WSGI hands the router a path with its
  percent-escapes decoded, so ``480x270%2Ejpeg`` would be a second address
  of a thumbnail, with a cache entry of its own. look writes no address with
  an escape in it: the raw request line is checked for one.
- **Every answer** says ``X-Content-Type-Options: nosniff``, and
  ``Vary: Origin`` where CORS headers differ by origin.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

import falcon

from look.config import host_name, is_loopback
from look.web.routes import suggested_address

# Headers every answer of look carries, from the app or from its gunicorn worker.
EVERY_ANSWER = {'X-Content-Type-Options': 'nosniff'}
# Methods that change nothing (RFC 9110, section 9.2.1): never refused as cross-site.
SAFE_METHODS = frozenset({'GET', 'HEAD', 'OPTIONS', 'TRACE'})
DEFAULT_PORTS = {'http': 80, 'https': 443}
# NOTE: the most of a client's Host or Origin an error repeats.
SHOWN = 100
# Host headers whose judgement a worker keeps (a client may send any number).
HOSTS_REMEMBERED = 256

_HOST_HEADER = re.compile(r'(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[0-9]{1,5}))?')


def parse_host(header: str) -> tuple[str, int | None] | None:
    """Return the host and port of a ``Host`` header, or None if it is not one."""
    match = _HOST_HEADER.fullmatch(header.strip())
    if match is None:
        return None
    host = host_name(match['host'])
    port = int(match['port']) if match['port'] else None
    if host is None or (port is not None and port > 65535):
        return None
    return host, port


def parse_origin(text: str) -> tuple[str, str, int] | None:
    """Return the scheme, host and port of an origin (``Origin``, a URL), or None for others."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in DEFAULT_PORTS or parts.hostname is None:
        return None  # `null` (a sandboxed page, a file), or nonsense
    try:
        port = parts.port
    except ValueError:
        return None
    host = host_name(parts.hostname)
    if host is None:
        return None
    return parts.scheme, host, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN else f'{text[:SHOWN]}...'


class Hosts:
    """The host names look answers to, and the origin its pages name themselves by."""

    def __init__(self, allowed: Iterable[str], *, public_url: str, keys_set: bool) -> None:
        allowed = tuple(allowed)
        self.public_url = public_url
        self._any = '*' in allowed
        self._names = {host for host in allowed if not host.startswith('.')}
        self._domains = tuple(host for host in allowed if host.startswith('.'))
        if public_url:
            public = parse_origin(public_url)
            assert public is not None, 'LOOK_PUBLIC_URL is checked when it is read'
            self._names.add(public[1])
        # NOTE: with keys set and no list, every Host is let in, as before
        #   there was a list; only listed ones give pages their origin.
        self.checked = not keys_set or bool(allowed)

    def listed(self, host: str) -> bool:
        """Return whether ``host`` is loopback or named by the list (or the public URL)."""
        return (
            self._any
            or host in self._names
            or is_loopback(host)
            or any(host == domain[1:] or host.endswith(domain) for domain in self._domains)
        )

    def admits(self, host: str) -> bool:
        """Return whether a request for ``host`` is answered at all."""
        return not self.checked or self.listed(host)

    def origin_of_pages(self, req: falcon.Request) -> str | None:
        """Return the origin absolute links in a page start with, or None for none.

        LOOK_PUBLIC_URL if it is set; else the request's own, if its Host is
        listed or loopback; else None: a Host that nobody listed must not
        end up in a page that a cache in front keeps for everyone.
        """
        if self.public_url:
            return self.public_url
        host = request_host(req)
        if host is not None and self.listed(host[0]):
            return req.prefix
        return None


def request_host(req: falcon.Request) -> tuple[str, int | None] | None:
    """Return the host and port a request was sent to (its Host, else the server's name)."""
    header = req.env.get('HTTP_HOST')
    if header is None:
        return parse_host(req.env.get('SERVER_NAME', ''))
    return parse_host(header)


class Guard:
    """Refuse unknown hosts, cross-site writes and escaped spellings; mark every answer."""

    def __init__(self, hosts: Hosts, *, keys_set: bool, cors_origins: tuple[str, ...]) -> None:
        self._hosts = hosts
        self._keys_set = keys_set
        self._cors_any = cors_origins == ('*',)
        self._cors_origins = {
            origin for text in cors_origins if (origin := parse_origin(text)) is not None
        }
        # NOTE: with origins listed one by one, whether an answer carries
        #   Access-Control-Allow-Origin (and which) depends on Origin.
        self._vary_origin = bool(cors_origins) and not self._cors_any
        # PERF: the few Host headers a deployment sees, each parsed and judged
        #   once: every request, cache hits too, passes here.
        self._hosts_seen: dict[str | None, tuple[tuple[str, int | None] | None, bool]] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        host = self._admitted_host(req)
        self._check_spelling(req)
        if not self._keys_set and req.method not in SAFE_METHODS:
            self._check_same_origin(req, host)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        for name, value in EVERY_ANSWER.items():
            resp.set_header(name, value)
        if self._vary_origin:
            resp.append_header('Vary', 'Origin')

    def _judged(self, req: falcon.Request) -> tuple[tuple[str, int | None] | None, bool]:
        """Return the request's host and port (None if it is none), and whether it is admitted."""
        header = req.env.get('HTTP_HOST')
        judged = self._hosts_seen.get(header)
        if judged is None:
            host = request_host(req)
            judged = host, host is not None and self._hosts.admits(host[0])
            if header is not None:
                if len(self._hosts_seen) >= HOSTS_REMEMBERED:
                    self._hosts_seen.clear()
                self._hosts_seen[header] = judged
        return judged

    def _admitted_host(self, req: falcon.Request) -> tuple[str, int | None]:
        host, admitted = self._judged(req)
        if host is None:
            raise falcon.HTTPBadRequest(
                title='Bad Host header',
                description='The Host header is not a host name or address (and a port).',
            )
        if not admitted:
            raise falcon.HTTPError(
                falcon.HTTP_421,
                title='Misdirected request',
                description=(
                    f'This service does not answer to the host {_shown(host[0])}; its operator '
                    'lists the names it answers to in LOOK_ALLOWED_HOSTS.'
                ),
            )
        return host

    def _check_spelling(self, req: falcon.Request) -> None:
        raw = req.env.get('RAW_URI') or req.env.get('REQUEST_URI')
        if not raw:
            return  # not under gunicorn (a test client): the path is all there is
        path = raw.partition('?')[0] if raw.startswith('/') else urllib.parse.urlsplit(raw).path
        if '%' not in path:
            return
        suggested = suggested_address(req.path)
        hint = f' Did you mean {suggested}?' if suggested is not None else ''
        raise falcon.HTTPNotFound(
            title='Not found',
            description=(
                f'There is nothing at {_shown(path)}: every address of this service has one '
                f'spelling, without percent-escapes.{hint}'
            ),
        )

    def _check_same_origin(self, req: falcon.Request, host: tuple[str, int | None]) -> None:
        """Refuse a write that a browser says a page on another site sent."""
        origin_header = req.get_header('Origin')
        if origin_header is not None:
            origin = parse_origin(origin_header)
            if origin is not None and (
                self._cors_any or origin in self._cors_origins or self._own(req, host, origin)
            ):
                return
            where = f'a page at {_shown(origin_header)}'
        elif req.get_header('Sec-Fetch-Site', default='').lower() in ('cross-site', 'same-site'):
            where = 'a page on another site'
        else:
            return  # no browser's page: curl, a script, a test client
        raise falcon.HTTPForbidden(
            title='Cross-site request refused',
            description=(
                'This service has no API keys, so it takes uploads and deletes only from its '
                f'own pages and from clients that are not browsers; this one came from {where}.'
            ),
        )

    def _own(
        self, req: falcon.Request, host: tuple[str, int | None], origin: tuple[str, str, int]
    ) -> bool:
        """Return whether ``origin`` is the request's own, or the public URL's."""
        name, port = host
        scheme = req.scheme
        own = (scheme, name, port if port is not None else DEFAULT_PORTS.get(scheme, 0))
        if origin == own:
            return True
        return bool(self._hosts.public_url) and origin == parse_origin(self._hosts.public_url)
