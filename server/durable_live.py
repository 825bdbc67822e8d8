"""Live reads of Durable Streams: long-poll and SSE, each woken through the node's one subscription
per stream (``Hub.watch_stream``, or for a conversation read as a stream its channel's feed).

A reader is watching before its first read, and re-arms before every read, so growth published
between a read and the wait still wakes it; a woken reader reads on from its own offset in the
stream itself, so a lost notification or a pub/sub reconnect costs nothing. An SSE reader holds at
most one read (``READ_BYTES``) while its client is slow: the next read waits for the write before it,
and a client that takes nothing for ``STREAMFAN_SEND_TIMEOUT_SECONDS`` is cut off (it resumes from
its last offset), as the native event stream does.
"""

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol

from aiohttp import web

from server.context import DURABLE, GATE, HUB, SETTINGS
from server.durable_feed import DurableFeed, DurableReader
from server.durable_http import CACHE, READ_BYTES, cursor, headers, may_read, missing
from server.durable_store import JSON, StreamGone, StreamRead
from server.errors import JSONError
from wire import durable
from wire.durable import DurableKeys

_LINES: Final = re.compile(rb"\r\n|\r|\n")
_UNBLOCKED_BYTES: Final = 60 * 1024
"""Below aiohttp's 64 KiB, a write returns without waiting on the socket (StreamWriter's drain)."""
_KEEPALIVE_SECONDS: Final = 15.0
"""A comment line this often while an SSE stream is quiet, so proxies do not time it out."""


class LiveSource(Protocol):
    """What a live read reads: a Durable Stream, or a conversation read as one."""

    def watch(self) -> AbstractAsyncContextManager[DurableReader]:
        """A reader woken whenever the source may have grown (subscribed and confirmed on entry)."""
        ...

    async def read(self, after: str) -> StreamRead:
        """What follows entry id ``after`` (``'+'``: the tail); a JSON 4xx, or ``StreamGone``,
        when it cannot be read."""
        ...


class StreamSource:
    """A Durable Stream, read as its request may read it."""

    __slots__ = ("_feed", "_keys", "_request")

    def __init__(self, request: web.Request, keys: DurableKeys) -> None:
        self._request, self._keys = request, keys
        self._feed: DurableFeed | None = None

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[DurableReader]:
        hub = self._request.app[HUB]
        reader = DurableReader()
        feed = self._feed = await hub.watch_stream(self._keys.channel.encode(), reader)
        try:
            yield reader
        finally:
            self._feed = None
            hub.unwatch_stream(feed, reader)

    async def _fetch(self, after: str) -> StreamRead | None:
        store, feed = self._request.app[DURABLE], self._feed
        if feed is None:
            return await store.read(self._keys, after, READ_BYTES)
        return await feed.shared_read(after, lambda: store.read(self._keys, after, READ_BYTES))

    async def read(self, after: str) -> StreamRead:
        got = await self._fetch(after)
        if got is None:
            raise missing(self._request, self._keys)
        may_read(self._request, self._keys, got.public)
        return got


@asynccontextmanager
async def _watching(request: web.Request, source: LiveSource) -> AsyncIterator[DurableReader]:
    """The source's reader, counted against the address' streams (a waiting reader holds a
    connection, as a stream does)."""
    gate = request.app[GATE]
    address = gate.client(request)
    limited = gate.limited(address)
    if limited:
        gate.streams_per_ip.enter(address)
    try:
        async with source.watch() as reader:
            yield reader
    finally:
        if limited:
            gate.streams_per_ip.leave(address)


async def long_poll(request: web.Request, source: LiveSource, after: str) -> web.StreamResponse:
    """Data after ``after`` as soon as there is some, or a 204 once the wait is over (at once at the
    end of a closed stream)."""
    seconds = request.app[SETTINGS].durable_long_poll_seconds
    async with _watching(request, source) as reader:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            reader.arm()
            got = await source.read(after)
            if after == "+":
                after = got.last  # now: the tail when the wait began
            elif got.messages:
                fields = headers(Content_Type=got.kind, Stream_Next_Offset=durable.offset_of(got.last))
                fields |= {"Stream-Cursor": cursor(request), "Cache-Control": CACHE}
                if got.up_to_date:
                    fields["Stream-Up-To-Date"] = "true"
                if got.ended:
                    fields["Stream-Closed"] = "true"
                return web.Response(body=got.body(), headers=fields)
            left = deadline - asyncio.get_running_loop().time()
            if got.ended or reader.closed or left <= 0 or not await reader.wait(left):
                fields = headers(Stream_Next_Offset=durable.offset_of(got.tail), Stream_Up_To_Date="true")
                fields |= {"Stream-Cursor": cursor(request), "Cache-Control": "no-store"}
                if got.ended:
                    fields["Stream-Closed"] = "true"
                return web.Response(status=204, headers=fields)


def _event(kind: bytes, payload: bytes) -> bytes:
    """One SSE event; every line of the payload its own ``data:`` line, so no byte of a message can
    end the event or start another (CR, LF and CRLF all split)."""
    lines = _LINES.split(payload)
    return b"event: " + kind + b"\n" + b"".join(b"data:" + line + b"\n" for line in lines) + b"\n"


def _data(got: StreamRead, encode: bool) -> bytes:
    if encode:
        return base64.b64encode(b"".join(got.messages))
    if got.kind == JSON:
        return got.body()
    return b"".join(got.messages).decode("utf-8", "replace").encode()


def _control(got: StreamRead, offset: str, stream_cursor: str) -> bytes:
    """The control event after each data event (or alone): where to resume, whether caught up,
    and at the end of a closed stream that it is closed (then without a cursor: nothing to poll)."""
    control: dict[str, object] = {"streamNextOffset": offset}
    if got.ended:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = stream_cursor
    if got.up_to_date:
        control["upToDate"] = True
    return _event(b"control", json.dumps(control, separators=(",", ":")).encode())


def sse_encoded(kind: str) -> bool:
    """Whether a stream's data events carry base64: every type but text and JSON (SSE is text)."""
    return not (kind.startswith("text/") or kind == JSON)


async def sse(request: web.Request, source: LiveSource, after: str) -> web.StreamResponse:
    """The stream from ``after`` as SSE: a data event per read, each followed by its control event,
    until the end of a closed stream, its deletion, the node's shutdown or ``STREAMFAN_DURABLE_SSE_SECONDS``."""
    deadline = asyncio.get_running_loop().time() + request.app[SETTINGS].durable_sse_seconds
    async with _watching(request, source) as reader:
        reader.arm()
        got = await source.read(after)  # a missing stream is still a JSON 404 here
        encode = sse_encoded(got.kind)
        fields = headers(Content_Type="text/event-stream", Cache_Control="no-cache", X_Accel_Buffering="no")
        if encode:
            fields["Stream-SSE-Data-Encoding"] = "base64"
        response = web.StreamResponse(headers=fields)
        await response.prepare(request)
        send = _Sender(response, request.app[SETTINGS].send_timeout_seconds, request.transport)
        try:
            await _tail(request, send, reader, source, got, encode, deadline)
        except ConnectionResetError:
            pass  # the client left: nothing more to send
        except TimeoutError:
            if request.transport is not None:  # takes nothing: cut off (it resumes from its offset)
                request.transport.abort()
        except (StreamGone, JSONError):
            pass  # deleted (or no longer readable): the client's reconnect is told why
        return response


class _Sender:
    """Writes to an SSE response, each within the send timeout (a ``TimeoutError`` past it)."""

    __slots__ = ("_response", "_seconds", "_transport")

    def __init__(self, response: web.StreamResponse, seconds: float, transport: asyncio.Transport | None) -> None:
        self._response, self._seconds, self._transport = response, seconds, transport

    async def __call__(self, data: bytes) -> None:
        if not data:
            return
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() + len(data) < _UNBLOCKED_BYTES:
            await self._response.write(data)  # cannot wait on the socket: no timer needed
            return
        async with asyncio.timeout(self._seconds):
            await self._response.write(data)


async def _tail(
    request: web.Request,
    send: _Sender,
    reader: DurableReader,
    source: LiveSource,
    got: StreamRead,
    encode: bool,
    deadline: float,
) -> None:
    """Send ``got``, then every read after it, until the stream's end or the response's."""
    loop = asyncio.get_running_loop()
    after = got.last  # where the read ended (offset=now: the tail)
    await send(_batch(request, got, encode, after, first=True))
    while not (got.ended or reader.closed):
        if got.up_to_date and not await _quiet_until_woken(send, reader, deadline):
            break
        if reader.closed or loop.time() >= deadline:
            break
        reader.arm()
        got = await source.read(after)
        after = got.last
        await send(_batch(request, got, encode, after, first=False))


def _batch(request: web.Request, got: StreamRead, encode: bool, after: str, *, first: bool) -> bytes:
    """What one read sends: its data and control events; the first read, or the end of a closed
    stream, sends a control event even with no data (where to resume, that it is caught up).
    Built once per read and cursor: a broadcast's readers share the read, and so its bytes."""
    if not (got.messages or first or got.ended):
        return b""
    key = (encode, first, cursor(request), after)
    frame = got.frames.get(key)
    if frame is None:
        control = _control(got, durable.offset_of(after), key[2])
        frame = got.frames[key] = _event(b"data", _data(got, encode)) + control if got.messages else control
    return frame


async def _quiet_until_woken(send: _Sender, reader: DurableReader, deadline: float) -> bool:
    """Wait for the stream to grow (True), with a comment line every ``_KEEPALIVE_SECONDS``; False
    once the response's lifetime is over."""
    loop = asyncio.get_running_loop()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return False
        if await reader.wait(min(left, _KEEPALIVE_SECONDS)):
            return True
        await send(b":\n\n")
