"""A load-test run: create conversations, hold the tabs in worker processes, drive messages, verify.

The driver (this process) creates the conversations, posts messages and follows each conversation on
one stream of its own to know when an answer is done (and to time the first token). The tabs live in
``--workers`` processes, so the client is not the bottleneck; each reports its chunks, latencies and
anomalies, and the digests of every answer it saw finish, which the driver checks against the
history API.
"""

import asyncio
import contextlib
import ipaddress
import multiprocessing
import os
import queue
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop

from loadtest.client import Tab
from loadtest.stats import LogHistogram, Recorder, Series

SCENARIOS = ("steady", "broadcast", "idle", "ramp")


@dataclass(frozen=True)
class Config:
    urls: tuple[str, ...]
    clients: int
    conversations: int
    duration: float
    scenario: str = "steady"
    workers: int = 1
    ramp_up: float = 2.0
    think_time: float = 0.0
    max_tokens: int = 200
    prompt: str = "Explain how streaming answers reach many browser tabs"
    drain_timeout: float = 30.0
    allow_remote: bool = False
    answers: int | None = None
    """Stop posting after this many answers in all (and at ``duration`` in any case)."""
    steps: int = 5
    """ramp: conversations start chatting in this many equal steps over the duration."""
    p99_bound_ms: float = 50.0
    """ramp: the p99 a step must stay under to count as sustained."""
    server_pids: tuple[int, ...] = ()
    """Local server processes whose memory is sampled before and after the tabs connect."""


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname or ""
    if allow_remote:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"loadtest: {url} is not a loopback address; pass --allow-remote to target it")


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- worker processes -------------------------------------------------------------------------


Assignment = tuple[str, str, str, bool]
"""A tab: conversation id, token, node URL, and whether it reports its conversation's answers."""


def worker_main(
    index: int, assignments: list[Assignment], ramp_up: float, queues: tuple[Any, Any, Any], stop: Any
) -> None:
    raise_open_files_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker(index, assignments, ramp_up, queues, stop))


async def _worker(
    index: int, assignments: list[Assignment], ramp_up: float, queues: tuple[Any, Any, Any], stop: Any
) -> None:
    progress, results, answers = queues
    latency = Recorder()
    gaps = Series()

    def report(kind: str, response_id: str, at: float) -> None:
        answers.put_nowait((kind, response_id, at))

    tabs = [
        Tab(cid, token, url, gaps=gaps, report=report if reporter else None)
        for cid, token, url, reporter in assignments
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
        # Cumulative counters, and the latencies of the last interval as a mergeable histogram.
        progress.put(
            {
                "worker": index,
                "connected": sum(t.connected for t in tabs),
                "chunks": sum(t.chunks for t in tabs),
                "anomalies": sum(t.lost + t.duplicated + t.reordered for t in tabs),
                "hist": latency.interval.take(),
            }
        )
    opening.cancel()
    await asyncio.gather(opening, return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put(
        {
            "tabs": [t.summary() for t in tabs],
            "latency": latency.to_json(),
            "gaps": gaps.to_json(),
            "cpu_seconds": time.process_time() - started,
        }
    )


# -- the driver -------------------------------------------------------------------------------


class Driver:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.ttft = Series()
        self.posted = 0
        self.answers_done = 0
        self.post_errors = 0
        self.reserved = 0
        self._answers: dict[str, _Answer] = {}

    def answer(self, response_id: str) -> "_Answer":
        """What the reporting tab saw of an answer so far (whichever of post and report comes first)."""
        state = self._answers.get(response_id)
        if state is None:
            state = self._answers[response_id] = _Answer()
        return state

    async def take_reports(self, answers: Any) -> None:
        """Feed the reporting tabs' first-chunk and done sightings to the waiting conversations."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                kind, response_id, at = await loop.run_in_executor(None, answers.get, True, 0.2)
            except queue.Empty:
                continue
            state = self.answer(response_id)
            if kind == "first":
                state.first_at = at
            else:
                state.done.set()

    async def create(self, url: str) -> tuple[str, str]:
        async with self.session.post(f"{url}/api/conversations") as resp:
            resp.raise_for_status()
            body = await resp.json()
            return body["id"], body["token"]

    async def converse(self, url: str, cid: str, token: str, until: float) -> None:
        """Post, wait for done, think, repeat until ``until``; time post → first delta."""
        auth = {"Authorization": f"Bearer {token}"}
        n = 0
        limit = self.config.answers
        while time.monotonic() < until:
            if limit is not None:
                if self.reserved >= limit:
                    break
                self.reserved += 1  # taken before the post: conversations post concurrently
            n += 1
            posted_at = time.time()
            body = {"content": f"{self.config.prompt} (#{n})", "max_tokens": self.config.max_tokens}
            async with self.session.post(f"{url}/api/conversations/{cid}/messages", json=body, headers=auth) as resp:
                if resp.status != 202:
                    self.post_errors += 1
                    if limit is not None:
                        self.reserved -= 1
                    await asyncio.sleep(0.5)
                    continue
                response_id = (await resp.json())["response_id"]
            self.posted += 1
            # The conversation's reporting tab (in a worker) says when the answer starts and ends: the
            # driver follows no stream of its own, so it adds no load the tabs do not see.
            state = self.answer(response_id)
            await state.done.wait()
            del self._answers[response_id]
            if state.first_at is not None:
                self.ttft.add((state.first_at - posted_at) * 1000)
            self.answers_done += 1
            if self.config.think_time:
                await asyncio.sleep(self.config.think_time)

    async def history_digests(self, url: str, cid: str, token: str) -> dict[str, str]:
        import hashlib

        async with self.session.get(
            f"{url}/api/conversations/{cid}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            resp.raise_for_status()
            messages = (await resp.json())["messages"]
        return {
            m["id"]: hashlib.sha256(m["content"].encode()).hexdigest()
            for m in messages
            if m["role"] == "assistant" and m.get("finish_reason")
        }


class _Answer:
    __slots__ = ("done", "first_at")

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.done = asyncio.Event()


async def run(config: Config, *, live: bool = True) -> dict[str, Any]:
    for url in config.urls:
        check_target(url, config.allow_remote)
    raise_open_files_limit()
    ctx = multiprocessing.get_context("spawn")
    progress, results, answers, stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    wall_start = time.monotonic()
    cpu_start = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        driver = Driver(config, session)
        conversations = [
            (config.urls[i % len(config.urls)], *await driver.create(config.urls[i % len(config.urls)]))
            for i in range(config.conversations)
        ]
        assignments: list[list[Assignment]] = [[] for _ in range(config.workers)]
        for i in range(config.clients):
            _, cid, token = conversations[i % len(conversations)]
            url = config.urls[i % len(config.urls)]  # tabs of one conversation spread over the nodes
            # The first tab of each conversation tells the driver when an answer starts and ends.
            assignments[i % config.workers].append((cid, token, url, i < len(conversations)))
        memory_before = _rss_kib(config.server_pids)
        procs = [
            ctx.Process(
                target=worker_main, args=(i, a, config.ramp_up, (progress, results, answers), stop), daemon=True
            )
            for i, a in enumerate(assignments)
        ]
        for proc in procs:
            proc.start()
        timeline = Timeline(time.monotonic())
        reporter = asyncio.create_task(_report(progress, timeline, config, live))
        # Traffic starts once every tab is connected (a tab connecting late would replay history and
        # count old chunks as slow ones), or when connecting is clearly stuck.
        await timeline.all_connected(config.clients, config.ramp_up + 30)
        await asyncio.sleep(0.5)
        memory_after = _rss_kib(config.server_pids)
        measure_start = timeline.measure_start = time.monotonic()
        timeline.until = until = measure_start + config.duration
        reports = asyncio.create_task(driver.take_reports(answers))
        drivers = []
        if config.scenario != "idle":
            steps = config.steps if config.scenario == "ramp" else 1
            step_seconds = config.duration / steps
            for i, (url, cid, token) in enumerate(conversations):
                delay = (i * steps // len(conversations)) * step_seconds
                drivers.append(asyncio.create_task(_later(delay, driver.converse(url, cid, token, until))))
        try:
            if drivers:  # they stop posting at the deadline (or at --answers) and finish their answer
                await asyncio.wait(drivers, timeout=config.duration + config.drain_timeout)
            else:
                await asyncio.sleep(config.duration)
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
            worker_results = [
                await asyncio.get_running_loop().run_in_executor(None, results.get, True, 60) for _ in procs
            ]
            reporter.cancel()
            reports.cancel()
            await asyncio.gather(reporter, reports, return_exceptions=True)
            for proc in procs:
                proc.join(10)
        measured = time.monotonic() - measure_start
        history = {cid: await driver.history_digests(url, cid, token) for url, cid, token in conversations}
    result = _summarise(
        config, driver, worker_results, history, measured, wall_start, cpu_start, [repr(e) for e in driver_errors]
    )
    result["timeline"] = timeline.points
    result["connections_held"] = max((p["connected"] for p in timeline.points), default=0)
    if config.scenario == "ramp":
        result["ramp"] = timeline.steps(config, len(conversations))
        sustained = [s for s in result["ramp"] if s["sustained"]]
        result["ramp_best"] = max(sustained, key=lambda s: s["chunks_per_second"]) if sustained else None
    if config.server_pids:
        result["server_memory"] = _memory_summary(memory_before, memory_after, result["connections_held"])
    return result


async def _later(delay: float, coro: Any) -> None:
    try:
        if delay:
            await asyncio.sleep(delay)
        await coro
    finally:
        coro.close()  # never awaited if cancelled during the delay


def _rss_kib(pids: tuple[int, ...]) -> dict[int, int]:
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


def _memory_summary(before: dict[int, int], after: dict[int, int], connections: int) -> dict[str, Any]:
    grown = sum(after.get(pid, 0) - kib for pid, kib in before.items())
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round(grown / connections, 2) if connections else None,
    }


class Timeline:
    """Per-second points merged from every worker: connections, chunks/s, latency percentiles."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.measure_start: float | None = None
        self.until: float | None = None
        self.points: list[dict[str, Any]] = []
        self._hists: list[list[int]] = []
        self._latest: dict[int, dict[str, Any]] = {}
        self._last_chunks = 0
        self._last_time = started
        self.changed = asyncio.Event()

    def add(self, updates: list[dict[str, Any]], now: float) -> dict[str, Any]:
        interval = LogHistogram()
        for update in updates:
            self._latest[update["worker"]] = update
            interval.merge(update["hist"])
        chunks = sum(u["chunks"] for u in self._latest.values())
        elapsed = max(now - self._last_time, 1e-6)
        point = {
            "t": round(now - (self.measure_start or now), 2) if self.measure_start else None,
            "connected": sum(u["connected"] for u in self._latest.values()),
            "chunks_per_second": round((chunks - self._last_chunks) / elapsed, 1),
            "p50_ms": interval.percentile(50),
            "p90_ms": interval.percentile(90),
            "p99_ms": interval.percentile(99),
            "anomalies": sum(u["anomalies"] for u in self._latest.values()),
        }
        self._last_chunks, self._last_time = chunks, now
        self.changed.set()
        if point["t"] is not None:
            self.points.append(point)
            self._hists.append(interval.counts)
        return point

    @property
    def connected(self) -> int:
        return sum(u["connected"] for u in self._latest.values())

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

    def steps(self, config: "Config", conversations: int) -> list[dict[str, Any]]:
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


async def _report(progress: Any, timeline: Timeline, config: Config, live: bool) -> None:
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


def _summarise(
    config: Config,
    driver: Driver,
    worker_results: list[dict[str, Any]],
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
        latency.extend(Series.from_json(result["latency"]))
        gaps.extend(Series.from_json(result["gaps"]))
        tabs.extend(result["tabs"])
        client_cpu += result["cpu_seconds"]
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
        "chunks_per_second": round(totals["chunks"] / measured, 1) if measured else None,
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
