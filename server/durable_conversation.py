"""A conversation read as a Durable Stream: ``/api/conversations/{id}/stream`` (issue 25).

Any Durable Streams client follows an answer token by token and resumes by offset, with the
conversation's own credential (its token as ``Authorization: Bearer``, or the page's cookie): the
stream is the conversation's history, one JSON message per event (``{"id", "type": "delta",
"text"}``, ``{"id", "type": "user_message", ...}``, ``{"id", "type": "done", "finish_reason",
...}``), its offsets the events' ids encoded as the protocol's. Read only: catch-up, long-poll and
SSE, and HEAD; writing is the conversation API's. A conversation never closes (another message may
follow), and an offset the history no longer holds (trimmed by retention) is a 410.

Live reads wait on the conversation's own channel feed, beside its event-stream clients: the node
still holds one subscription per conversation, and a reader is woken by each event, re-reading the
history from its offset (so a missed event, or a reconnect, costs nothing).
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, cast

from aiohttp import web

from server import durable_live
from server.client_stream import ClientStream
from server.context import GATE, HUB, STORE
from server.durable_feed import DurableReader
from server.durable_http import headers, read_start
from server.durable_store import JSON, StreamRead
from server.errors import JSONError
from server.follower import Follower
from server.store import Reset
from wire import durable
from wire.events import EventId, EventType, format_event_id, parse_event_id
from wire.sse import frame_data

PATH: Final = "/api/conversations/{conversation_id}/stream"
_PAGE_EVENTS: Final = 256
"""Events per read at most (and at most the store's replay page of bytes)."""


class _WatcherStream:
    """What the feed asks of a follower's stream, for a reader that writes nothing itself."""

    __slots__ = ("_reader",)

    def __init__(self, reader: DurableReader) -> None:
        self._reader = reader

    @property
    def closed(self) -> bool:
        return self._reader.closed

    def close(self) -> None:
        self._reader.close()  # the node is shutting down

    def cut_off(self) -> None:
        self._reader.wake()  # the feed lost track: the reader reads the history again

    def heartbeat(self, now: float) -> None:
        pass  # the reader's own response keeps itself alive


class ConversationWatcher(Follower):
    """A Durable Streams reader among the conversation feed's followers: live from the start, it
    is woken by every event (or reset) instead of being written to."""

    __slots__ = ("reader",)

    def __init__(self, reader: DurableReader, position: EventId) -> None:
        super().__init__(cast(ClientStream, _WatcherStream(reader)), max_pending=0)
        self.reader = reader
        self.pending = None  # live: nothing to hold
        self.position = position  # where a gap fill after a reconnect starts for it

    def deliver(self, event_id: EventId, frame: bytes) -> None:
        self.reader.wake()

    def deliver_run(self, events: list[tuple[EventId, bytes]], data: bytes, chunk: bytes) -> None:
        self.reader.wake()

    def reset(self, head: EventId, frame: bytes) -> None:
        self.reader.wake()


def _message(event_id: EventId, frame: bytes) -> bytes:
    """An event as the stream's JSON message."""
    kind = frame[frame.index(b"\nevent: ") + 8 : frame.index(b"\ndata: ")].decode()
    data = frame_data(frame).decode()
    fields: dict[str, Any] = {"id": format_event_id(event_id), "type": kind}
    if kind == EventType.DELTA:
        fields["text"] = data
    else:
        fields |= json.loads(data)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


class ConversationSource:
    """A conversation's history as a Durable Stream's reads."""

    __slots__ = ("_conversation_id", "_request", "_watcher")

    def __init__(self, request: web.Request, conversation_id: str) -> None:
        self._request, self._conversation_id = request, conversation_id
        self._watcher: ConversationWatcher | None = None

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[DurableReader]:
        hub = self._request.app[HUB]
        watcher = self._watcher = ConversationWatcher(DurableReader(), (0, 0))
        feed = await hub.attach(self._conversation_id, watcher)
        try:
            yield watcher.reader
        finally:
            hub.detach(feed, watcher)

    async def read(self, after: str) -> StreamRead:
        store = self._request.app[STORE]
        if after == "+":  # now: the tail (a Reset, for a trimmed start, knows it too)
            tail = (await store.replay(self._conversation_id, "0-0", 1)).head
            return self._read(tail, tail, [])
        page = await store.replay(self._conversation_id, after, _PAGE_EVENTS)
        if isinstance(page, Reset):
            raise JSONError(410, "The history no longer holds this offset: read from offset=now.", code="gone")
        last = page.frames[-1][0] if page.frames else parse_event_id(after)
        messages = [_message(event_id, frame) for event_id, frame in page.frames]
        return self._read(page.head, last, messages)

    def _read(self, head: EventId, last: EventId, messages: list[bytes]) -> StreamRead:
        if self._watcher is not None:
            self._watcher.position = last
        return StreamRead(JSON, format_event_id(head), format_event_id(last), False, False, messages)


async def read(request: web.Request) -> web.StreamResponse:
    """GET: the conversation's history from an offset, caught up or live (long-poll, SSE)."""
    access = await request.app[GATE].conversation(request, request.app[STORE])
    source = ConversationSource(request, access.conversation_id)
    live = request.query.get("live")
    if live == "sse":
        return await durable_live.sse(request, source, read_start(request, live=True))
    if live == "long-poll":
        return await durable_live.long_poll(request, source, read_start(request, live=True))
    if live is not None:
        raise JSONError(400, "live must be long-poll or sse.")
    after = read_start(request, live=False)
    got = await source.read(after)
    end = durable.offset_of(got.last)
    fields = headers(Content_Type=JSON, Stream_Next_Offset=end, Cache_Control="private, no-cache")
    if got.up_to_date:
        fields["Stream-Up-To-Date"] = "true"
    if after != "+":
        fields["ETag"] = etag = f'"{access.conversation_id}:{durable.offset_of(after)}:{end}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=fields)
    return web.Response(body=got.body(), headers=fields)


async def head(request: web.Request) -> web.StreamResponse:
    access = await request.app[GATE].conversation(request, request.app[STORE])
    got = await ConversationSource(request, access.conversation_id).read("+")
    fields = headers(Content_Type=JSON, Stream_Next_Offset=durable.offset_of(got.tail), Cache_Control="no-store")
    return web.Response(headers=fields)
