"""The run's summary: totals, latency, verification against the stored history, server memory."""

import os
import time
from dataclasses import asdict
from typing import Any

from loadtest.config import Config
from loadtest.driver import Driver
from loadtest.messages import WorkerResult
from loadtest.stats import Series


def rss_kib(pids: tuple[int, ...]) -> dict[int, int]:
    """Resident memory of local processes (Linux /proc), in KiB."""
    rss = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[pid] = int(line.split()[1])
        except OSError:
            pass
    return rss


def memory_summary(before: dict[int, int], after: dict[int, int], connections: int) -> dict[str, Any]:
    grown = sum(after.get(pid, 0) - kib for pid, kib in before.items())
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round(grown / connections, 2) if connections else None,
    }


def summarise(
    config: Config,
    driver: Driver,
    worker_results: list[WorkerResult],
    history: dict[str, dict[str, str]],
    measured: float,
    wall_start: float,
    cpu_start: float,
    driver_errors: list[str],
) -> dict[str, Any]:
    latency, gaps = Series(), Series()
    tabs: list[dict[str, Any]] = []
    client_cpu = time.process_time() - cpu_start
    for result in worker_results:
        latency.extend(Series.from_json(result.latency))
        gaps.extend(Series.from_json(result.gaps))
        tabs.extend(result.tabs)
        client_cpu += result.cpu_seconds
    mismatched = verified = missing = 0
    for tab in tabs:
        stored = history.get(tab["conversation_id"], {})
        for rid, digest in tab["answers"].items():
            verified += 1
            if stored.get(rid) != digest:
                mismatched += 1
        missing += len(stored.keys() - tab["answers"].keys())  # every tab was there from the start
    totals = {
        k: sum(t[k] for t in tabs)
        for k in ("chunks", "bytes", "lost", "duplicated", "reordered", "resets", "reconnects", "connect_errors")
    }
    ok = all(totals[k] == 0 for k in ("lost", "duplicated", "reordered", "resets")) and mismatched == missing == 0
    ok = ok and not driver_errors
    if config.scenario != "idle":  # traffic that never finished is a failure too, not a quiet success
        ok = ok and driver.posted > 0 and driver.answers_done == driver.posted
    return {
        "config": asdict(config),
        "ok": ok,
        "measured_seconds": round(measured, 2),
        "wall_seconds": round(time.monotonic() - wall_start, 2),
        "answers_posted": driver.posted,
        "answers_done": driver.answers_done,
        "post_errors": driver.post_errors,
        "driver_errors": driver_errors,
        "answers_verified": verified,
        "answers_mismatched": mismatched,
        "answers_missing": missing,
        **totals,
        "chunks_timed": latency.count,
        # every timed chunk is a latency sample: the measured window's rate, after any warm-up
        "chunks_per_second": round(latency.count / measured, 1) if measured else None,
        "bytes_per_second": round(totals["bytes"] / measured, 1) if measured else None,
        "latency_ms": latency.summary(),
        "latency_histogram_ms": {"edges": HIST_EDGES, "counts": latency.histogram(HIST_EDGES)},
        "inter_chunk_gap_ms": gaps.summary(),
        "ttft_ms": driver.ttft.summary(),
        "client_cpu_seconds": round(client_cpu, 2),
        "client_cpu_percent_of_one_core": round(100 * client_cpu / max(measured, 1e-9), 1),
        "cores": os.cpu_count(),
    }


HIST_EDGES = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000]
