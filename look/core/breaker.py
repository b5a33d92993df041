"""A circuit breaker: after a backend failed to answer, fail at once for a moment.

Waiting out the timeouts of a backend that does not answer, request after
request, would hold every thread. Once one call failed that way, the breaker
is open: calls fail at once (a 503, or an answer without the cache) for
``pause`` seconds, then the next one tries the backend again. One that
answers closes it. The same rule serves Redis, the object store and the
index database.
"""

from __future__ import annotations

import time


class Breaker:
    """Open for ``pause`` seconds after each failure; closed by the next success."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self._until = 0.0  # 0.0 while the backend answers, else when to try it again

    @property
    def open(self) -> bool:
        """Whether calls should fail at once now."""
        return self._until != 0.0 and time.monotonic() < self._until

    @property
    def failing(self) -> bool:
        """Whether the last call failed (open, or past its pause and not tried since)."""
        return self._until != 0.0

    def trip(self) -> None:
        """Note a failure to answer: open for ``pause`` seconds from now."""
        self._until = time.monotonic() + self.pause

    def close(self) -> bool:
        """Note an answer; return whether the breaker had been tripped (the backend is back)."""
        failing, self._until = self._until != 0.0, 0.0
        return failing
