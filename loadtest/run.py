"""A load-test run: conversations, tabs in worker processes, traffic, then verification.

The driver (``loadtest.driver``) creates the conversations and posts messages; the tabs live in
``--workers`` processes (``loadtest.tabs``) so the client is not the bottleneck; each worker reports
its chunks, latencies and anomalies (``loadtest.messages``) into the timeline (``loadtest.timeline``),
and the digests of every answer its tabs saw finish, which the summary (``loadtest.report``) checks
against the history API.
"""

import asyncio
import math
import multiprocessing
import time
from typing import Any

import aiohttp

from loadtest.config import SCENARIOS, Config, check_target
from loadtest.driver import Driver
from loadtest.messages import TabAssignment, WorkerResult
from loadtest.report import memory_summary, rss_kib, summarise
from loadtest.tabs import DriverLinks, raise_open_files_limit, worker_main
from loadtest.timeline import Timeline, report_progress

__all__ = ["SCENARIOS", "Config", "run"]


async def run(config: Config, *, live: bool = True) -> dict[str, Any]:
    for url in config.urls:
        check_target(url, config.allow_remote)
    raise_open_files_limit()
    ctx = multiprocessing.get_context("spawn")
    progress, results, answers, stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    # The publish times whose deltas are timed (ms since the epoch): set once, when traffic starts.
    timed = ctx.Array("d", [math.inf, math.inf] if config.warmup else [0.0, math.inf], lock=False)
    wall_start = time.monotonic()
    cpu_start = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        driver = Driver(config, session)
        conversations = [
            (config.urls[i % len(config.urls)], *await driver.create(config.urls[i % len(config.urls)]))
            for i in range(config.conversations)
        ]
        assignments: list[list[TabAssignment]] = [[] for _ in range(config.workers)]
        for i in range(config.clients):
            _, cid, token = conversations[i % len(conversations)]
            url = config.urls[i % len(config.urls)]  # tabs of one conversation spread over the nodes
            # The first tab of each conversation tells the driver when an answer starts and ends.
            assignments[i % config.workers].append(TabAssignment(cid, token, url, i < len(conversations)))
        memory_before = rss_kib(config.server_pids)
        procs = [
            ctx.Process(
                target=worker_main,
                args=(i, a, config.ramp_up, DriverLinks(progress, results, answers, stop, timed)),
                daemon=True,
            )
            for i, a in enumerate(assignments)
        ]
        for proc in procs:
            proc.start()
        timeline = Timeline(time.monotonic())
        reporter = asyncio.create_task(report_progress(progress, timeline, config, live))
        # Traffic starts once every tab is connected (a tab connecting late would replay history and
        # count old chunks as slow ones), or when connecting is clearly stuck.
        await timeline.all_connected(config.clients, config.ramp_up + 30)
        await asyncio.sleep(0.5)
        memory_after = rss_kib(config.server_pids)
        traffic_start = timeline.measure_start = time.monotonic()
        if config.warmup:
            timed[0] = (time.time() + config.warmup) * 1000
            timed[1] = timed[0] + config.duration * 1000
        measure_start = traffic_start + config.warmup
        timeline.until = until = measure_start + config.duration
        reports = asyncio.create_task(driver.take_reports(answers))
        drivers = []
        if config.scenario != "idle":
            steps = config.steps if config.scenario == "ramp" else 1
            step_seconds = config.duration / steps
            for i, (url, cid, token) in enumerate(conversations):
                if config.warmup:  # first messages spread evenly over it
                    delay = i * config.warmup / len(conversations)
                else:
                    delay = (i * steps // len(conversations)) * step_seconds
                drivers.append(asyncio.create_task(_later(delay, driver.converse(url, cid, token, until))))
        try:
            if drivers:  # they stop posting at the deadline (or at --answers) and finish their answer
                await asyncio.wait(drivers, timeout=until - traffic_start + config.drain_timeout)
            else:
                await asyncio.sleep(until - traffic_start)
        finally:
            for task in drivers:
                task.cancel()
            driver_errors = [
                r
                for r in await asyncio.gather(*drivers, return_exceptions=True)
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
            ]
            # Tabs may lag behind the driver (a saturated client): let them drain before stopping.
            await timeline.settled(config.drain_timeout)
            stop.set()
            worker_results: list[WorkerResult] = [
                await asyncio.get_running_loop().run_in_executor(None, results.get, True, 60) for _ in procs
            ]
            reporter.cancel()
            reports.cancel()
            await asyncio.gather(reporter, reports, return_exceptions=True)
            for proc in procs:
                proc.join(10)
        # With a warm-up the timed window is exactly the duration; without, it runs to the drain's end.
        measured = config.duration if config.warmup else time.monotonic() - measure_start
        history = {cid: await driver.history_digests(url, cid, token) for url, cid, token in conversations}
    result = summarise(
        config, driver, worker_results, history, measured, wall_start, cpu_start, [repr(e) for e in driver_errors]
    )
    first = [at - traffic_start for at in driver.first_posts]
    result["first_post_seconds"] = {"min": round(min(first), 3), "max": round(max(first), 3)} if first else None
    result["timeline"] = timeline.points
    result["connections_held"] = max((p["connected"] for p in timeline.points), default=0)
    if config.scenario == "ramp":
        result["ramp"] = timeline.steps(config, len(conversations))
        sustained = [s for s in result["ramp"] if s["sustained"]]
        result["ramp_best"] = max(sustained, key=lambda s: s["chunks_per_second"]) if sustained else None
    if config.server_pids:
        result["server_memory"] = memory_summary(memory_before, memory_after, result["connections_held"])
    return result


async def _later(delay: float, coro: Any) -> None:
    try:
        if delay:
            await asyncio.sleep(delay)
        await coro
    finally:
        coro.close()  # never awaited if cancelled during the delay
