"""Latency samples and their summary: percentiles over every sample (bounded), and a histogram."""

from __future__ import annotations

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
            counts[_bucket(edges, value)] += 1
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


def _bucket(edges: list[float], value: float) -> int:
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if value < edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo
