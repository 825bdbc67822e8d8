"""Per-client limits in the node, so the embedded default is protected too (nginx adds its own).

- ``RateLimit``: a token bucket per key (client IP, or conversation): ``rate`` per second on
  average, ``burst`` at once. A refused request gets 429 with ``Retry-After``.
- ``StreamCount``: open event streams per key, refused past ``limit``.

Memory is bounded: a bucket that has refilled is forgotten (nothing distinguishes it from a new
one), swept whenever the table doubles; stream counts are dropped at zero. Clients in
``STREAMFAN_LIMITS_EXEMPT`` (loopback by default: the operator's own tools and benchmarks) are
never limited.
"""

import math
import time

from server.errors import JSONError


class RateLimit:
    __slots__ = ("_buckets", "_sweep_at", "burst", "name", "rate")

    def __init__(self, name: str, rate: float, burst: int) -> None:
        self.name = name
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        """key -> (tokens left, when last counted)."""
        self._sweep_at = 1024

    def take(self, key: str, now: float | None = None) -> None:
        """Spend one token of ``key``'s bucket, or raise a JSON 429 saying when to try again."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise JSONError(
                429,
                f"too many {self.name}; try again in {retry} s",
                code="rate_limited",
                headers={"Retry-After": str(retry)},
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        full = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
        self._sweep_at = max(1024, 2 * len(self._buckets))


class StreamCount:
    __slots__ = ("_open", "limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._open: dict[str, int] = {}

    def enter(self, key: str) -> None:
        count = self._open.get(key, 0)
        if count >= self.limit:
            raise JSONError(
                429, f"too many open streams {self.name}", code="too_many_streams", headers={"Retry-After": "5"}
            )
        self._open[key] = count + 1

    def leave(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def __len__(self) -> int:
        return len(self._open)
