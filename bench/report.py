"""Rows of the results table, the machine they were measured on, and bench/results.md."""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import platform
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata

from bench.rounds import Side

# A render or upload row is met by its target against Pillow alone, or by look
# at this share of the bare app doing the same work under the same gunicorn:
# what any app on this stack can do.
BARE_FLOOR = 0.9
BY_TARGET = 'target'


@dataclasses.dataclass
class Row:
    """One line of the table: look's median, its limit's median, and the verdict."""

    work: str
    look: str
    limit: str
    ratio: str
    target: str
    passed: bool | None  # None: a reference figure, with no target of its own
    rounds: str = ''
    cpu: str = '-'
    value: float = float('nan')  # the ratio itself
    met_by: str = ''  # which rule met a passed row, where there are two

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return 'reference'
        if not self.passed:
            return '**FAIL**'
        return f'pass ({self.met_by})' if self.met_by else 'pass'


def _ratio(ratio: float, target: float | None) -> str:
    # One more digit where two would round onto the target and hide the verdict.
    return f'{ratio:.3f}x' if target is not None and round(ratio, 2) == target else f'{ratio:.2f}x'


def ratio_row(
    work: str, look: Side, limit: Side, *, target: float | None, label: str, at_most: bool = False
) -> Row:
    """Compare look's median with the limit's: rates (≥ target) or, ``at_most``, times (≤).

    With no target, the row is a reference. CPU per answer, less shaken by a
    noisy machine than a rate, says where a low ratio comes from.
    """
    mine, theirs = statistics.median(look.values), statistics.median(limit.values)
    ratio = mine / theirs
    if at_most:
        cells = f'{mine * 1e3:.2f} ms', f'{theirs * 1e3:.2f} ms ({label})'
    else:
        cells = f'{mine:.1f} req/s', f'{theirs:.1f} {label}'
    row = Row(work, *cells, _ratio(ratio, target), '-', None, value=ratio)
    if target is not None:
        row.target = f'{"≤" if at_most else "≥"} {target:g}x'
        row.passed = ratio <= target if at_most else ratio >= target
    if all(look.cpu) and all(limit.cpu) and look.cpu and limit.cpu:
        a, b = statistics.median(look.cpu) * 1e3, statistics.median(limit.cpu) * 1e3
        row.cpu = f'{a:.2f} / {b:.2f} ms ({a / b if at_most else b / a:.2f}x)'
    return row


def settle(row: Row, reference: Row, floor: float = BARE_FLOOR) -> tuple[Row, Row]:
    """Judge a row by its own target, or by look ≥ ``floor`` x the bare app (``reference``).

    Returns both rows: the first says which rule met it, the second shows the floor.
    """
    met_by = BY_TARGET if row.passed else f'≥ {floor:g}x bare' if reference.value >= floor else ''
    shown = dataclasses.replace(reference, ratio=_ratio(reference.value, floor))
    shown.target = f'≥ {floor:g}x'
    return dataclasses.replace(row, passed=bool(met_by), met_by=met_by), shown


def herd_row(work: str, herd: Side, alone: Side, renders: Sequence[int], target: float) -> Row:
    """Compare a herd's wall time with one request's; met at ≤ target with one render per herd.

    The CPU column is the servers' whole CPU time per herd and per request alone.
    """
    row = ratio_row(work, herd, alone, target=target, label='one request', at_most=True)
    ms = [statistics.median(side.cpu or [0.0]) * 1e3 for side in (herd, alone)]
    row.look += f', {max(renders)} render{"s" if max(renders) != 1 else ""}'
    row.target += ', 1 render'
    row.passed = bool(row.passed) and all(count == 1 for count in renders)
    row.cpu = f'{ms[0]:.1f} / {ms[1]:.1f} ms per herd / alone'
    return row


def machine() -> list[tuple[str, str]]:
    """Return what the figures depend on: cores, CPU, versions, load."""
    cpu = pathlib.Path('/proc/cpuinfo').read_text().partition('model name')[2].split('\n')[0]
    redis = subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout
    return [
        ('nproc', str(len(os.sched_getaffinity(0)))),
        ('CPU', cpu.strip(' \t:')),
        ('Python', platform.python_version()),
        *((name, metadata.version(name)) for name in ('pillow', 'gunicorn', 'falcon', 'redis')),
        ('redis-server', redis.split()[2].removeprefix('v=')),
        ('load average at start', ', '.join(f'{value:.2f}' for value in os.getloadavg())),
    ]


def table(rows: Sequence[Row]) -> str:
    """Return the rows as a Markdown table."""
    header = '| work | look | limit (same run) | ratio | target | result | CPU per answer |'
    lines = [header, '|---' * 7 + '|']
    for row in rows:
        cells = (row.work, row.look, row.limit, row.ratio, row.target, row.verdict, row.cpu)
        lines.append(f'| {" | ".join(cells)} |')
    return '\n'.join(lines)


def markdown(
    rows: Sequence[Row],
    machine: Sequence[tuple[str, str]],
    settings: Sequence[tuple[str, str]],
    notes: Sequence[str],
    elapsed: float,
) -> str:
    """Return the whole of bench/results.md."""
    now = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')
    judged = [row for row in rows if row.passed is not None]
    met = sum(bool(row.passed) for row in judged)
    by_bare = sum(bool(row.passed) and row.met_by not in ('', BY_TARGET) for row in judged)
    parts = [
        '# look benchmark results',
        '',
        f'Generated by `make bench` on {now} in {elapsed:.0f} s: {met} of {len(judged)} targets '
        f'met ({by_bare} by the bare-app rule). Figures are medians over rounds; each ratio is '
        'against a limit measured in the same run, rounds interleaved. A render or upload row is '
        f'met by its target against Pillow alone, or by look at ≥ {BARE_FLOOR:g}x the bare '
        'Falcon app doing the same work (the reference row under it, measured in the same '
        'rounds); its result says which. CPU per answer is look / limit, every process of a '
        'side, with the ratio in the sense of the row.',
        '',
        table(rows),
    ]
    rounds = [(row.work, row.rounds) for row in rows]
    for title, items in (('Machine', machine), ('Settings', settings), ('Rounds', rounds)):
        parts += ['', f'## {title}', '', *(f'- {name}: {value}' for name, value in items)]
    if notes:
        parts += ['', '## Notes', '', *(f'- {note}' for note in notes)]
    return '\n'.join(parts) + '\n'
