"""The load tester's worker processes: each holds its share of the tabs and reports on them.

A worker gets its ``TabAssignment``s, opens the tabs over ``ramp_up`` seconds, learns the timed
window once the driver sets it, sends a ``Progress`` every second, forwards the reporting tabs'
``Sighting``s, and sends one ``WorkerResult`` when the driver sets ``stop`` (``DriverLinks``).
"""

import asyncio
import resource
import time
from dataclasses import dataclass
from typing import Any

import uvloop

from loadtest.client import Tab
from loadtest.messages import Progress, Sighting, TabAssignment, WorkerResult
from loadtest.stats import Recorder, Series


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True)
class DriverLinks:
    """What ties a worker to the driver's process (``multiprocessing`` objects, handed over at spawn)."""

    progress: Any
    """Queue of ``Progress``, one a second."""
    results: Any
    """Queue of the one ``WorkerResult``."""
    answers: Any
    """Queue of the reporting tabs' ``Sighting``s."""
    stop: Any
    """Event: the driver is done; report and end."""
    timed: Any
    """Two shared doubles, the window of publish times (ms since the epoch) whose deltas are timed:
    from the warm-up's end to the duration's (empty until the driver sets it; everything without a
    warm-up)."""


def worker_main(index: int, assignments: list[TabAssignment], ramp_up: float, links: DriverLinks) -> None:
    raise_open_files_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker(index, assignments, ramp_up, links))


async def _worker(index: int, assignments: list[TabAssignment], ramp_up: float, links: DriverLinks) -> None:
    progress, results, answers, stop, timed = links.progress, links.results, links.answers, links.stop, links.timed
    latency = Recorder()
    gaps = Series()

    def report(kind: str, response_id: str, at: float) -> None:
        answers.put_nowait(Sighting("first" if kind == "first" else "done", response_id, at))

    window = (timed[0], timed[1])
    tabs = [
        Tab(
            a.conversation_id,
            a.token,
            a.url,
            gaps=gaps,
            report=report if a.reporter else None,
            timed_ms=window,
        )
        for a in assignments
    ]
    started = time.process_time()
    tasks: list[asyncio.Task[None]] = []

    async def ramp() -> None:
        gap = ramp_up / max(1, len(tabs))
        for tab in tabs:
            tasks.append(asyncio.create_task(tab.run(latency)))
            if gap:
                await asyncio.sleep(gap)

    opening = asyncio.create_task(ramp())
    loop = asyncio.get_running_loop()
    while not await loop.run_in_executor(None, stop.wait, 1.0):
        if (timed[0], timed[1]) != window:  # set once, at the warm-up's start (it lasts 2 s or more)
            window = (timed[0], timed[1])
            for tab in tabs:
                tab.timed_ms = window
        # Cumulative counters, and the latencies of the last interval as a mergeable histogram.
        progress.put(
            Progress(
                worker=index,
                connected=sum(t.connected for t in tabs),
                chunks=sum(t.chunks for t in tabs),
                anomalies=sum(t.lost + t.duplicated + t.reordered for t in tabs),
                hist=latency.interval.take(),
            )
        )
    opening.cancel()
    await asyncio.gather(opening, return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put(
        WorkerResult(
            tabs=[t.summary() for t in tabs],
            latency=latency.to_json(),
            gaps=gaps.to_json(),
            cpu_seconds=time.process_time() - started,
        )
    )
