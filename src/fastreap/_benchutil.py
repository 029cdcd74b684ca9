"""The common shape of fastreap's benchmarks (used by ``fastreap bench`` and
the scripts under ``benchmarks/``).

Each area module (``_bench_flags``, ``_bench_reap``, ``_bench_stop``) defines
``run(quick: bool, progress: Callable[[str], None]) -> list[Result]``. A result
holds raw samples; ratios are always against a baseline measured in the same
run (``Result.baseline`` names it within the same group).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Progress = Callable[[str], None]


@dataclass
class Result:
    """One measured case."""

    group: str  # e.g. "flag check", "exit-to-notice latency, 16 live"
    name: str  # e.g. "fastreap.stop_requested()"
    unit: str  # "ns", "us", "ms" or "s"
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None  # name of the result in this group to divide by
    goal: str = ""  # the goal, in words, e.g. "<= 1.2x pidfd+poll"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.median
        return statistics.quantiles(self.samples, n=10)[-1]


def ratio(results: Sequence[Result], r: Result) -> float | None:
    """r's median over its baseline's median (same group), or None."""
    if r.baseline is None:
        return None
    for b in results:
        if b.group == r.group and b.name == r.baseline:
            return r.median / b.median if b.median else None
    return None


def per_call_ns(fn: Callable[[], object], *, number: int, repeat: int) -> list[float]:
    """Nanoseconds per call of fn, one sample per repeat (loop overhead included,
    the same for every case compared)."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        out.append((time.perf_counter_ns() - t0) / number)
    return out
