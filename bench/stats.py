"""Numbers: percentiles, medians over repetitions, and the Row that every scenario reports."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * pct / 100 + 0.5) - 1))]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max (in seconds) and the sample count of a list of latencies."""
    return {
        "p50": percentile(seconds, 50),
        "p99": percentile(seconds, 99),
        "max": max(seconds) if seconds else 0.0,
        "n": float(len(seconds)),
    }


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Measurement:
    """One repetition of one case: a rate and/or latencies (seconds), plus anything else worth keeping."""

    rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of_latencies(cls, seconds: Sequence[float], rate: float | None = None) -> Measurement:
        s = latency_summary(seconds)
        return cls(rate=rate, p50=s["p50"], p99=s["p99"], max=s["max"])


def combine(reps: Sequence[Measurement]) -> Measurement:
    """The median of every field over the repetitions (the spread of rates is kept in extra)."""
    keys = {k for m in reps for k in m.extra}
    out = Measurement(
        rate=median(m.rate for m in reps),
        p50=median(m.p50 for m in reps),
        p99=median(m.p99 for m in reps),
        max=median(m.max for m in reps),
        extra={k: median(m.extra.get(k) for m in reps) or 0.0 for k in sorted(keys)},
    )
    rates = [m.rate for m in reps if m.rate is not None]
    if len(rates) > 1:
        out.extra["rate_min"], out.extra["rate_max"] = min(rates), max(rates)
    out.extra["reps"] = len(reps)
    return out


@dataclass
class Row:
    """One line of the results: a system's figure in a scenario's case, and how it compares."""

    scenario: str
    case: str
    system: str
    m: Measurement
    #: what the ratio divides by, e.g. "raw pipelined"; ratio = m.rate / baseline rate.
    baseline: str = ""
    ratio: float | None = None
    note: str = ""


@dataclass
class Target:
    """A goal from the issue and whether this run met it."""

    name: str
    goal: str
    value: str
    met: bool | None
