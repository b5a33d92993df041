"""What must hold before look starts: settings that parse, backends that answer, no open writes.

gunicorn.conf.py asks once, in the master, before any worker boots, so a
bad setting is one line in the log rather than a traceback from every
worker, and look never listens beyond this machine with anyone free to
upload, list and delete (unless the operator says that is what they mean,
as Redis's protected mode has it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping

from look.config import Config, ConfigError
from look.core.backends import check_shared

# gunicorn's parsed binds: (host, port), a unix socket path, or an inherited file descriptor.
Address = tuple[str, int] | str | int


def refusal(addresses: Iterable[Address], environ: Mapping[str, str] | None = None) -> str | None:
    """Return the one line that says why look must not start, or None if it may."""
    try:
        config = Config(environ)
        check_shared(config)
    except ConfigError as ex:
        return f'look cannot start: {ex}'
    if config.api_keys or config.allow_anonymous_writes:
        return None
    exposed = [address for address in addresses if not is_local(address)]
    if not exposed:
        return None
    return (
        f'look will not start: it would listen on {", ".join(map(describe, exposed))}, '
        'beyond this machine, with no API keys, so anyone who reaches it could upload, list '
        'and delete images; set LOOK_API_KEYS (or LOOK_API_KEYS_FILE), or '
        'LOOK_ALLOW_ANONYMOUS_WRITES=1 if that is what you mean'
    )


def notice(addresses: Iterable[Address], environ: Mapping[str, str] | None = None) -> str | None:
    """Return a line to log at start where look listens beyond this machine with no keys.

    Without keys, look answers only requests that name it by a loopback name
    or address, or by one LOOK_ALLOWED_HOSTS lists (421 otherwise, against DNS
    rebinding): an operator who opened it to a network with
    LOOK_ALLOW_ANONYMOUS_WRITES=1 should hear which names work before clients
    meet a 421.
    """
    try:
        config = Config(environ)
    except ConfigError:
        return None  # refusal() says what is wrong
    if config.api_keys or config.allowed_hosts or config.public_url:
        return None
    exposed = [address for address in addresses if not is_local(address)]
    if not exposed:
        return None
    return (
        f'look listens on {", ".join(map(describe, exposed))} with no API keys: it answers only '
        'requests that name it by a loopback name or address (others get 421); list the names '
        'and addresses clients use in LOOK_ALLOWED_HOSTS'
    )


def is_local(address: Address) -> bool:
    """Return whether only this machine can reach ``address``: loopback or a unix socket."""
    if isinstance(address, int):
        return _is_local_descriptor(address)
    if isinstance(address, str):
        return True  # a unix socket path
    return is_loopback_host(address[0])


def is_loopback_host(host: str) -> bool:
    """Return whether a bind host is loopback; every address a name resolves to must be."""
    if host.lower() in ('localhost', 'localhost.'):
        return True
    try:
        return _is_loopback_ip(host)
    except ValueError:
        pass  # a name, or '' (every interface)
    if not host:
        return False
    try:
        resolved = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # gunicorn will fail to bind it anyway
    return all(_is_loopback_ip(str(sockaddr[0])) for *_, sockaddr in resolved)


def _is_loopback_ip(text: str) -> bool:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _is_local_descriptor(fd: int) -> bool:
    """Return whether an inherited listening socket is a unix or loopback one."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return False
    with sock, contextlib.suppress(OSError):
        if sock.family == socket.AF_UNIX:
            return True
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return _is_loopback_ip(sock.getsockname()[0])
    return False


def describe(address: Address) -> str:
    """Return an address as a bind option would write it."""
    if isinstance(address, int):
        return f'fd://{address}'
    if isinstance(address, str):
        return f'unix:{address}'
    host, port = address
    return f'[{host}]:{port}' if ':' in host else f'{host or "0.0.0.0"}:{port}'
