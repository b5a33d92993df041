"""Receiving upload bodies in-process: a slot for each, and a bounded wait for one.

Under gunicorn, look's worker keeps requests with a body off its threads until
one of LOOK_MAX_CONCURRENT_UPLOADS is free (tests/test_admission.py); these
tests are of the receiver's own bound, for any other server.
"""

from __future__ import annotations

import concurrent.futures
import io
import threading
import time

import falcon
import falcon.testing
import pytest

from look.errors import TooManyUploads
from look.web.uploads import Receiver

from support.processes import wait_until


class HeldBody(io.RawIOBase):
    """A request body that arrives only once ``arrived`` is set."""

    def __init__(self, data: bytes, arrived: threading.Event) -> None:
        self._data = io.BytesIO(data)
        self._arrived = arrived

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        self._arrived.wait(10)
        return self._data.readinto(buffer)


def upload_request(data: bytes, arrived: threading.Event | None = None) -> falcon.Request:
    environ = falcon.testing.create_environ('/images', method='POST', body=data)
    if arrived is not None:
        environ['wsgi.input'] = io.BufferedReader(HeldBody(data, arrived))
    return falcon.Request(environ)


def make_receiver(max_wait: float) -> Receiver:
    return Receiver(max_bytes=1024 * 1024, deadline=60.0, max_at_once=2, max_wait=max_wait)


def test_an_upload_that_finds_every_slot_taken_waits_for_one() -> None:
    """Two slots, three uploads at once: the third is received as soon as a slot is free."""
    receiver = make_receiver(max_wait=5.0)
    arrived = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(3) as clients:
        held = [
            clients.submit(receiver.receive, upload_request(b'x' * 10, arrived), io.BytesIO())
            for _ in range(2)
        ]
        assert wait_until(lambda: receiver._waiting == 0 and not receiver._slots._value, 5)
        third = clients.submit(receiver.receive, upload_request(b'y' * 20), io.BytesIO())
        time.sleep(0.3)
        assert not third.done()  # waiting, not refused
        arrived.set()
        assert [future.result(timeout=10).length for future in held] == [10, 10]
        assert third.result(timeout=10).length == 20


def test_an_upload_is_refused_once_its_wait_for_a_slot_runs_out() -> None:
    """With both slots held past ``max_wait``, the next upload gets a 503 with Retry-After."""
    receiver = make_receiver(max_wait=0.3)
    arrived = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as clients:
        held = [
            clients.submit(receiver.receive, upload_request(b'x' * 10, arrived), io.BytesIO())
            for _ in range(2)
        ]
        assert wait_until(lambda: not receiver._slots._value, 5)
        out = io.BytesIO()
        started = time.monotonic()
        with pytest.raises(TooManyUploads) as refused:
            receiver.receive(upload_request(b'y' * 20), out)
        waited = time.monotonic() - started
        arrived.set()
        assert [future.result(timeout=10).length for future in held] == [10, 10]
    assert 0.3 <= waited < 1.0
    assert refused.value.retry_after >= 1
    assert out.getvalue() == b''  # not a byte of it was read
