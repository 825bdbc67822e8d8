"""``python -m loadtest.durable``: Durable Streams traffic, with the conversations' verdict.

Writers append JSON messages ``{"w", "n", "t"}`` over HTTP (each an idempotent producer, so a
retried append is never a duplicate); readers tail every stream, split between SSE and long-poll,
resuming from their last offset whenever a response ends. Each reader checks that it got every
writer's messages once and in order, and a final catch-up read checks what the streams hold. Exits
1 if anything was lost, doubled or reordered. Loopback targets only unless ``--allow-remote``.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.config import check_target
from loadtest.sse_parser import SSEParser
from loadtest.stats import Series
from loadtest.tabs import raise_open_files_limit

MODES = ("sse", "long-poll")


@dataclass
class Tally:
    """What one reader saw of each writer: the next ``n`` it expects, and the gaps it skipped."""

    expected: dict[int, int] = field(default_factory=dict)
    skipped: set[tuple[int, int]] = field(default_factory=set)
    messages: int = 0
    duplicated: int = 0
    reordered: int = 0

    def see(self, message: dict[str, Any], latency: Series) -> None:
        writer, n = message["w"], message["n"]
        expected = self.expected.get(writer, 0)
        self.messages += 1
        latency.add(time.time() * 1000 - message["t"])
        if n == expected:
            self.expected[writer] = n + 1
        elif n > expected:
            self.skipped.update((writer, k) for k in range(expected, n))
            self.expected[writer] = n + 1
        elif (writer, n) in self.skipped:
            self.skipped.discard((writer, n))
            self.reordered += 1
        else:
            self.duplicated += 1

    def lost(self, written: dict[int, int]) -> int:
        return len(self.skipped) + sum(max(0, count - self.expected.get(w, 0)) for w, count in written.items())

    def caught_up(self, written: dict[int, int]) -> bool:
        return all(self.expected.get(w, 0) >= count for w, count in written.items())


class Run:
    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args, self.session = args, session
        self.auth = {"Authorization": f"Bearer {args.key}"} if args.key else {}
        self.written: dict[str, dict[int, int]] = {}
        self.latency = Series()
        self.errors = 0
        self.stopping = False
        self.progress = asyncio.Event()
        """Set whenever a reader got messages (the drain waits on it)."""

    def url(self, stream: int) -> str:
        return f"{self.args.url}/v1/stream/loadtest-{self.args.run_id}/{stream}"

    async def write(self, stream: int, writer: int, until: float) -> None:
        """Appends at ``--rate`` per second until ``until``, each retried until it lands."""
        counts = self.written.setdefault(self.url(stream), {})
        headers = {**self.auth, "Content-Type": "application/json", "Producer-Id": f"w{writer}", "Producer-Epoch": "0"}
        n = 0
        while time.monotonic() < until:
            body = json.dumps({"w": writer, "n": n, "t": time.time() * 1000})
            while True:
                try:
                    async with self.session.post(
                        self.url(stream), data=body, headers={**headers, "Producer-Seq": str(n)}
                    ) as response:
                        if response.status in (200, 204):
                            break
                        self.errors += 1
                except aiohttp.ClientError:
                    self.errors += 1
                await asyncio.sleep(0.05)
            n += 1
            counts[writer] = n
            await asyncio.sleep(1 / self.args.rate)

    async def read(self, stream: int, mode: str, tally: Tally) -> None:
        """Tails the stream in ``mode`` until every writer's last message arrived after the stop."""
        offset, url = "-1", self.url(stream)
        while not (self.stopping and tally.caught_up(self.written.get(url, {}))):
            try:
                params = {"offset": offset, "live": mode}
                async with self.session.get(url, params=params, headers=self.auth) as response:
                    if response.status == 204:
                        offset = response.headers["Stream-Next-Offset"]
                    elif response.status != 200:
                        self.errors += 1
                        await asyncio.sleep(0.1)
                    elif mode == "long-poll":
                        for message in await response.json(content_type=None):
                            tally.see(message, self.latency)
                        offset = response.headers["Stream-Next-Offset"]
                        self.progress.set()
                    else:
                        offset = await self._sse(response, tally, offset, url)
            except (TimeoutError, aiohttp.ClientError):
                self.errors += 1
                await asyncio.sleep(0.1)

    async def _sse(self, response: aiohttp.ClientResponse, tally: Tally, offset: str, url: str) -> str:
        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                if event.type == "data":
                    for message in json.loads(event.data):
                        tally.see(message, self.latency)
                    self.progress.set()
                elif event.type == "control":
                    offset = json.loads(event.data)["streamNextOffset"]
            if self.stopping and tally.caught_up(self.written.get(url, {})):
                break
        return offset

    async def stored(self, stream: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        offset = "-1"
        while True:
            async with self.session.get(self.url(stream), params={"offset": offset}, headers=self.auth) as response:
                items += await response.json(content_type=None)
                offset = response.headers["Stream-Next-Offset"]
                if response.headers.get("Stream-Up-To-Date") == "true":
                    return items


async def run(args: argparse.Namespace) -> dict[str, Any]:
    check_target(args.url, args.allow_remote)
    raise_open_files_limit()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        load = Run(args, session)
        for stream in range(args.streams):
            headers = {**load.auth, "Content-Type": "application/json"}
            async with session.put(load.url(stream), headers=headers) as response:
                if response.status not in (200, 201):
                    raise SystemExit(f"loadtest.durable: creating a stream answered {response.status}")
        tallies = [
            (stream, MODES[i % len(MODES)] if args.live == "both" else args.live, Tally())
            for stream in range(args.streams)
            for i in range(args.readers)
        ]
        readers = [asyncio.create_task(load.read(stream, mode, tally)) for stream, mode, tally in tallies]
        await asyncio.sleep(1.0)  # the readers are waiting before the first append
        started = time.monotonic()
        until = started + args.duration
        writers = [load.write(stream, w, until) for stream in range(args.streams) for w in range(args.writers)]
        await asyncio.gather(*writers)
        measured = time.monotonic() - started
        load.stopping = True
        drained = time.monotonic() + args.drain_timeout
        while not all(tally.caught_up(load.written.get(load.url(stream), {})) for stream, _, tally in tallies):
            load.progress.clear()
            try:
                await asyncio.wait_for(load.progress.wait(), max(0.0, drained - time.monotonic()))
            except TimeoutError:
                break
        for task in readers:  # a long-poll may be waiting for more: nothing more will come
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        pending = [
            task
            for task, (stream, _, tally) in zip(readers, tallies, strict=True)
            if not tally.caught_up(load.written.get(load.url(stream), {}))
        ]
        lost = duplicated = reordered = delivered = 0
        for stream, _, tally in tallies:
            written = load.written.get(load.url(stream), {})
            lost += tally.lost(written)
            duplicated, reordered = duplicated + tally.duplicated, reordered + tally.reordered
            delivered += tally.messages
        appended = sum(sum(counts.values()) for counts in load.written.values())
        stored_ok = True
        for stream in range(args.streams):
            items = await load.stored(stream)
            expected = sorted(
                (w, n) for w, count in load.written.get(load.url(stream), {}).items() for n in range(count)
            )
            stored_ok = (
                stored_ok and sorted((m["w"], m["n"]) for m in items) == expected and len(items) == len(expected)
            )
    ok = lost == duplicated == reordered == 0 and stored_ok and not pending and appended > 0
    return {
        "ok": ok,
        "streams": args.streams,
        "readers": args.streams * args.readers,
        "appended": appended,
        "appends_per_second": round(appended / measured, 1),
        "delivered": delivered,
        "deliveries_per_second": round(delivered / measured, 1),
        "latency_ms": load.latency.summary(),
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
        "stored_match": stored_ok,
        "stuck_readers": len(pending),
        "errors": load.errors,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.durable", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="a node or the balancer")
    p.add_argument("--key", default="", help="an API key (STREAMFAN_DURABLE_STREAMS=keys)")
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--writers", type=int, default=1, help="writers per stream")
    p.add_argument("--readers", type=int, default=10, help="readers per stream")
    p.add_argument("--live", choices=(*MODES, "both"), default="both", help="the readers' live mode")
    p.add_argument("--rate", type=float, default=20.0, help="appends per second per writer")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--run-id", default=str(int(time.time())), help="names this run's streams")
    p.add_argument("--allow-remote", action="store_true")
    args = p.parse_args(argv)
    if not (0 < args.streams * (args.readers + args.writers) <= 20_000 and 0 < args.duration <= 3600 and args.rate > 0):
        p.error("bounded by design: at most 20000 readers and writers in all, 3600 s, a positive rate")
    args.url = args.url.rstrip("/")
    return args


def main(argv: list[str] | None = None) -> None:
    result = asyncio.run(run(parse_args(argv)))
    print(json.dumps(result, indent=2))
    print("OK: nothing lost, doubled or reordered" if result["ok"] else "FAILED", file=sys.stderr)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
