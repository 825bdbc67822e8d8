"""The run's timeline: per-second points merged from every worker, the ramp's steps, the live line."""

import asyncio
import contextlib
import queue
import sys
import time
from typing import Any

from loadtest.config import Config
from loadtest.messages import Progress
from loadtest.stats import LogHistogram


class Timeline:
    """Per-second points merged from every worker: connections, chunks/s, latency percentiles."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.measure_start: float | None = None
        self.until: float | None = None
        self.points: list[dict[str, Any]] = []
        self._hists: list[list[int]] = []
        self._latest: dict[int, Progress] = {}
        self._last_chunks = 0
        self._last_time = started
        self.changed = asyncio.Event()

    def add(self, updates: list[Progress], now: float) -> dict[str, Any]:
        interval = LogHistogram()
        for update in updates:
            self._latest[update.worker] = update
            interval.merge(update.hist)
        chunks = sum(u.chunks for u in self._latest.values())
        elapsed = max(now - self._last_time, 1e-6)
        point = {
            "t": round(now - (self.measure_start or now), 2) if self.measure_start else None,
            "connected": sum(u.connected for u in self._latest.values()),
            "chunks_per_second": round((chunks - self._last_chunks) / elapsed, 1),
            "p50_ms": interval.percentile(50),
            "p90_ms": interval.percentile(90),
            "p99_ms": interval.percentile(99),
            "anomalies": sum(u.anomalies for u in self._latest.values()),
        }
        self._last_chunks, self._last_time = chunks, now
        self.changed.set()
        if point["t"] is not None:
            self.points.append(point)
            self._hists.append(interval.counts)
        return point

    @property
    def connected(self) -> int:
        return sum(u.connected for u in self._latest.values())

    async def all_connected(self, clients: int, within: float) -> None:
        """Wait until the workers report ``clients`` connected tabs (for at most ``within`` seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.connected < clients:
                    self.changed.clear()
                    await self.changed.wait()

    async def settled(self, within: float) -> None:
        """Wait until two consecutive seconds deliver nothing (for at most ``within`` seconds)."""
        deadline = time.monotonic() + within
        seen = len(self.points)
        await asyncio.sleep(0.5)
        while time.monotonic() < deadline:
            recent = self.points[seen:][-2:]
            if len(recent) == 2 and all(p["chunks_per_second"] == 0 for p in recent):
                return
            await asyncio.sleep(0.25)

    def steps(self, config: Config, conversations: int) -> list[dict[str, Any]]:
        """The ramp's steps: each one's delivered chunks/s and p99, skipping its first second."""
        step_seconds = config.duration / config.steps
        out = []
        previous_anomalies = 0
        for i in range(config.steps):
            lo, hi = i * step_seconds + 1.0, (i + 1) * step_seconds
            window = [(p, h) for p, h in zip(self.points, self._hists, strict=True) if lo < p["t"] <= hi]
            merged = LogHistogram()
            for _, counts in window:
                merged.merge(counts)
            anomalies = window[-1][0]["anomalies"] if window else previous_anomalies
            p99 = merged.percentile(99)
            rate = sum(p["chunks_per_second"] for p, _ in window) / len(window) if window else 0.0
            out.append(
                {
                    "step": i + 1,
                    "conversations": min(conversations, (i + 1) * conversations // config.steps),
                    "chunks_per_second": round(rate, 1),
                    "p99_ms": p99,
                    "anomalies": anomalies - previous_anomalies,
                    "sustained": p99 is not None and p99 <= config.p99_bound_ms and anomalies == 0,
                }
            )
            previous_anomalies = anomalies
        return out


async def report_progress(progress: Any, timeline: Timeline, config: Config, live: bool) -> None:
    """Merge the workers' progress into the timeline each second; draw the live line on a terminal."""
    while True:
        await asyncio.sleep(1)
        updates = []
        try:
            while True:
                updates.append(progress.get_nowait())
        except queue.Empty:
            pass
        point = timeline.add(updates, time.monotonic())
        if live:
            phase = "ramp-up" if timeline.until is None else f"{max(0, timeline.until - time.monotonic()):4.0f}s left"
            p99 = "-" if point["p99_ms"] is None else f"{point['p99_ms']:.1f} ms"
            print(
                f"\r  {phase}  connected {point['connected']:6d}/{config.clients}  "
                f"chunks/s {point['chunks_per_second']:9.1f}  p99 {p99:>9}  anomalies {point['anomalies']}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
