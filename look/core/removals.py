"""The removal worker: each serving process works through the index's list of objects to remove.

An object joins the list (``look.core.index.RemovalList``) before the answer
that concerns it goes out: a deleted image's object in the same write as the
delete, and what an upload answered with an error may have stored, due only
once no write of it can still land (``Timing.settle``). In each process that
serves (each gunicorn worker), a thread made on first use claims due entries,
removes each object, confirms that the store no longer has it, and drops the
entry. While the store or the index does not answer, it tries again after a
pause that doubles up to ``Timing.most_pause``.

NOTE: one thread per worker rather than one per host: the claims the list
  makes anyway keep workers and hosts off each other's entries, so no worker
  needs electing; a worker gunicorn replaces takes its place at once, and
  the claims of one that died lapse after ``Timing.hold``. The cost is one
  claim, a query on an index of due times, per worker every ``Timing.poll``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time

from look.core.imagestore import KINDS, ImageStore
from look.core.index import DELETED, Removal, RemovalList

log = logging.getLogger(__name__)

THREAD_NAME = 'look-remover'

# NOTE: look's own attempts at a put end within 11 s when the object store
#   stops answering (look.core.imagestore.s3.S3ImageStore.put_gives_up_within);
#   a write the store received, or a proxy held, may land after that. Nearly
#   three times as long is the default wait before a failed upload's object
#   is removed (LOOK_REMOVE_FAILED_UPLOADS_AFTER).
DEFAULT_SETTLE = 30.0
# NOTE: an object still waiting this long after it was listed means removals
#   fail (the store refuses them, or has been down for minutes): /health
#   says so. Those that succeed take seconds, a failed upload's DEFAULT_SETTLE.
OVERDUE_AFTER = 600.0


@dataclasses.dataclass(frozen=True)
class Timing:
    """How the removal worker paces itself (tests make every figure small)."""

    # Seconds a failed upload's object waits before its removal: a write of it
    # on its way to the store may land until then.
    settle: float = DEFAULT_SETTLE
    # Seconds between looks at the list while there is nothing to do.
    poll: float = 5.0
    # The pause after a failure, doubled after each one up to most_pause.
    first_pause: float = 0.5
    most_pause: float = 5.0
    # Seconds a claimed entry is left to its claimant; a removal takes milliseconds.
    hold: float = 60.0
    # Entries claimed at once.
    batch: int = 20


class _StillThere(Exception):
    """The store still has an object after its removal answered: a late write landed."""


class Remover:
    """A thread that removes due objects on the list, confirms each gone and drops its entry."""

    def __init__(self, index: RemovalList, images: ImageStore, timing: Timing) -> None:
        self.index = index
        self.images = images
        self.timing = timing
        self._stopped = threading.Event()
        self._woken = threading.Event()
        self._lock = threading.Lock()
        self._expected = float('inf')  # when (monotonic) an entry listed here falls due
        self._pause = timing.first_pause
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> Remover:
        """Start working, in the background; return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (one in a store call is left to finish on its own: it is a daemon)."""
        self._stopped.set()
        self._woken.set()
        self._thread.join(timeout=1.0)

    def expect(self, after: float) -> None:
        """Look at the list again in ``after`` seconds, when an entry listed here falls due."""
        with self._lock:
            self._expected = min(self._expected, time.monotonic() + after)
        self._woken.set()

    def work(self) -> int:
        """Claim due entries and remove their objects; return how many; raise if a backend fails.

        Entries claimed but not reached when the store or the index fails
        are due again after the current pause, for whichever worker is first.
        """
        entries = self.index.claim_removals(limit=self.timing.batch, hold=self.timing.hold)
        removed = 0
        for number, entry in enumerate(entries):
            try:
                self._remove(entry)
            except _StillThere:
                log.warning('image %s: a write of its object landed after its removal', entry.id)
                self.index.postpone_removals([entry.id], after=self._pause)
                continue
            except Exception:
                rest = [later.id for later in entries[number:]]
                # Should this fail too, their claims lapse after Timing.hold.
                with contextlib.suppress(Exception):
                    self.index.postpone_removals(rest, after=self._pause)
                raise
            removed += 1
        return removed

    def _remove(self, entry: Removal) -> None:
        self.images.delete(entry.id)
        # NOTE: confirmed by asking the store itself, so a write held on its
        #   way that landed after the delete is not taken for gone; an
        #   animation's WebP is one of the image's objects too.
        if any(self.images.exists(entry.id, kind) for kind in KINDS):
            raise _StillThere(entry.id)
        self.index.removal_done(entry.id)
        what = 'deleted image' if entry.reason == DELETED else entry.reason
        log.info(
            'removed the object of %s %s, %.1f s after it was listed',
            what,
            entry.id,
            max(0.0, time.time() - entry.listed),
        )

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                removed = self.work()
            except Exception as ex:
                self._failed(ex)
                wait = self._pause
                self._pause = min(self._pause * 2, self.timing.most_pause)
            else:
                if self._failing:
                    log.info('removing the objects on the list again')
                    self._failing = False
                self._pause = self.timing.first_pause
                # A full batch: there may be more due now.
                wait = 0.0 if removed >= self.timing.batch else self.timing.poll
            self._sleep(wait)

    def _failed(self, ex: Exception) -> None:
        if not self._failing:
            log.warning(
                'could not remove the objects on the list (%s): trying again in %.1f s, '
                'then at most every %.0f s',
                ex,
                self._pause,
                self.timing.most_pause,
            )
            self._failing = True

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if an entry listed here falls due sooner; stop at stop()."""
        deadline = time.monotonic() + seconds
        while not self._stopped.is_set():
            with self._lock:
                expected = self._expected
                now = time.monotonic()
                if expected <= now:
                    self._expected = float('inf')
                    return
            until = min(deadline, expected)
            if now >= until:
                return
            self._woken.wait(until - now)
            self._woken.clear()
