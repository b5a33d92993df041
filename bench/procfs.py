"""Readings from /proc: children, CPU time, memory, who holds a socket, and the machine's noise.

The benchmark's figures are ratios on a shared two-core machine, so it
measures what else was running too: `CpuMeter` splits the CPU time spent
during a round into our services', the benchmark's own, and everyone else's.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import threading
import time
from collections.abc import Sequence

_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def children(pid: int) -> list[int]:
    """Return the pids of a process's children."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f'/proc/{pid}/task'):
            with contextlib.suppress(FileNotFoundError):
                text = pathlib.Path(f'/proc/{pid}/task/{task}/children').read_text()
                found.extend(int(child) for child in text.split())
    return found


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time, from /proc/<pid>/stat."""
    stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    fields = stat[stat.rindex(')') + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def socket_owner(server_port: int, client_port: int, pids: Sequence[int]) -> int | None:
    """Return which of ``pids`` holds the server side of a loopback TCP connection."""
    suffixes = (f':{server_port:04X}', f':{client_port:04X}')
    inode = None
    with open('/proc/net/tcp') as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(suffixes[0]) and fields[2].endswith(suffixes[1]):
                inode = fields[9]
                break
    if inode is None:
        return None
    target = f'socket:[{inode}]'
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(f'/proc/{pid}/fd'):
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(f'/proc/{pid}/fd/{fd}') == target:
                        return pid
    return None


# Process groups this benchmark started (each service leads its own), and its own.
BENCH_GROUP = os.getpgrp()
OURS: set[int] = {BENCH_GROUP}


class ProcError(RuntimeError):
    """/proc did not have what the benchmark reads."""


def _busy_seconds() -> float:
    """Return the CPU time every core spent busy (not idle, not waiting on I/O)."""
    with open('/proc/stat') as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _our_seconds() -> tuple[float, float]:
    """Return the CPU time of the benchmark's own group and of its services' groups."""
    bench = services = 0.0
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit():
            continue
        try:
            with open(f'/proc/{entry.name}/stat') as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2 :].split()
        group = int(fields[2])
        if group in OURS:
            # NOTE: a pool process that exits hands its time to its parent's
            #   cutime, so counting both keeps respawned processes in the sum.
            seconds = sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS
            if group == BENCH_GROUP:
                bench += seconds
            else:
                services += seconds
    return bench, services


class CpuMeter:
    """Measure CPU over a block: our services', the benchmark's own, and everyone else's.

    "Others" is the noise of a shared machine: cores that processes not ours
    kept busy meanwhile.
    """

    def __init__(self) -> None:
        self.elapsed = self.bench = self.services = self.others_cores = 0.0

    def __enter__(self) -> CpuMeter:
        self._began = time.perf_counter()
        self._busy = _busy_seconds()
        self._bench, self._services = _our_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._began
        bench, services = _our_seconds()
        self.bench, self.services = bench - self._bench, services - self._services
        others = _busy_seconds() - self._busy - self.bench - self.services
        self.others_cores = max(0.0, others) / self.elapsed


def status_kib(pid: int, field: str) -> int:
    """Return a ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status."""
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise ProcError(f'/proc/{pid}/status has no {field}')


class PeakRss:
    """Sample a process's VmRSS every millisecond in a thread; keep the highest."""

    def __init__(self, pid: int, interval: float = 0.001) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, 'VmRSS'))
            self.samples += 1
            time.sleep(self.interval)
