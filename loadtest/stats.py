"""Latency samples and their summary: percentiles over every sample (bounded), and a histogram."""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES = 5_000_000
"""Samples kept per series; beyond it, every other sample is dropped (uniform thinning)."""


@dataclass
class Series:
    samples: array[float] = field(default_factory=lambda: array("d"))
    count: int = 0
    stride: int = 1

    def add(self, value: float) -> None:
        self.count += 1
        if self.count % self.stride:
            return
        self.samples.append(value)
        if len(self.samples) >= MAX_SAMPLES:
            self.samples = self.samples[::2]
            self.stride *= 2

    def extend(self, other: Series) -> None:
        for value in other.samples:
            self.samples.append(value)
        self.count += other.count

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.samples)
        return {
            "count": self.count,
            "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99),
            "max": ordered[-1] if ordered else None,
            "mean": (sum(ordered) / len(ordered)) if ordered else None,
        }

    def histogram(self, edges: list[float]) -> list[int]:
        counts = [0] * (len(edges) + 1)
        for value in self.samples:
            counts[bisect.bisect_right(edges, value)] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "samples": list(self.samples)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Series:
        return cls(array("d", data["samples"]), data["count"])


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


LOG_EDGES: tuple[float, ...] = tuple(round(0.05 * 10 ** (i / 10), 4) for i in range(0, 62))
"""Milliseconds, 10 buckets per decade from 0.05 ms to about 60 s: fine enough for p99, and mergeable."""


@dataclass
class LogHistogram:
    """Latencies in fixed log-spaced buckets: cheap to fill, to ship between processes and to merge."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LOG_EDGES) + 1))

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_right(LOG_EDGES, value)] += 1

    def merge(self, counts: list[int]) -> None:
        for i, n in enumerate(counts):
            self.counts[i] += n

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, p: float) -> float | None:
        """The upper edge of the bucket holding the p-th percentile (so never optimistic)."""
        total = self.total
        if not total:
            return None
        rank = max(1, math.ceil(p / 100 * total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return LOG_EDGES[i] if i < len(LOG_EDGES) else math.inf
        return math.inf

    def take(self) -> list[int]:
        """The counts so far, and start again (one interval of a timeline)."""
        counts, self.counts = self.counts, [0] * (len(LOG_EDGES) + 1)
        return counts


class Recorder(Series):
    """A Series that also fills the current interval's histogram (for the timeline and the ramp)."""

    def __init__(self) -> None:
        super().__init__()
        self.interval = LogHistogram()

    def add(self, value: float) -> None:
        super().add(value)
        self.interval.add(value)
