"""Sides measured in interleaved rounds: each side's figures, its CPU per answer, and the noise.

Rounds rotate and alternate direction, so a burst of noise on the shared
machine lands on every side. `CpuMeter` splits a round's CPU time (/proc) into
our servers', the benchmark's own and others'; a round during which others kept
cores busy is measured again while the run's budget for that lasts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
BENCH_GROUP = os.getpgrp()
SERVICE_GROUPS: set[int] = set()  # the servers' process groups: each leads a session
# NOTE: PostgreSQL is the machine's, not ours; its backends for our databases
#   are ours all the same, known by the database's name in their title.
SERVICE_TITLES: set[bytes] = set()
# Whose CPU a side's answers cost: the servers', or the benchmark's own group.
SERVICES, BENCH = 'services', 'bench'
# NOTE: a round during which other processes kept more than this many cores
#   busy is measured once more, and the quieter of the two attempts kept.
QUIET_CORES = 0.25


def serves(pgid: int, database: str = '') -> None:
    """Count a server's process group, and PostgreSQL's backends of a database, as ours."""
    SERVICE_GROUPS.add(pgid)
    SERVICE_TITLES.update([database.encode()] if database else [])


def _busy_seconds() -> float:
    """Return the CPU time every core spent busy (not idle, not waiting on I/O)."""
    with open('/proc/stat') as stat:
        user, nice, system, _idle, _io, irq, softirq, steal = map(
            int, stat.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _our_seconds() -> tuple[float, float]:
    """Return the CPU time of the benchmark's own group and of its services."""
    bench = services = 0.0
    for entry in os.scandir('/proc'):
        try:
            if not entry.name.isdigit():
                continue
            with open(f'/proc/{entry.name}/stat') as file:
                stat = file.read()
            command = stat[stat.index('(') + 1 : stat.rindex(')')]
            fields = stat[stat.rindex(')') + 2 :].split()
            # NOTE: a process that exits hands its time to its parent's cutime,
            #   so counting both keeps respawned pool processes in the sum.
            group, seconds = int(fields[2]), sum(map(int, fields[11:15])) / _CLOCK_TICKS
            if group == BENCH_GROUP:
                bench += seconds
            elif group in SERVICE_GROUPS:
                services += seconds
            elif command == 'postgres' and SERVICE_TITLES:
                with open(f'/proc/{entry.name}/cmdline', 'rb') as file:
                    title = file.read()
                services += seconds if any(name in title for name in SERVICE_TITLES) else 0.0
        except OSError:
            continue  # it exited while we looked
    return bench, services


class CpuMeter:
    """Measure CPU over a block: our services', the benchmark's own, and the cores others used."""

    def __enter__(self) -> CpuMeter:
        self._began, self._busy = time.perf_counter(), _busy_seconds()
        self._bench, self._services = _our_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._began
        bench, services = _our_seconds()
        self.bench, self.services = bench - self._bench, services - self._services
        others = _busy_seconds() - self._busy - self.bench - self.services
        self.others_cores = max(0.0, others) / self.elapsed


@dataclasses.dataclass(frozen=True)
class Figure:
    """One round of one side: its figure (answers/s or seconds) and what it cost."""

    value: float
    answers: int  # what the round's CPU time is shared among
    note: str = ''  # what the round cost besides the server: the client's CPU, say
    cpu: float | None = None  # CPU seconds, where the side meters only part of its round


@dataclasses.dataclass
class Side:
    """One side of a comparison: a measurement over so many seconds, and its rounds."""

    name: str
    measure: Callable[[float], Figure]
    whose: str = SERVICES
    values: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)  # seconds per answer
    others: list[float] = dataclasses.field(default_factory=list)  # cores others kept busy
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RetryBudget:
    """Seconds a whole run may spend measuring noisy rounds again, so noise cannot stretch it."""

    seconds: float
    spent: float = 0.0


def describe(sides: Sequence[Side], repeated: int, scale: float = 1.0, unit: str = '') -> str:
    """Return every side's figures by round, its notes, and the noise, for results.md."""
    parts, busy = [], []
    for side in sides:
        notes = f' ({"; ".join(side.notes)})' if side.notes else ''
        parts.append(f'{side.name} [{", ".join(f"{v * scale:.4g}" for v in side.values)}]')
        parts[-1] += unit + notes
        busy.append(f'{side.name} [{", ".join(f"{c:.1f}" for c in side.others)}]')
    again = f'; noisy rounds measured again: {repeated}' if repeated else ''
    return f'{", ".join(parts)}; cores other processes kept busy: {", ".join(busy)}{again}'


def order(round_number: int, sides: int) -> list[int]:
    """Return the sides' order in a round: over ``2 * sides``, each runs twice in each place."""
    shift = round_number // 2 % sides
    turn = [(shift + n) % sides for n in range(sides)]
    return turn[::-1] if round_number % 2 else turn


Measured = tuple[Figure, float, float]  # the figure, its CPU per answer, the cores others used


def _measure(side: Side, seconds: float) -> Measured:
    with CpuMeter() as meter:
        figure = side.measure(seconds)
    used = {SERVICES: meter.services, BENCH: meter.bench}[side.whose]
    used = used if figure.cpu is None else figure.cpu
    return figure, used / figure.answers if figure.answers else 0.0, meter.others_cores


def interleave(
    sides: Sequence[Side], rounds: int, seconds: float, warmup: float, budget: RetryBudget
) -> int:
    """Warm every side up, run ``rounds`` of each in turn; return how many were measured again."""
    for side in sides:
        side.measure(warmup)
    repeated = 0
    for n in range(rounds):
        best: list[Measured] = []
        for attempt in range(2):
            began = time.perf_counter()
            ran = {index: _measure(sides[index], seconds) for index in order(n, len(sides))}
            measured = [ran[index] for index in range(len(sides))]
            budget.spent += (time.perf_counter() - began) if attempt else 0.0
            noise = max(others for _figure, _cpu, others in measured)
            if not best or noise < max(others for _figure, _cpu, others in best):
                best = measured
            if noise <= QUIET_CORES or attempt or budget.spent >= budget.seconds:
                break
            repeated += 1
        for side, (figure, per_answer, others) in zip(sides, best, strict=True):
            side.values.append(figure.value)
            side.cpu.append(per_answer)
            side.others.append(others)
            side.notes += [figure.note] if figure.note else []
    return repeated
