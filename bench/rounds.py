"""Rounds of two or three sides, interleaved: each side's figures, CPU per answer, and noise.

Each round starts with a different side and every other round runs the
sides backwards, so a burst of noise from the shared machine lands on every
side rather than on one, and a round during which other processes were busy
is measured once more, while the run's budget for that lasts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from bench.procfs import CpuMeter


@dataclasses.dataclass
class Side:
    """One side's rounds: its figures, its CPU per answer, and the cores others kept busy."""

    name: str
    values: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    others: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Rounds:
    """Every side's rounds, and how many noisy rounds were measured again."""

    sides: list[Side]
    repeated: int = 0

    def noise(self) -> str:
        def cores(values: list[float]) -> str:
            return ', '.join(f'{value:.1f}' for value in values)

        text = 'other processes kept ' + ', '.join(
            f'[{cores(side.others)}] cores busy in {side.name} rounds' for side in self.sides
        )
        if self.repeated:
            text += f' ({self.repeated} noisy rounds measured again)'
        return text


# NOTE: a round during which other processes kept more than this many cores
#   busy is measured once more, and the quieter of the two attempts kept.
QUIET_CORES = 0.25


@dataclasses.dataclass
class RetryBudget:
    """Seconds a whole run may spend measuring noisy rounds again, so noise cannot stretch it."""

    seconds: float
    spent: float = 0.0

    def allows(self) -> bool:
        return self.spent < self.seconds


# Whose CPU a side's answers cost: look's or the bare app's server processes,
# or the benchmark's own group (the Pillow pool and its feeder).
SERVICES, BENCH, NONE = 'services', 'bench', ''


def _cpu_per_answer(meter: CpuMeter, rate: float, whose: str) -> float:
    seconds = {SERVICES: meter.services, BENCH: meter.bench}.get(whose)
    answers = rate * meter.elapsed
    return seconds / answers if seconds is not None and answers > 0 else 0.0


def order(round_number: int, sides: int) -> list[int]:
    """Return the order of the sides in a round: one later each pair of rounds, odd ones backwards.

    Over ``2 * sides`` rounds every side runs in every position twice.
    """
    shift = round_number // 2 % sides
    turn = [(shift + n) % sides for n in range(sides)]
    return turn[::-1] if round_number % 2 else turn


def interleave(
    functions: Sequence[tuple[str, Callable[[], float], str]],
    rounds: int,
    budget: RetryBudget | None = None,
) -> Rounds:
    """Run ``rounds`` of each (name, figure, whose CPU) side in turn; redo a noisy round once."""
    result = Rounds([Side(name) for name, _function, _whose in functions])
    for n in range(rounds):
        best: list[tuple[float, float, float]] | None = None
        for attempt in range(2):
            if attempt and (budget is None or not budget.allows()):
                break
            began = time.perf_counter()
            measured: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * len(functions)
            for index in order(n, len(functions)):
                _name, function, whose = functions[index]
                with CpuMeter() as meter:
                    value = function()
                measured[index] = (value, _cpu_per_answer(meter, value, whose), meter.others_cores)
            if attempt and budget is not None:
                budget.spent += time.perf_counter() - began
            noise = max(others for _value, _cpu, others in measured)
            if best is None or noise < max(others for _value, _cpu, others in best):
                best = measured
            if noise <= QUIET_CORES:
                break
            if attempt == 0 and budget is not None and budget.allows():
                result.repeated += 1
        assert best is not None
        for side, (value, per_answer, others) in zip(result.sides, best, strict=True):
            side.values.append(value)
            side.cpu.append(per_answer)
            side.others.append(others)
    return result
