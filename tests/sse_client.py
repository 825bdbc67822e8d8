"""Test helpers: read an SSE response with the load tester's spec parser."""

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.sse_parser import SSEEvent, SSEParser


@dataclass
class Received:
    events: list[SSEEvent] = field(default_factory=list)
    retry_ms: int | None = None
    comments: int = 0
    closed: bool = False

    @property
    def ids(self) -> list[str]:
        return [e.last_event_id for e in self.events]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.type == event_type]

    def text(self, response_id: str | None = None) -> str:
        return "".join(d["text"] for d in self.of_type("delta") if response_id in (None, d["response_id"]))


def is_done(event: SSEEvent) -> bool:
    return event.type == "done"


async def read_events(
    response: aiohttp.ClientResponse,
    *,
    until: Callable[[SSEEvent], bool] = is_done,
    count: int | None = None,
    within: float = 10.0,
) -> Received:
    """Read events until ``until`` matches (or ``count`` events, or the stream ends)."""
    parser = SSEParser()
    received = Received()
    async with asyncio.timeout(within):
        while True:
            chunk = await response.content.readany()
            if not chunk:
                received.closed = True
                break
            stop = False
            for event in parser.feed(chunk):
                received.events.append(event)
                if until(event) or (count is not None and len(received.events) >= count):
                    stop = True
                    break
            if stop:
                break
    received.retry_ms = parser.retry_ms
    received.comments = parser.comments
    return received


def assert_strictly_increasing(ids: list[str]) -> None:
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert all(a < b for a, b in itertools.pairwise(keys)), ids
