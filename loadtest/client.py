"""One simulated browser tab: an SSE connection that checks every chunk and reconnects like EventSource."""

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.sse_parser import SSEParser
from loadtest.stats import Series


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Tab:
    """A client's view of its conversation, and every anomaly it saw."""

    conversation_id: str
    token: str
    base_url: str
    last_event_id: str = ""
    last_key: tuple[int, int] = (0, 0)
    expected: dict[str, int] = field(default_factory=dict)
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

    def on_event(self, event_type: str, data: str, event_id: str, latency: Series) -> None:
        key = _key(event_id) if event_id else self.last_key
        if event_type == "reset":
            self.resets += 1
            self.last_key = key
            return
        if key <= self.last_key:
            self.reordered += 1
            return
        self.last_key = key
        if event_type == "delta":
            body = json.loads(data)
            response_id, index = body["response_id"], body["index"]
            expected = self.expected.get(response_id, 0)
            if index < expected:
                self.duplicated += 1
                return
            if index > expected:
                self.lost += index - expected
            self.expected[response_id] = index + 1
            self.texts.setdefault(response_id, []).append(body["text"])
            self.chunks += 1
            latency.add(time.time() * 1000 - body["ts"])
        elif event_type == "done":
            self.done.add(json.loads(data)["response_id"])

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

    async def run(self, session: aiohttp.ClientSession, latency: Series) -> None:
        """Follow the stream until cancelled; reconnect with the cursor on any break, with backoff."""
        url = f"{self.base_url}/api/conversations/{self.conversation_id}/events"
        backoff = 0.1
        first = True
        while True:
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            if not first:
                self.reconnects += 1
            first = False
            try:
                async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    if resp.status != 200:
                        self.connect_errors += 1
                    else:
                        self.connected = True
                        backoff = 0.1
                        await self._read(resp, latency)
            except (aiohttp.ClientError, OSError, TimeoutError):
                if not self.connected:
                    self.connect_errors += 1
            finally:
                self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _read(self, resp: aiohttp.ClientResponse, latency: Series) -> None:
        parser = SSEParser()
        reader = resp.content
        while chunk := await reader.readany():
            self.bytes += len(chunk)
            for event in parser.feed(chunk):
                self.on_event(event.type, event.data, event.last_event_id, latency)
                self.last_event_id = event.last_event_id
