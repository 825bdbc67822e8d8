"""One simulated browser tab: an SSE connection that checks every chunk and reconnects like EventSource."""

import asyncio
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from loadtest.http1 import ChunkedDecoder
from loadtest.sse_parser import SSEParser
from loadtest.stats import Series
from support.backoff import Backoff
from wire.events import AnswerTracker, parse_event_id


@dataclass
class Tab:
    """A client's view of its conversation, and every anomaly it saw."""

    conversation_id: str
    token: str
    base_url: str
    last_event_id: str = ""
    last_key: tuple[int, int] = (0, 0)
    answers: AnswerTracker = field(default_factory=AnswerTracker)
    texts: dict[str, list[str]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    chunks: int = 0
    bytes: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    resets: int = 0
    reconnects: int = 0
    connect_errors: int = 0
    connected: bool = False
    timed_ms: tuple[float, float] = (0.0, math.inf)
    """Deltas published outside this window (ms since the epoch: from the warm-up's end to the
    duration's) are checked but not timed: neither latency nor gap samples."""
    gaps: Series | None = None
    """Where the time between consecutive chunks of one answer goes (ms), shared by a worker's tabs."""
    gap_from: tuple[str, float] = ("", 0.0)
    report: Callable[[str, str, float], None] | None = None
    """Set on one tab per conversation: told ("first" | "done", response id, wall time) as they come."""

    def on_event(self, event_type: str, data: str, event_id: str, latency: Series) -> None:
        key = parse_event_id(event_id) if event_id else self.last_key
        if event_type == "reset":
            self.resets += 1
            self.last_key = key
            return
        if key <= self.last_key:
            self.reordered += 1
            return
        self.last_key = key
        if event_type == "delta":
            # A delta is its answer's text; its time is the id's ms.
            response_id = self.answers.answer_of(event_type, data)
            if not response_id:
                self.lost += 1  # a delta with no answer started before it: the start was lost
                return
            first = response_id not in self.texts
            self.texts.setdefault(response_id, []).append(data)
            self.chunks += 1
            now = time.time()
            timed = self.timed_ms[0] <= key[0] < self.timed_ms[1]
            if timed:
                latency.add(now * 1000 - key[0])
            if self.gaps is not None:
                if timed and self.gap_from[0] == response_id:
                    self.gaps.add((now - self.gap_from[1]) * 1000)
                self.gap_from = (response_id, now)
            if first and self.report is not None:
                self.report("first", response_id, now)
        elif event_type in ("user_message", "regenerate"):
            self.answers.answer_of(event_type, data)
        elif event_type == "done":
            following = self.answers.current
            response_id = self.answers.answer_of(event_type, data)
            seen = len(self.texts.get(response_id, ()))
            if response_id == following:  # it saw the answer start: it must have seen every delta once
                chunks = json.loads(data)["chunks"]
                self.lost += max(0, chunks - seen)
                self.duplicated += max(0, seen - chunks)
            self.done.add(response_id)
            if self.report is not None:
                self.report("done", response_id, time.time())

    def digests(self) -> dict[str, str]:
        """sha256 of the text of every answer this tab saw finish."""
        return {rid: hashlib.sha256("".join(self.texts.get(rid, [])).encode()).hexdigest() for rid in self.done}

    def summary(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "resets": self.resets,
            "reconnects": self.reconnects,
            "connect_errors": self.connect_errors,
            "answers": self.digests(),
        }

    async def run(self, latency: Series) -> None:
        """Follow the stream until cancelled; reconnect with the cursor on any break, with backoff."""
        split = urlsplit(self.base_url)
        host, port = split.hostname or "127.0.0.1", split.port or 80
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=0.1, cap=2.0)
        first = True
        while True:
            if not first:
                self.reconnects += 1
            first = False
            ended: asyncio.Future[bool] = loop.create_future()
            request = (
                f"GET {split.path}/api/conversations/{self.conversation_id}/events HTTP/1.1\r\n"
                f"Host: {split.netloc}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {self.token}\r\n"
                + (f"Last-Event-ID: {self.last_event_id}\r\n" if self.last_event_id else "")
                + "\r\n"
            ).encode()
            transport = None
            try:
                transport, _ = await loop.create_connection(
                    functools.partial(_StreamProtocol, self, latency, request, ended), host, port
                )
                if await ended:
                    backoff.reset()
            except OSError:
                self.connect_errors += 1
            finally:
                self.connected = False
                if transport is not None:
                    transport.close()
            await asyncio.sleep(backoff.next_delay())


class _StreamProtocol(asyncio.Protocol):
    """An SSE response read straight off the socket: no task wake-up per event, so one client process
    can follow thousands of streams. Decodes HTTP/1.1 chunked framing, then the spec parser takes over.
    """

    def __init__(self, tab: Tab, latency: Series, request: bytes, ended: "asyncio.Future[bool]") -> None:
        self.tab, self.latency, self.request, self.ended = tab, latency, request, ended
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.decoder = ChunkedDecoder()
        self.parser = SSEParser()
        self.ok = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end == -1:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.") else b""
            if status != b"200":
                self.tab.connect_errors += 1
                self.transport.close()
                return
            self.ok = self.tab.connected = True
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            self.in_body = True
        self.tab.bytes += len(data)
        if not self.chunked:
            self._feed(data)
            return
        for payload in self.decoder.feed(data):
            self._feed(payload)
        if self.decoder.ended:
            self.transport.close()

    def _feed(self, payload: bytes) -> None:
        tab, latency = self.tab, self.latency
        for event in self.parser.feed(payload):
            tab.on_event(event.type, event.data, event.last_event_id, latency)
            tab.last_event_id = event.last_event_id

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(self.ok)
