"""Rows of the results table, the machine they were measured on, and bench/results.md."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import pathlib
import platform
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata

MiB = 1024 * 1024
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
    value: float = math.nan  # the ratio itself
    met_by: str = ''  # which rule met a passed row, where there are two

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return 'reference'
        if not self.passed:
            return '**FAIL**'
        return f'pass ({self.met_by})' if self.met_by else 'pass'


def _ratio(ratio: float, target: float) -> str:
    # One more digit where two would round onto the target and hide the verdict.
    return f'{ratio:.3f}x' if round(ratio, 2) == target else f'{ratio:.2f}x'


def _rounds(values: Sequence[float], fmt: str) -> str:
    return ', '.join(format(value, fmt) for value in values)


def throughput_row(
    work: str,
    look: Sequence[float],
    limit: Sequence[float],
    *,
    target: float | None,
    limit_unit: str,
    note: str = '',
    cpu: tuple[Sequence[float], Sequence[float]] = ((), ()),
) -> Row:
    """Compare requests/s with the limit's rate; pass when look ≥ target x limit.

    With no target, the row is a reference: a second limit that explains the first.

    CPU time per answer is shown beside it: less shaken by a noisy machine
    than a rate, it says where a low ratio comes from.
    """
    look_median, limit_median = statistics.median(look), statistics.median(limit)
    ratio = look_median / limit_median
    rounds = f'look [{_rounds(look, ".1f")}] limit [{_rounds(limit, ".1f")}]'
    if note:
        rounds += f'; {note}'
    cpu_text = '-'
    if cpu[0] and cpu[1] and all(cpu[0]) and all(cpu[1]):
        look_cpu, limit_cpu = statistics.median(cpu[0]) * 1e3, statistics.median(cpu[1]) * 1e3
        cpu_text = f'{look_cpu:.2f} / {limit_cpu:.2f} ms ({limit_cpu / look_cpu:.2f}x)'
    return Row(
        work,
        f'{look_median:.1f} req/s',
        f'{limit_median:.1f} {limit_unit}',
        f'{ratio:.2f}x' if target is None else _ratio(ratio, target),
        '-' if target is None else f'≥ {target:g}x',
        None if target is None else ratio >= target,
        rounds,
        cpu_text,
        ratio,
    )


def settle(row: Row, reference: Row, floor: float = BARE_FLOOR) -> tuple[Row, Row]:
    """Judge a row by either rule: its own target, or look ≥ ``floor`` x the bare app.

    ``reference`` is the same work behind the bare app, measured in the same
    rounds. Returns both rows, the first saying which rule met it, the second
    showing the floor it was held to.
    """
    if row.passed:
        met_by = BY_TARGET
    elif reference.value >= floor:
        met_by = f'≥ {floor:g}x bare'
    else:
        met_by = ''
    settled = dataclasses.replace(row, passed=bool(met_by), met_by=met_by)
    shown = dataclasses.replace(
        reference, ratio=_ratio(reference.value, floor), target=f'≥ {floor:g}x'
    )
    return settled, shown


def slowdown_row(
    work: str,
    large: Sequence[float],
    small: Sequence[float],
    *,
    target: float,
    small_label: str,
    note: str = '',
) -> Row:
    """Compare times (seconds); pass when the large case takes ≤ target x the small one."""
    large_median, small_median = statistics.median(large), statistics.median(small)
    ratio = large_median / small_median
    rounds = f'large [{_rounds([v * 1e3 for v in large], ".2f")}] ms, '
    rounds += f'small [{_rounds([v * 1e3 for v in small], ".2f")}] ms'
    if note:
        rounds += f'; {note}'
    return Row(
        work,
        f'{large_median * 1e3:.2f} ms',
        f'{small_median * 1e3:.2f} ms ({small_label})',
        _ratio(ratio, target),
        f'≤ {target:g}x',
        ratio <= target,
        rounds,
        value=ratio,
    )


def herd_row(
    work: str,
    herd: Sequence[float],
    alone: Sequence[float],
    renders: Sequence[int],
    *,
    target: float,
    note: str = '',
    cpu: tuple[Sequence[float], Sequence[float]] = ((), ()),
) -> Row:
    """Compare wall times (seconds) of a herd and of one request for the same uncached answer.

    Passes when the herd takes ≤ target x one request and every herd made one render.
    The CPU column is the server's whole CPU time for a herd and for one request.
    """
    herd_median, alone_median = statistics.median(herd), statistics.median(alone)
    ratio = herd_median / alone_median
    most = max(renders)
    rounds = f'herd [{_rounds([v * 1e3 for v in herd], ".1f")}] ms, '
    rounds += f'alone [{_rounds([v * 1e3 for v in alone], ".1f")}] ms, '
    rounds += f'renders per herd [{_rounds(renders, "d")}]'
    if note:
        rounds += f'; {note}'
    cpu_text = '-'
    if cpu[0] and cpu[1]:
        herd_cpu, alone_cpu = statistics.median(cpu[0]) * 1e3, statistics.median(cpu[1]) * 1e3
        cpu_text = f'{herd_cpu:.1f} / {alone_cpu:.1f} ms per herd / alone'
    return Row(
        work,
        f'{herd_median * 1e3:.1f} ms, {most} render{"s" if most != 1 else ""}',
        f'{alone_median * 1e3:.1f} ms (one request)',
        _ratio(ratio, target),
        f'≤ {target:g}x, 1 render',
        ratio <= target and all(count == 1 for count in renders),
        rounds,
        cpu_text,
        value=ratio,
    )


def memory_row(
    work: str, peak_kib: Sequence[int], idle_kib: Sequence[int], *, limit_mib: float
) -> Row:
    """Compare a worker's peak RSS with its idle RSS; pass when it grew ≤ limit_mib."""
    deltas = [(peak - idle) / 1024 for peak, idle in zip(peak_kib, idle_kib, strict=True)]
    delta = statistics.median(deltas)
    return Row(
        work,
        f'peak {statistics.median(peak_kib) / 1024:.1f} MiB',
        f'idle {statistics.median(idle_kib) / 1024:.1f} MiB',
        f'+{delta:.1f} MiB',
        f'+ ≤ {limit_mib:g} MiB',
        delta <= limit_mib,
        f'growth per round [{_rounds(deltas, ".1f")}] MiB',
    )


# -- the machine -------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return 'not installed'


def _redis_server_version() -> str:
    try:
        out = subprocess.run(
            ['redis-server', '--version'], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    fields = dict(part.split('=', 1) for part in out.split() if '=' in part)
    return fields.get('v', out.strip())


def machine() -> list[tuple[str, str]]:
    """Return what the figures depend on: cores, CPU, versions, load."""
    load = ', '.join(f'{value:.2f}' for value in os.getloadavg())
    return [
        ('nproc', str(len(os.sched_getaffinity(0)))),
        ('CPU', _cpu_model()),
        ('Python', platform.python_version()),
        ('Pillow', _version('pillow')),
        ('gunicorn', _version('gunicorn')),
        ('Falcon', _version('falcon')),
        ('redis-py / redis-server', f'{_version("redis")} / {_redis_server_version()}'),
        ('load average at start', load),
    ]


# -- the table ---------------------------------------------------------------

_HEADER = (
    'work',
    'look',
    'limit (same run)',
    'ratio',
    'target',
    'result',
    'CPU per answer, look / limit',
)


def table(rows: Sequence[Row]) -> str:
    """Return the rows as a Markdown table."""
    lines = [
        '| ' + ' | '.join(_HEADER) + ' |',
        '|' + '|'.join(['---'] * len(_HEADER)) + '|',
    ]
    for row in rows:
        cells = (row.work, row.look, row.limit, row.ratio, row.target, row.verdict, row.cpu)
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def markdown(
    rows: Sequence[Row],
    *,
    machine_info: Sequence[tuple[str, str]],
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
        'rounds); its result says which.',
        '',
        table(rows),
        '',
        '## Machine',
        '',
        *(f'- {name}: {value}' for name, value in machine_info),
        '',
        '## Settings',
        '',
        *(f'- {name}: {value}' for name, value in settings),
        '',
        '## Rounds',
        '',
        *(f'- {row.work}: {row.rounds}' for row in rows),
    ]
    if notes:
        parts += ['', '## Notes', '', *(f'- {note}' for note in notes)]
    return '\n'.join(parts) + '\n'
