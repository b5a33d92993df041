"""A gthread worker that gives a connection a thread only once its request head has arrived.

gunicorn's gthread worker hands every new or woken connection to a thread,
which reads the request head from a blocking socket: a client that sends its
head a byte at a time holds that thread for as long as it likes, and one that
connects and sends nothing holds it for seconds. Here the main loop reads the
head instead, without blocking, and a connection gets a thread only when its
head is whole. The head has one deadline for all of its bytes. A request that
carries a body (an upload) gets a thread only while fewer than
``max_bodies`` such requests have one; the rest wait in the main loop, costing
no thread, for up to ``body_wait`` seconds each.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import re
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn.config import Config
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from look.web.errors import ERROR_HEADERS, error_body
from look.web.guards import EVERY_ANSWER

# NOTE: gunicorn reads a request 8 KiB at a time too (SocketUnreader).
HEAD_READ_SIZE = 8192
# NOTE: after an answer to a request whose body the app left unread (a
#   refused upload), its thread reads the rest for this long, as gunicorn
#   does for 5 s, to keep the connection; a body still trickling in then is
#   left to the main loop, which reads and discards it (LINGER_SECONDS, at
#   most LINGER_BYTES) before closing, so the client sees the answer rather
#   than a reset. Every refused trickling upload held a thread for 5 s before.
UNREAD_BODY_WAIT = 0.1
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
END_OF_HEAD = b'\r\n\r\n'
# NOTE: gunicorn's fast parser takes 1 MiB for an unlimited request line.
UNLIMITED_REQUEST_LINE = 1024 * 1024

# NOTE: a head that announces a body: a Content-Length other than 0, or any
#   Transfer-Encoding (chunked). Matched on raw bytes, as gunicorn will parse them.
_DECLARES_BODY = re.compile(
    rb'\r\n(?:content-length[ \t]*:[ \t]*0*[1-9]|transfer-encoding[ \t]*:)', re.IGNORECASE
)
# What a request with a body takes, before any has been answered here, and how
# much each one answered moves that estimate (for the Retry-After of a refusal).
FIRST_BODY_SECONDS = 0.1
BODY_WEIGHT = 0.25


def declares_body(head: bytes | bytearray) -> bool:
    """Whether a whole request head announces a body."""
    return _DECLARES_BODY.search(head) is not None


def error_response(
    status: str, title: str, description: str, headers: dict[str, str] | None = None
) -> bytes:
    """Return a whole HTTP/1.1 error answer that closes the connection, in look's error shape."""
    body = error_body(title, description)
    fields = {**ERROR_HEADERS, **EVERY_ANSWER, **(headers or {})}
    fields.update({'Connection': 'close', 'Content-Length': str(len(body))})
    head = ''.join(f'{name}: {value}\r\n' for name, value in fields.items())
    return f'HTTP/1.1 {status}\r\n{head}\r\n'.encode('latin-1') + body


def busy_response(retry_after: int, max_bodies: int, body_wait: float) -> bytes:
    """Return the 503 for a request whose body waited its whole turn for a slot."""
    return error_response(
        '503 Service Unavailable',
        'Too many uploads',
        f'{max_bodies} uploads were being received here for all of the {body_wait:g}s an '
        'upload may wait for its turn; try again shortly.',
        {'Retry-After': str(retry_after)},
    )


TIMEOUT_RESPONSE = error_response(
    '408 Request Timeout',
    'Request timeout',
    'The request line and headers did not arrive in time; send them at once.',
)

# How look words the refusals of gunicorn's parser, by the status gunicorn gives each.
_REFUSALS = {
    400: ('Bad request', 'The request line or a header could not be parsed: {error}.'),
    414: (
        'Request line too long',
        'The request line is longer than the {line} bytes this service reads; '
        'shorten the address.',
    ),
    431: (
        'Request header fields too large',
        'The request has more than {fields} header fields, or one longer than {field_size} bytes.',
    ),
}
# NOTE: the most of gunicorn's own words about a request an answer repeats.
ERROR_SHOWN = 200
_STATUS_LINE = re.compile(rb'HTTP/1\.[01] ([0-9]{3}) ([^\r\n]*)\r\n')


class JsonRefusals:
    """The client's socket, as gunicorn's ``handle_error`` writes its refusal to it.

    gunicorn decides the status of a request it cannot parse (400, 414,
    431, ...), logs it and writes a page of HTML. Through this socket the
    page goes out as look's JSON error instead, with the same status, so
    gunicorn stays the one judge of which status a broken request gets.
    """

    def __init__(self, sock: Any, error: BaseException, cfg: Config) -> None:
        self._sock = sock
        self._error = error
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        match = _STATUS_LINE.match(data)
        if match is None:
            self._sock.sendall(data)
            return
        status, reason = int(match[1]), match[2].decode('latin-1')
        self._sock.sendall(self.answer(status, reason))

    def answer(self, status: int, reason: str) -> bytes:
        """Return look's answer for gunicorn's ``status``."""
        title, description = _REFUSALS.get(status, (reason, '{error}.'))
        error = str(self._error).strip() or reason
        if len(error) > ERROR_SHOWN:
            error = f'{error[:ERROR_SHOWN]}...'
        description = description.format(
            error=error,
            line=request_line_limit(self._cfg) or UNLIMITED_REQUEST_LINE,
            fields=field_limits(self._cfg)[0],
            field_size=field_limits(self._cfg)[1],
        )
        return error_response(f'{status} {reason}', title, description)


def reads_heads(cfg: Config) -> bool:
    """Whether the main loop can read heads under ``cfg``: plain HTTP/1, nothing before it."""
    return (
        not cfg.is_ssl
        and cfg.http2_cleartext == 'off'
        and cfg.protocol == 'http'
        and cfg.proxy_protocol == 'off'
    )


def request_line_limit(cfg: Config) -> int:
    """Return the longest request line gunicorn accepts under ``cfg``; 0 for no limit."""
    # NOTE: as gunicorn.http.message.Request reads limit_request_line.
    limit = cfg.limit_request_line
    if limit < 0 or limit > MAX_REQUEST_LINE:
        return MAX_REQUEST_LINE
    return limit


def field_limits(cfg: Config) -> tuple[int, int]:
    """Return the most header fields gunicorn accepts under ``cfg``, and their longest."""
    # NOTE: as gunicorn.http.message.Request reads them.
    fields = cfg.limit_request_fields
    if fields <= 0 or fields > MAX_HEADERS:
        fields = MAX_HEADERS
    field_size = cfg.limit_request_field_size
    if field_size <= 0:
        field_size = DEFAULT_MAX_HEADERFIELD_SIZE
    return fields, field_size


def head_limit(cfg: Config) -> int:
    """Return the most bytes a head that gunicorn accepts can have under ``cfg``."""
    # NOTE: the bounds of gunicorn.http.message.Request, which answers a
    #   longer head with 400 or 431 once it has read that much.
    fields, field_size = field_limits(cfg)
    # An empty line may come first (RFC 9112, section 2.2), then the request
    # line and its CRLF, then the headers.
    request_line = request_line_limit(cfg) or UNLIMITED_REQUEST_LINE
    return 2 + request_line + 2 + fields * (field_size + 2) + 4


def request_line_too_long(head: bytes | bytearray, limit: int) -> bool:
    """Whether gunicorn would refuse the request line begun in ``head`` without reading more."""
    start = 2 if head.startswith(b'\r\n') else 0
    end = head.find(b'\r\n', start)
    if end < 0:
        return len(head) - start - 2 > limit > 0
    return end - start > limit > 0


class HeadConn(TConn):
    """A connection, and what has arrived of its next request's head."""

    def __init__(self, cfg: Config, sock: Any, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.head: bytes | bytearray = b''
        self.head_deadline = math.inf
        self.head_whole = False
        # The worker's main loop, which lingers over a closing connection.
        self.linger: Any = None
        self.lingered = 0
        # When the request on its thread, one with a body, was given it (else None).
        self.body_started: float | None = None

    def close(self, graceful: bool = False) -> None:
        """Close; gracefully means after the client's last bytes, waited for in the main loop."""
        if graceful and self.linger is not None:
            self.linger(self)
        else:
            super().close(graceful)

    def init(self) -> None:
        """Set the connection up for its thread and put the head read so far before the parser."""
        super().init()
        if self.head:
            self.parser.unreader.unread(self.head)
            self.head = b''
        if not self.head_whole:
            # NOTE: past gunicorn's limits, or with a bare LF: the parser
            #   answers 400, 414 or 431, but may read once more first. The read
            #   must not outlast the head's deadline.
            self.sock.settimeout(max(self.head_deadline - time.monotonic(), 0.1))


class HeadFirstWorker(ThreadWorker):
    """gthread, but a request's head is read by the main loop, within a deadline, not by a thread.

    A connection waits in the main loop's poller, costing no thread, until its
    request line and headers have all arrived (``END_OF_HEAD``) or gunicorn's
    limits on them are passed (``head_limit``; a thread then runs gunicorn's
    parser, which answers 400, 414 or 431). The head must arrive within
    ``header_timeout`` seconds of the connection, or of the first byte of a
    kept-alive connection's next request, all bytes together; past it the
    client gets a 408 and the connection is closed, or is just closed if it
    sent nothing. Bytes read ahead after a response (pipelining) start the
    next head. Keep-alive, ``worker_connections`` and graceful shutdown are
    gthread's.

    Only plain HTTP/1 is read this way. Under TLS, HTTP/2 (h2c), the PROXY
    protocol or uWSGI (see ``reads_heads``) the worker is gthread as it is,
    threads reading heads with no deadline, and says so at start.
    """

    #: Seconds a request head may take to arrive; gunicorn.conf.py sets it.
    header_timeout = 10.0
    #: Requests with a body that may have a thread at once, and how long one
    #: may wait for its turn; gunicorn.conf.py sets them.
    max_bodies = 6
    body_wait = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads_heads = reads_heads(self.cfg)
        self.head_limit = head_limit(self.cfg)
        self.line_limit = request_line_limit(self.cfg)
        # Connections whose head is arriving, oldest deadline first.
        self.heads: collections.OrderedDict[HeadConn, None] = collections.OrderedDict()
        # Connections closing once the client stops sending, by deadline.
        self.lingering: collections.OrderedDict[HeadConn, float] = collections.OrderedDict()
        # Requests with a body that have a thread, and those waiting for one, by deadline.
        self.bodies = 0
        self.waiting_bodies: collections.OrderedDict[HeadConn, float] = collections.OrderedDict()
        self.body_seconds = FIRST_BODY_SECONDS
        self.stopping_since: float | None = None

    def init_process(self) -> None:
        """Check the head deadline, then start as gthread does."""
        if not 0 < self.header_timeout < math.inf:
            raise ValueError(
                f'header_timeout must be a number of seconds above 0, not {self.header_timeout!r}'
            )
        if not self.reads_heads:
            self.log.warning(
                'TLS, HTTP/2, PROXY protocol or uWSGI is configured: request heads are read'
                " by threads with no deadline, as by gunicorn's gthread worker"
            )
        super().init_process()

    def accept(self, listener: Any) -> None:
        """Accept a connection and wait, in the poller, for its request head."""
        if not self.reads_heads:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as ex:
            if ex.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = HeadConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.linger = self.linger
        conn.head_deadline = time.monotonic() + self.header_timeout
        self.heads[conn] = None
        self.poller.register(client_sock, selectors.EVENT_READ, partial(self.read_head, conn))

    def on_client_socket_readable(self, conn: HeadConn, client: Any) -> None:
        """Start reading a kept-alive connection's next request head; its deadline starts now."""
        if not self.reads_heads:
            super().on_client_socket_readable(conn, client)
            return
        self.keepalived_conns.remove(conn)
        conn.head_deadline = time.monotonic() + self.header_timeout
        if self.read_head(conn, client):
            # The rest is still to come: wait for it where new connections wait.
            self.heads[conn] = None
            self.poller.modify(client, selectors.EVENT_READ, partial(self.read_head, conn))

    def enqueue_req(self, conn: HeadConn) -> None:
        """Give a connection its thread once its head is whole; bytes read ahead begin it."""
        if not self.reads_heads:
            super().enqueue_req(conn)
            return
        # NOTE: gthread calls this for a connection whose next request was
        #   read ahead with the last one's body. Its head may not be whole.
        conn.sock.setblocking(False)
        conn.head_deadline = time.monotonic() + self.header_timeout
        if self.add_to_head(conn, conn.parser.unreader.take_buffered()):
            self.start_request(conn)
        else:
            self.heads[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.read_head, conn))

    def read_head(self, conn: HeadConn, client: Any) -> bool:
        """Read what has arrived of a head; return whether the connection waits for more."""
        try:
            data = conn.sock.recv(HEAD_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b''  # reset by the client
        if not data:
            self.heads.pop(conn, None)
            self.close_waiting(conn)
            return False
        if self.add_to_head(conn, data):
            self.heads.pop(conn, None)
            self.poller.unregister(client)
            self.start_request(conn)
            return False
        return True

    def add_to_head(self, conn: HeadConn, data: bytes) -> bool:
        """Add ``data`` to the head; return whether a thread should now parse it."""
        if not conn.head and END_OF_HEAD in data:
            conn.head = data  # the usual case: a whole head in one read
            conn.head_whole = True
            return True
        if not conn.head:
            conn.head = bytearray()
        old_size = len(conn.head)
        conn.head += data
        head = conn.head
        if head.find(END_OF_HEAD, max(old_size - 3, 0)) >= 0:
            conn.head_whole = True
            return True
        conn.head_whole = False
        if len(head) > self.head_limit or request_line_too_long(head, self.line_limit):
            return True
        # NOTE: a line ending in a bare LF, which gunicorn refuses at once
        #   (400) rather than wait for a head that would never end.
        return head.count(b'\n', old_size) != head.count(b'\r\n', max(old_size - 1, 0))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Refuse what gunicorn refuses, as gunicorn does, but in look's JSON error shape."""
        super().handle_error(req, JsonRefusals(client, exc, self.cfg), addr, exc)

    def _keepalive_after(self, conn: HeadConn, keepalive: bool) -> bool:
        """Keep the connection only if the rest of an unread body arrives at once (in a thread)."""
        if not keepalive:
            return False
        if not self.reads_heads:
            return bool(super()._keepalive_after(conn, keepalive))
        return bool(conn.parser.finish_body(deadline=time.monotonic() + UNREAD_BODY_WAIT))

    def linger(self, conn: HeadConn) -> None:
        """Close a connection once its client has stopped sending (main loop, no thread).

        The answer is sent whole first (the write side is shut); what the
        client still sends is read and dropped, for LINGER_SECONDS and
        LINGER_BYTES at most, so the close does not reset the connection
        under an answer the client has not read yet.
        """
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.discard, conn))
        except (OSError, ValueError, KeyError):
            conn.sock.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS

    def discard(self, conn: HeadConn, client: Any) -> None:
        """Drop what a lingering connection's client sends; close at its end or the cap."""
        try:
            data = conn.sock.recv(HEAD_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        conn.lingered += len(data)
        if not data or conn.lingered >= LINGER_BYTES:
            self.stop_lingering(conn)

    def stop_lingering(self, conn: HeadConn) -> None:
        self.lingering.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(conn.sock)
        conn.sock.close()

    def start_request(self, conn: HeadConn) -> None:
        """Run the request whose head has arrived in a thread, or queue it for a body slot."""
        if conn.head_whole and declares_body(conn.head):
            if self.bodies >= self.max_bodies or self.waiting_bodies:
                self.waiting_bodies[conn] = time.monotonic() + self.body_wait
                return
            self.bodies += 1
            conn.body_started = time.monotonic()
        conn.data_ready = True  # so gthread's handle() does not wait for data again
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """Give a finished request's body slot to the next request waiting for one."""
        started = getattr(conn, 'body_started', None)
        if started is not None:
            conn.body_started = None
            self.bodies -= 1
            self.body_seconds += BODY_WEIGHT * (time.monotonic() - started - self.body_seconds)
        super().finish_request(conn, fs)
        while self.waiting_bodies and self.bodies < self.max_bodies:
            waiting, _ = self.waiting_bodies.popitem(last=False)
            self.bodies += 1
            waiting.body_started = time.monotonic()
            waiting.data_ready = True
            super().enqueue_req(waiting)

    def refuse_waiting_bodies(self, now: float) -> None:
        """Answer 503 to requests whose body waited its whole turn for a slot, and close them."""
        expired = []
        while self.waiting_bodies:
            conn, deadline = next(iter(self.waiting_bodies.items()))
            if deadline > now:
                break
            del self.waiting_bodies[conn]
            expired.append(conn)
        if not expired:
            return
        answer = busy_response(
            max(1, math.ceil(self.body_turn(now))), self.max_bodies, self.body_wait
        )
        for conn in expired:
            with contextlib.suppress(OSError):
                conn.sock.send(answer)
            self.nr_conns -= 1
            conn.close(graceful=True)  # lingers: the client may still be sending its body

    def body_turn(self, now: float) -> float:
        """Return when a request with a body that came now would be given a thread.

        A slot comes free every ``body_seconds / max_bodies`` seconds or so;
        a request waiting now takes one of them before a newcomer, unless
        its own wait runs out first (it is refused then, as a herd is).
        """
        step = self.body_seconds / self.max_bodies
        turns = 0
        for deadline in self.waiting_bodies.values():
            if deadline > now + (turns + 1) * step:
                turns += 1
        return (turns + 1) * step

    def murder_pending(self) -> None:
        """Close connections whose head missed its deadline (408), as well as gthread's pending."""
        super().murder_pending()
        now = time.monotonic()
        self.refuse_waiting_bodies(now)
        while self.lingering:
            conn, deadline = next(iter(self.lingering.items()))
            if deadline > now and self.alive:
                break
            self.stop_lingering(conn)
        if self.alive:
            while self.heads:
                conn = next(iter(self.heads))
                if conn.head_deadline > now:
                    break
                del self.heads[conn]
                self.time_out(conn)
            return
        # NOTE: stopping, gthread keeps idle connections STOP_KEEPALIVE_LINGER
        #   seconds for a request that may be on its way; a head that has begun
        #   keeps its deadline and its request is served, with Connection: close.
        if self.stopping_since is None:
            self.stopping_since = now
        linger_until = self.stopping_since + STOP_KEEPALIVE_LINGER
        for conn in list(self.heads):
            if conn.head_deadline <= now or (not conn.head and linger_until <= now):
                del self.heads[conn]
                self.time_out(conn)

    def time_out(self, conn: HeadConn) -> None:
        """Answer 408 to a head that has begun, and close the connection."""
        if conn.head:
            self.log.debug(
                'Closing %s: its request head took over %gs', conn.client, self.header_timeout
            )
            # The client may be gone, or not reading: then closing is all there is.
            with contextlib.suppress(OSError):
                conn.sock.send(TIMEOUT_RESPONSE)
        self.close_waiting(conn)

    def close_waiting(self, conn: HeadConn) -> None:
        """Close a connection that waits in the poller for its head."""
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()
