"""Rounds of two sides, interleaved, with each side's CPU per answer and the machine's noise.

Rounds alternate first/second, second/first, ... so a burst of noise from
the shared machine lands on both sides rather than on one, and a pair of
rounds during which other processes were busy is measured once more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bench.procfs import CpuMeter


@dataclasses.dataclass
class Paired:
    """Rounds of two sides: their figures, their CPU per answer, and the machine's noise."""

    first: list[float] = dataclasses.field(default_factory=list)
    second: list[float] = dataclasses.field(default_factory=list)
    cpu_first: list[float] = dataclasses.field(default_factory=list)
    cpu_second: list[float] = dataclasses.field(default_factory=list)
    others_first: list[float] = dataclasses.field(default_factory=list)
    others_second: list[float] = dataclasses.field(default_factory=list)
    repeated: int = 0

    def noise(self, first: str, second: str) -> str:
        def cores(values: list[float]) -> str:
            return ', '.join(f'{value:.1f}' for value in values)

        text = (
            f'other processes kept [{cores(self.others_first)}] cores busy in {first} rounds, '
            f'[{cores(self.others_second)}] in {second} rounds'
        )
        if self.repeated:
            text += f' ({self.repeated} noisy round pairs measured again)'
        return text


# NOTE: a pair of rounds during which other processes kept more than this many
#   cores busy is measured once more, and the quieter of the two attempts kept.
QUIET_CORES = 0.25

# Whose CPU a side's answers cost: look's or the bare app's server processes,
# or the benchmark's own group (the Pillow pool and its feeder).
SERVICES, BENCH, NONE = 'services', 'bench', ''


def _cpu_per_answer(meter: CpuMeter, rate: float, whose: str) -> float:
    seconds = {SERVICES: meter.services, BENCH: meter.bench}.get(whose)
    answers = rate * meter.elapsed
    return seconds / answers if seconds is not None and answers > 0 else 0.0


def interleave(
    first: Callable[[], float],
    second: Callable[[], float],
    rounds: int,
    *,
    cpu: tuple[str, str] = (NONE, NONE),
    retry: bool = True,
) -> Paired:
    """Run ``rounds`` of each (rates), alternating which goes first; redo a noisy pair once."""
    paired = Paired()
    for n in range(rounds):
        best: list[tuple[float, float, float]] | None = None
        for attempt in range(2 if retry else 1):
            results: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * 2
            for side, function in ((0, first), (1, second))[:: 1 if n % 2 == 0 else -1]:
                with CpuMeter() as meter:
                    value = function()
                per_answer = _cpu_per_answer(meter, value, cpu[side])
                results[side] = (value, per_answer, meter.others_cores)
            noise = max(result[2] for result in results)
            if best is None or noise < max(result[2] for result in best):
                best = results
            if noise <= QUIET_CORES:
                break
            if attempt == 0:
                paired.repeated += 1
        assert best is not None
        for (value, per_answer, others), values, cpus, noises in zip(
            best,
            (paired.first, paired.second),
            (paired.cpu_first, paired.cpu_second),
            (paired.others_first, paired.others_second),
            strict=True,
        ):
            values.append(value)
            cpus.append(per_answer)
            noises.append(others)
    return paired
