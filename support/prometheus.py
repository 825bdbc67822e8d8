"""Prometheus metrics in the text exposition format (0.0.4), for nodes and producers alike.

Stdlib only and lock-free: both processes are single-threaded asyncio programs, so a counter is a
plain attribute add. That matters on the fan-out path, which counts per frame, never per client.
Values read at scrape time (open connections, jobs in flight) are gauges with a callback.
"""

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: publish→write and time to first token."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + body + "}" if body else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(Metric):
    """A monotonically increasing count; ``labelled`` ones keep one value per label tuple."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        super().__init__(name, help_text)
        self.label_names = tuple(label_names)
        self.value = 0.0
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def inc_labels(self, *labels: str, amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self._values.get(labels, 0.0) if labels else self.value

    def samples(self) -> list[str]:
        if not self.label_names:
            return [f"{self.name} {_number(self.value)}"]
        return [
            f"{self.name}{_labels(zip(self.label_names, labels, strict=True))} {_number(value)}"
            for labels, value in sorted(self._values.items())
        ]


class Gauge(Metric):
    """A value read when scraped."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self._read = read

    def samples(self) -> list[str]:
        return [f"{self.name} {_number(self._read())}"]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self) -> list[str]:
        lines = []
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines.append(f"{self.name}_sum {_number(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


M = TypeVar("M", bound=Metric)


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def add(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def include(self, other: "Registry") -> None:
        """Serve ``other``'s metrics too (the embedded producer's, on its node's endpoint)."""
        for metric in other._metrics.values():
            self.add(metric)

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.header()
            lines += metric.samples()
        return ("\n".join(lines) + "\n").encode()
