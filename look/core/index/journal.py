"""The index as a JSON-lines journal on local disk, shared by every worker process.

Files in ``root``::

    index.jsonl   one record a line: {"op": "add", ...} or {"op": "delete", ...},
                  and the list of objects to remove: {"op": "remove", ...}
                  (listed), {"op": "due", ...} (claimed or postponed) and
                  {"op": "removed", ...}; then a tab and the CRC-32 of the
                  record (lines of older versions have no checksum and are
                  read as they are)
    index.lock    flock(2) target; serialises writers across processes

Adding an image appends one fsync'd line, so it costs the same at 50 000
images as at none, and a crash can at worst leave a half-written last line,
which the next writer or start-up cuts off. Each process keeps an in-memory
view and reads only the bytes appended since its last look, so a change made
by one worker is seen by all the others on their next request. Each view
holds the journal it read open: while it does, no other file can take that
journal's inode number, so a journal replaced on disk is always told apart.

A line that fails its checksum or cannot be read is never applied and never
silently dropped: it is logged and listed by ``problems()``, and the image
file it would have listed is quarantined at start-up, where ``python -m look
check --repair`` can restore it.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import pathlib
import secrets
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator

from look.core.files import fsync_directory
from look.core.ids import is_valid_id
from look.core.index import DELETED, Backlog, Removal, StoredImage
from look.errors import ImageExists, ImageNotFound, StorageError, refused_writes

log = logging.getLogger(__name__)

Record = dict[str, object]

# Damage reports kept for /health; the log has every one.
MAX_PROBLEMS_KEPT = 20


def _added(image: StoredImage) -> dict[str, object]:
    """Return the record that adds ``image``."""
    record: dict[str, object] = {
        'op': 'add',
        'id': image.id,
        'modified': image.modified,
        'size': [*image.size],
    }
    if image.length:
        record['length'] = image.length
    if image.token_hash:
        record['token'] = image.token_hash
    for key, value in _facts(image).items():
        if value:
            record[key] = value
    return record


def _facts(image: StoredImage) -> dict[str, object]:
    """Return what is said of an image besides its size, as the journal names it."""
    return {
        'alt': image.alt,
        'thumbhash': image.thumbhash,
        'color': image.color,
        'frames': image.frames,
        'duration': image.duration_ms,
    }


def _amended(image_id: str, changes: dict[str, str]) -> dict[str, object]:
    """Return the record that changes the alt text or placeholder of ``image_id``."""
    return {'op': 'amend', 'id': image_id, **changes}


# What may change of an image after its upload, as the journal and StoredImage name it.
_AMENDABLE = ('alt', 'thumbhash', 'color')


def _deleted(image_id: str) -> dict[str, object]:
    """Return the record that deletes ``image_id``."""
    return {'op': 'delete', 'id': image_id}


def _to_remove(removal: Removal, due: float) -> dict[str, object]:
    """Return the record that lists an object for removal, due at ``due`` (Unix seconds)."""
    return {
        'op': 'remove',
        'id': removal.id,
        'reason': removal.reason,
        'listed': round(removal.listed, 3),
        'due': _milliseconds(due),
    }


def _milliseconds(seconds: float) -> float:
    """Return a due time to the millisecond, never later than asked (due now is due now)."""
    return math.floor(seconds * 1000) / 1000


def _due(image_id: str, due: float) -> dict[str, object]:
    """Return the record that makes an entry due at ``due`` (a claim, a postponement)."""
    return {'op': 'due', 'id': image_id, 'due': _milliseconds(due)}


def _removed(image_id: str) -> dict[str, object]:
    """Return the record that drops an entry of the list."""
    return {'op': 'removed', 'id': image_id}


def encode_line(record: dict[str, object]) -> bytes:
    """Return ``record`` as one line of the journal, with its checksum."""
    payload = json.dumps(record, separators=(',', ':')).encode()
    return b'%s\t%08x\n' % (payload, zlib.crc32(payload))


def decode_line(line: bytes) -> dict[str, object]:
    """Return the record on one line (without its newline); raise ValueError if damaged."""
    payload, tab, checksum = line.rpartition(b'\t')
    if tab:
        if len(checksum) != 8 or b'%08x' % zlib.crc32(payload) != checksum:
            raise ValueError('checksum mismatch')
    else:
        payload = line  # written before lines had checksums
    record = json.loads(payload)
    if not isinstance(record, dict):
        raise ValueError('not a record')
    return record


def _id_of(record: dict[str, object]) -> str:
    image_id = record['id']
    if not isinstance(image_id, str) or not is_valid_id(image_id):
        # Lookups trust the view: paths and keys are built from every id in it.
        raise ValueError(f'malformed id {image_id!r}')
    return image_id


def _seconds_of(record: dict[str, object], name: str) -> float:
    value = record[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f'malformed {name} {value!r}')
    return float(value)


def _image_of(record: dict[str, object]) -> StoredImage:
    image_id = _id_of(record)
    width, height = record['size']  # type: ignore[misc]
    token = record.get('token', '')
    if not isinstance(token, str):
        raise ValueError('malformed token hash')
    return StoredImage(
        image_id,
        int(record['modified']),  # type: ignore[call-overload]
        (int(width), int(height)),
        int(record.get('length', 0)),  # type: ignore[call-overload]
        token,
        alt=_text(record, 'alt'),
        thumbhash=_text(record, 'thumbhash'),
        color=_text(record, 'color'),
        frames=int(record.get('frames', 0)),  # type: ignore[call-overload]
        duration_ms=int(record.get('duration', 0)),  # type: ignore[call-overload]
    )


def _text(record: dict[str, object], key: str) -> str:
    value = record.get(key, '')
    if not isinstance(value, str):
        raise ValueError(f'malformed {key}')
    return value


class JournalIndex:
    """The index in ``root/index.jsonl``: add, get, page, delete."""

    # NOTE: a damaged line can lose an add: an image file it does not list may
    #   be an image to restore (look check), not a failed write.
    keeps_every_row = False

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.path = self.root / 'index.jsonl'
        self.lock_path = self.root / 'index.lock'
        self.read_only = False

        # The in-memory view of the journal, guarded by _view_lock (gthread workers).
        self._view_lock = threading.Lock()
        self._images: dict[str, StoredImage] = {}
        self._order: list[str] = []  # ids in commit order; may hold deleted ids
        self._order_seq: list[int] = []  # their sequence numbers, ascending
        # NOTE: every id ever committed keeps its number (about 150 bytes an
        #   id), so that a page cursor naming a deleted image still resumes
        #   where it was, in every worker.
        self._seq: dict[str, int] = {}
        # The list of objects to remove: id -> (entry, when it is due, Unix seconds).
        self._removals: dict[str, tuple[Removal, float]] = {}
        self._offset = 0  # bytes of the journal already applied to the view
        self._line_number = 0  # complete lines applied, for damage reports
        # NOTE: the journal the view is of, as (device, inode), and a descriptor
        #   of it held open: a journal removed and written again could
        #   otherwise get the freed inode number back, and pass for the old
        #   one cut short, or grown.
        self._file_key: tuple[int, int] | None = None
        self._fd: int | None = None
        self._closer: weakref.finalize[[int], None] | None = None
        self._problems: list[str] = []
        self._problem_count = 0
        self._holder = threading.local()  # whether this thread holds the writers' lock

    # -- start-up ---------------------------------------------------------

    def open(self) -> None:
        """Create the journal if need be, cut off a half-written line and read it.

        On a read-only disk the journal is read as it is: look serves what
        it has, and writes are refused with StorageError.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=True)
            self.lock_path.touch(exist_ok=True)
            with self._exclusive():
                self._cut_partial_tail()
                self._refresh()
        except (OSError, StorageError) as ex:
            if not self.path.is_file() or not os.access(self.path, os.R_OK):
                raise
            log.warning(
                'the index at %s cannot be written (%s); serving reads only', self.path, ex
            )
            self.read_only = True
            self._refresh()

    def close(self) -> None:
        """Let go of the journal; a later call reads it afresh."""
        with self._view_lock:
            self._let_go()
            self._file_key = None

    # -- reading ----------------------------------------------------------

    def get(self, image_id: str) -> StoredImage:
        """Return the image with this id, or raise ImageNotFound."""
        self._refresh()
        image = self._images.get(image_id)  # _apply lets only valid ids in
        if image is None:
            shown = image_id if is_valid_id(image_id) else repr(image_id)
            raise ImageNotFound(f'No image has the id {shown}.')
        return image

    def page(
        self, *, after: str | None = None, limit: int, newest_first: bool = False
    ) -> list[StoredImage]:
        """Return up to ``limit`` images in commit order, starting after the id ``after``."""
        self._refresh()
        if limit <= 0:
            return []
        with self._view_lock:
            order, images = self._order, self._images
            if newest_first:
                start = len(order) - 1
                if after is not None:
                    start = bisect.bisect_left(self._order_seq, self._seq_of(after)) - 1
                positions = range(start, -1, -1)
            else:
                start = 0
                if after is not None:
                    start = bisect.bisect_right(self._order_seq, self._seq_of(after))
                positions = range(start, len(order))
            found: list[StoredImage] = []
            for position in positions:
                image = images.get(order[position])
                if image is not None:
                    found.append(image)
                    if len(found) >= limit:
                        break
            return found

    def _seq_of(self, image_id: str) -> int:
        seq = self._seq.get(image_id)
        if seq is None:
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        return seq

    def was_deleted(self, image_id: str) -> bool:
        """Return whether this id was listed once and has been deleted since."""
        self._refresh()
        with self._view_lock:
            return image_id in self._seq and image_id not in self._images

    def count(self) -> int:
        """Return how many images the journal lists now."""
        self._refresh()
        return len(self._images)

    def history(self) -> list[tuple[str, StoredImage | None]]:
        """Return every id ever committed, in order, with its image (None once deleted)."""
        self._refresh()
        with self._view_lock:
            in_order = sorted(self._seq, key=self._seq.__getitem__)
            return [(image_id, self._images.get(image_id)) for image_id in in_order]

    def problems(self) -> list[str]:
        """Return the damaged lines found so far (the first few) and how many there were."""
        self._refresh()
        with self._view_lock:
            problems = list(self._problems)
            if self._problem_count > len(problems):
                problems.append(f'... {self._problem_count - len(problems)} more damaged lines')
            return problems

    def check(self) -> str | None:
        """Return None if the journal can be read now, else why not."""
        try:
            with open(self.path, 'rb'):
                return None
        except OSError as ex:
            return f'the index {self.path} cannot be read: {ex.strerror or ex}'

    def _refresh(self) -> None:
        """Apply whatever other processes have appended to the journal since last time."""
        try:
            stat: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            stat = None
        lost = stat is None
        with self._view_lock:
            if stat is not None and (stat.st_dev, stat.st_ino) != self._file_key:
                stat = self._follow()  # replaced: start again on the new one
                lost = stat is None
            if stat is not None and stat.st_size != self._offset:
                lost = stat.st_size < self._offset
                if not lost:
                    self._apply_up_to(stat.st_size)
        if lost:
            self._rebuild_if_lost()

    def _apply_up_to(self, size: int) -> None:
        """Apply the complete lines between the offset and ``size``; the view lock is held."""
        data = self._read(size)
        complete = data.rfind(b'\n') + 1  # a line still being written waits
        for line in data[:complete].splitlines():
            self._apply(line)
        self._offset += complete

    def _read_rest(self) -> None:
        """Apply what the journal this view holds open has beyond the offset (if anything)."""
        if self._fd is not None:
            size = os.fstat(self._fd).st_size
            if size > self._offset:
                self._apply_up_to(size)

    def _follow(self) -> os.stat_result | None:
        """Start the view afresh on the journal now at ``path`` (None if there is none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._let_go()
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        stat = os.fstat(fd)
        self._reset_view((stat.st_dev, stat.st_ino))
        return stat

    def _let_go(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the descriptor, once
        self._closer = None
        self._fd = None

    def _read(self, size: int) -> bytes:
        """Read the journal the view is of from the offset up to ``size``."""
        assert self._fd is not None
        chunks = []
        offset = self._offset
        while offset < size:
            chunk = os.pread(self._fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b''.join(chunks)

    def _reset_view(self, file_key: tuple[int, int]) -> None:
        self._images.clear()
        self._order.clear()
        self._order_seq.clear()
        self._seq.clear()
        self._removals.clear()
        self._offset = 0
        self._line_number = 0
        self._file_key = file_key
        self._problems.clear()
        self._problem_count = 0

    def _apply(self, line: bytes, record: dict[str, object] | None = None) -> None:
        """Apply one line of the journal; ``record`` is what it says, where that is known."""
        self._line_number += 1
        try:
            if record is None:
                record = decode_line(line)
            op = record['op']
            if op == 'add':
                image = _image_of(record)
                self._place(image.id)
                self._images[image.id] = image
            elif op == 'amend':
                image = self._images[str(record['id'])]  # KeyError: an amend of no image
                changes = {key: _text(record, key) for key in _AMENDABLE if key in record}
                self._images[image.id] = dataclasses.replace(image, **changes)
            elif op == 'delete':
                image_id = _id_of(record)
                if self._images.pop(image_id, None) is None and image_id not in self._seq:
                    # A deleted image's only trace after a rewrite: its number.
                    self._seq[image_id] = len(self._seq)
            elif op == 'remove':
                image_id, reason = _id_of(record), record['reason']
                if not isinstance(reason, str):
                    raise ValueError(f'malformed reason {reason!r}')
                removal = Removal(image_id, reason, _seconds_of(record, 'listed'))
                self._removals[image_id] = (removal, _seconds_of(record, 'due'))
            elif op == 'due':
                image_id, due = _id_of(record), _seconds_of(record, 'due')
                entry = self._removals.get(image_id)
                if entry is not None:
                    self._removals[image_id] = (entry[0], due)
            elif op == 'removed':
                self._removals.pop(_id_of(record), None)
            else:
                raise ValueError(f'unknown op {op!r}')
        except (ValueError, KeyError, TypeError, OverflowError) as ex:
            self._report(f'index line {self._line_number} is damaged ({ex}): {line[:120]!r}')
            return
        # NOTE: deleted ids are skipped while listing; compacted away once
        #   they are the majority, to keep listing fast.
        if len(self._order) > 1024 and len(self._images) < len(self._order) // 2:
            self._compact()

    def _report(self, problem: str) -> None:
        log.error('%s in %s', problem, self.path)
        self._problem_count += 1
        if len(self._problems) < MAX_PROBLEMS_KEPT:
            self._problems.append(problem)

    def _place(self, image_id: str) -> None:
        """Put an added id in the order: at the end, or back where it was if seen before."""
        seq = self._seq.get(image_id)
        if seq is None:
            seq = self._seq[image_id] = len(self._seq)
            self._order.append(image_id)
            self._order_seq.append(seq)
            return
        # Added again after a delete (a failed delete is undone this way).
        at = bisect.bisect_left(self._order_seq, seq)
        if at == len(self._order_seq) or self._order_seq[at] != seq:  # compacted away
            self._order.insert(at, image_id)
            self._order_seq.insert(at, seq)

    def _compact(self) -> None:
        """Drop deleted ids from the order; their numbers keep ``after=`` working for them."""
        kept = [n for n, image_id in enumerate(self._order) if image_id in self._images]
        self._order = [self._order[n] for n in kept]
        self._order_seq = [self._order_seq[n] for n in kept]

    # -- writing ----------------------------------------------------------

    def add(self, image: StoredImage) -> None:
        """Append the line that adds ``image`` and make it durable (ImageNotFound for a bad id).

        If the line cannot be made durable it is taken back (see
        ``_append``); if even that fails, the image stays listed, and the
        caller can tell by ``get``.
        """
        if not is_valid_id(image.id):
            raise ImageNotFound(f'No image can have the id {image.id!r}.')
        with self._exclusive():
            self._refresh()
            if image.id in self._images:
                raise ImageExists(f'An image with the id {image.id} already exists.')
            self._catch_up(*self._append([_added(image)], undo=_deleted(image.id)))

    def amend(
        self,
        image_id: str,
        *,
        alt: str | None = None,
        thumbhash: str | None = None,
        color: str | None = None,
    ) -> StoredImage:
        """Append the line that changes an image's alt text or placeholder; return the image."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        asked = {'alt': alt, 'thumbhash': thumbhash, 'color': color}
        changes = {key: value for key, value in asked.items() if value is not None}
        with self._exclusive():
            self._refresh()
            image = self._images.get(image_id)
            if image is None:
                raise ImageNotFound(f'No image has the id {image_id}.')
            if changes:
                before = {key: getattr(image, key) for key in changes}
                self._catch_up(
                    *self._append([_amended(image_id, changes)], undo=_amended(image_id, before))
                )
            return self._images.get(image_id, image)

    def delete(self, image_id: str) -> StoredImage:
        """Append the lines that list its file for removal and delete ``image_id``; return it.

        Both in one write, the listing first: a crash that cuts the write
        short leaves, at most, an entry for an image still listed, which a
        claim drops.
        """
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        with self._exclusive():
            self._refresh()
            image = self._images.get(image_id)
            if image is None:
                raise ImageNotFound(f'No image has the id {image_id}.')
            now = time.time()
            listing = _to_remove(Removal(image_id, DELETED, now), now)
            self._catch_up(*self._append([listing, _deleted(image_id)], undo=_added(image)))
            return image

    # -- the list of objects to remove ------------------------------------

    def remove_later(self, image_id: str, *, reason: str, after: float) -> None:
        """Append the line that lists the file of ``image_id``, due in ``after`` seconds."""
        if not is_valid_id(image_id):
            raise ImageNotFound(f'No image can have the id {image_id!r}.')
        with self._exclusive():
            self._refresh()
            now = time.time()
            due = now + after
            with self._view_lock:
                listed = self._removals.get(image_id)
            if listed is not None:
                due = max(due, listed[1])
            self._catch_up(
                *self._append([_to_remove(Removal(image_id, reason, now), due)], undo=None)
            )

    def claim_removals(self, *, limit: int, hold: float) -> list[Removal]:
        """Return due entries, made due again in ``hold`` seconds (one line each, under the lock).

        An entry whose id the journal lists again (its delete was undone) is dropped.
        """
        self._refresh()
        with self._view_lock:
            now = time.time()
            if not any(due <= now for _, due in self._removals.values()):
                return []
        with self._exclusive():
            self._refresh()
            now = time.time()
            with self._view_lock:
                due = sorted((at, image_id) for image_id, (_, at) in self._removals.items())
                ready = [image_id for at, image_id in due if at <= now]
                live = [image_id for image_id in ready if image_id in self._images]
                claimed = [self._removals[i][0] for i in ready if i not in self._images][:limit]
            if not live and not claimed:
                return []
            records = [_removed(image_id) for image_id in live]
            records += [_due(removal.id, now + hold) for removal in claimed]
            self._catch_up(*self._append(records, undo=None))
        for image_id in live:
            log.warning('image %s is listed again: its file stays, off the list', image_id)
        return claimed

    def postpone_removals(self, image_ids: list[str], *, after: float) -> None:
        """Append lines that make these entries due in ``after`` seconds."""
        self._change_removals(image_ids, lambda image_id: _due(image_id, time.time() + after))

    def removal_done(self, image_id: str) -> None:
        """Append the line that drops the entry of ``image_id`` (if it is on the list)."""
        self._change_removals([image_id], _removed)

    def _change_removals(self, image_ids: list[str], record: Callable[[str], Record]) -> None:
        with self._exclusive():
            self._refresh()
            with self._view_lock:
                listed = [image_id for image_id in image_ids if image_id in self._removals]
            if listed:
                self._catch_up(*self._append([record(image_id) for image_id in listed], undo=None))

    def awaiting_removal(self) -> set[str]:
        """Return the ids on the list of objects to remove."""
        self._refresh()
        with self._view_lock:
            return set(self._removals)

    def removal_backlog(self) -> Backlog:
        """Return how many files wait to be removed, and how long the oldest has waited."""
        self._refresh()
        with self._view_lock:
            if not self._removals:
                return Backlog(0, None)
            oldest = min(removal.listed for removal, _ in self._removals.values())
            return Backlog(len(self._removals), max(0.0, time.time() - oldest))

    def rewrite(self) -> None:
        """Replace the journal with one line per id, in order, without its damaged lines.

        An image is one add line, a deleted id one delete line (so page
        cursors and ``was_deleted`` still know it). Every worker reads the
        new file afresh on its next request.
        """
        with self._exclusive():
            self._refresh()
            self._write_view()

    def _catch_up(
        self, records: list[Record], file_key: tuple[int, int], start: int, lines: bytes
    ) -> None:
        """Apply this worker's own durable lines now, so its view (and a rebuild from it) has them.

        ``lines``, of ``records``, were appended at ``start`` of the journal
        ``file_key`` under the writers' lock, just after the view was
        brought up to date.
        PERF: a view that ends where the lines begin takes the records as they
          were written rather than reading the lines back and decoding them:
          an add 42 → 29 µs of CPU on tmpfs (where fsync is free).
        """
        with self._view_lock:
            if file_key == self._file_key and start == self._offset:
                for line, record in zip(lines.splitlines(), records, strict=True):
                    self._apply(line, record)
                self._offset += len(lines)
                return
        with contextlib.suppress(OSError):
            self._refresh()

    @contextlib.contextmanager
    def writes_paused(self) -> Iterator[None]:
        """Hold the writers' lock for the block, so no image is committed meanwhile."""
        with self._exclusive():
            yield

    def _rebuild_if_lost(self) -> None:
        """Write the journal again from this view if it was removed or cut short.

        look itself never removes or shortens a complete journal: someone
        else did. A removed journal is still there for the descriptor this
        view holds, so the view first reads what other workers appended
        since its last look. Of a journal cut short, the view has what it
        read; lines it had not read yet are gone, and the files they listed
        are quarantined at the next start-up, where ``check --repair``
        restores them.
        """
        if self.read_only:
            return
        with self._exclusive():
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                reason = 'was removed'
            else:
                with self._view_lock:
                    replaced = (stat.st_dev, stat.st_ino) != self._file_key
                    if replaced or stat.st_size >= self._offset:
                        return  # another worker has written it again already
                reason = 'was cut short'
            with self._view_lock:
                self._read_rest()
            log.error(
                "the index %s %s while look ran; writing it again from this worker's view "
                '(%d images)',
                self.path,
                reason,
                len(self._images),
            )
            self._write_view()

    def _write_view(self) -> None:
        """Write this view as a new journal; the caller holds the writers' lock."""
        with self._view_lock:
            by_seq = sorted(self._seq, key=self._seq.__getitem__)
            records = [
                _added(self._images[i]) if i in self._images else _deleted(i) for i in by_seq
            ]
            records += [_to_remove(removal, due) for removal, due in self._removals.values()]
        temporary = self.root / f'.index.{secrets.token_hex(8)}.tmp'
        try:
            with refused_writes(), open(temporary, 'wb') as journal:
                for record in records:
                    journal.write(encode_line(record))
                journal.flush()
                os.fsync(journal.fileno())
            with refused_writes():
                os.replace(temporary, self.path)
                fsync_directory(self.root)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        self._refresh()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if getattr(self._holder, 'held', False):
            yield  # this thread holds it already (a rebuild while appending)
            return
        # NOTE: opened per use, never inherited across fork: an flock taken on a
        #   file description shared by two processes would exclude neither.
        with refused_writes():
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._holder.held = True
            try:
                yield
            finally:
                self._holder.held = False
        finally:
            os.close(fd)

    def _append(
        self, records: list[Record], *, undo: Record | None
    ) -> tuple[list[Record], tuple[int, int], int, bytes]:
        """Append lines in one write and fsync them; the caller holds the writers' lock.

        Returns the records, the journal's (device, inode), where their lines
        begin, and the lines (what ``_catch_up`` takes). Lines that cannot be
        made durable are taken back. An incomplete one is cut off: no reader
        applies a line before its newline. Complete ones may have been applied by other workers
        already, so they stay and, once all are complete, ``undo`` is
        appended (cutting them would leave readers reading from the middle of
        the next line), as far as the disk allows; with ``undo`` None they stay.
        """
        line = b''.join(encode_line(record) for record in records)
        with refused_writes():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            stat = os.fstat(fd)
            start = stat.st_size
            if start and os.pread(fd, 1, start - 1) != b'\n':
                self._cut_partial_tail()
                start = os.fstat(fd).st_size
            written = 0
            try:
                with refused_writes():
                    while written < len(line):
                        written += os.write(fd, line[written:])
                    os.fsync(fd)
            except BaseException:
                if written < len(line):
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start + line.rfind(b'\n', 0, written) + 1)
                elif undo is not None:
                    self._append_undo(fd, start + len(line), undo)
                raise
        finally:
            os.close(fd)
        return records, (stat.st_dev, stat.st_ino), start, line

    @staticmethod
    def _append_undo(fd: int, end: int, undo: dict[str, object]) -> None:
        """Append ``undo`` after a line that failed to sync, as far as the disk allows."""
        line = encode_line(undo)
        written = 0
        try:
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as ex:
            # NOTE: the line it undoes stands, for every worker; the caller
            #   keeps or removes the image file to match.
            log.error('could not take back an index line with %s: %s', undo, ex)
            if written < len(line):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)

    def _cut_partial_tail(self) -> None:
        """Cut off a line left half-written by a crash; the caller holds the lock."""
        with open(self.path, 'r+b') as journal:
            size = journal.seek(0, os.SEEK_END)
            if size == 0:
                return
            journal.seek(size - 1)
            if journal.read(1) == b'\n':
                return
            # Walk back to the last complete line.
            end = size
            while end > 0:
                start = max(0, end - 65536)
                journal.seek(start)
                chunk = journal.read(end - start)
                newline = chunk.rfind(b'\n')
                if newline >= 0:
                    cut = start + newline + 1
                    break
                end = start
            else:
                cut = 0
            log.warning('cutting %d bytes of a half-written index line', size - cut)
            journal.truncate(cut)
            journal.flush()
            os.fsync(journal.fileno())
