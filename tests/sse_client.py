"""Test helpers: read an SSE response with the load tester's spec parser."""

import asyncio
import itertools
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.sse_parser import SSEEvent, SSEParser
from wire.events import AnswerTracker, parse_event_id


@dataclass
class Received:
    events: list[SSEEvent] = field(default_factory=list)
    retry_ms: int | None = None
    comments: int = 0
    closed: bool = False

    @property
    def ids(self) -> list[str]:
        return [e.last_event_id for e in self.events]

    def of_type(self, event_type: str) -> list[Any]:
        """The events' data: a delta's text, any other event's JSON."""
        return [e.data if e.type == "delta" else json.loads(e.data) for e in self.events if e.type == event_type]

    def text(self, response_id: str | None = None) -> str:
        """The deltas' text; with ``response_id``, of that answer only."""
        answers, parts = AnswerTracker(), []
        for event in self.events:
            answer = answers.answer_of(event.type, event.data)
            if event.type == "delta" and response_id in (None, answer):
                parts.append(event.data)
        return "".join(parts)


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
            try:
                chunk = await response.content.readany()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                chunk = b""  # the connection broke, as EventSource would see it
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
    keys = [parse_event_id(i) for i in ids]
    assert all(a < b for a, b in itertools.pairwise(keys)), ids


async def follow(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    cursor: str | None = None,
    within: float = 30.0,
) -> tuple[Received, int]:
    """Read until ``done`` like EventSource: reconnect with ``Last-Event-ID`` whenever the stream breaks.

    Returns everything received and how many reconnects it took.
    """
    received = Received()
    reconnects = -1
    async with asyncio.timeout(within):
        while not received.of_type("done"):
            reconnects += 1
            request_headers = dict(headers) if cursor is None else {**headers, "Last-Event-ID": cursor}
            try:
                async with session.get(url, headers=request_headers) as resp:
                    if resp.status != 200:
                        await asyncio.sleep(0.1)
                        continue
                    part = await read_events(resp, within=within)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
                continue
            received.events += part.events
            if part.events:
                cursor = part.events[-1].last_event_id
    return received, reconnects


def raw_event_stream(
    port: int, conversation_id: str, authorization: str, *, receive_buffer: int = 4096, **headers: str
) -> socket.socket:
    """A client that asks for the stream over a raw socket with a tiny window, and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    head = f"GET /api/conversations/{conversation_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
    sock.sendall(f"{head}{extra}\r\n".encode())
    return sock


async def node_metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    """A sample of a node's ``/metrics`` (what a test waits on instead of sleeping)."""
    async with session.get(f"{base}/metrics") as resp:
        match = re.search(rf"^{name} (\S+)$", await resp.text(), re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def wait_for_sockets(session: aiohttp.ClientSession, bases: list[str], count: int, within: float = 10) -> None:
    """Until the nodes at ``bases`` hold ``count`` open event streams between them."""
    async with asyncio.timeout(within):
        while sum([await node_metric(session, base, "streamfan_sockets_open") for base in bases]) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
