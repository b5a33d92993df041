"""One client, pool or thread per process, made on first use: the same rule for every backend.

A thing made before gunicorn forks belongs to the parent: its sockets, its
locks, its threads. A child that finds one makes its own and leaves the
parent's alone (closing it would close the parent's sockets too). Nothing is
made at import, or in gunicorn's master unless it serves a request there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar('T')


class PerProcess(Generic[T]):
    """A value of ``make()`` for each process that asks for one."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        # The value and the process that made it, read and set as one.
        self._made: tuple[T, int] | None = None

    def get(self) -> T:
        """Return this process's value, made now if it has none."""
        made = self._made
        if made is not None and made[1] == os.getpid():
            return made[0]  # PERF: the common case takes no lock
        with self._lock:
            made = self._made
            if made is None or made[1] != os.getpid():
                made = self._made = (self._make(), os.getpid())
            return made[0]

    def peek(self) -> T | None:
        """Return this process's value if it has made one, else None."""
        made = self._made
        return made[0] if made is not None and made[1] == os.getpid() else None

    def take(self) -> T | None:
        """Forget this process's value and return it for the caller to close (None if none)."""
        with self._lock:
            made, self._made = self._made, None
            return made[0] if made is not None and made[1] == os.getpid() else None

    def drop(self, value: T) -> bool:
        """Forget ``value`` if it is still this process's (a broken one); return whether it was."""
        with self._lock:
            made = self._made
            if made is None or made[0] is not value or made[1] != os.getpid():
                return False
            self._made = None
            return True
