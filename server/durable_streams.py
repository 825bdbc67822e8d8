"""Durable Streams over HTTP (issue 25, in progress): ``/v1/stream/{path}``.

Longer than 300 lines: the protocol's handlers share its header, body and offset rules; the live
reads move to their own module when SSE joins long-poll.

Served: create (PUT), append (POST, with ``Stream-Seq`` and idempotent producers checked and
written atomically by ``wire.durable.APPEND``), catch-up reads (GET, bounded in bytes, ETags),
long-poll reads (woken through the node's one subscription per stream: ``server.durable_feed``),
metadata (HEAD) and delete. Not yet: SSE reads (a 400 for now), per-stream read tokens, closing a
stream, forks. Off unless ``STREAMFAN_DURABLE_STREAMS`` says ``keys``
(every request presents an API key) or ``open``.
"""

import asyncio
import hashlib
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.context import GATE, HUB, REDIS, SETTINGS
from server.dialects.openai import has_key
from server.durable_feed import DurableReader
from server.errors import JSONError
from wire import durable
from wire.durable import DurableKeys

PATH = "/v1/stream/{path:.+}"
_DEFAULT_TYPE = "application/octet-stream"
_JSON = "application/json"
_DECIMAL = re.compile(r"\A(0|[1-9][0-9]*)\Z")
_MAX_INTEGER = 2**53 - 1
_READ_BYTES = 256 * 1024
"""Most bytes one catch-up response carries (at least one message): the client reads on from its
``Stream-Next-Offset``."""
_CACHE = "private, max-age=60, stale-while-revalidate=300"
"""Streams may hold what only their readers may see: cacheable by the browser, not by shared caches."""


def _stream(request: web.Request) -> DurableKeys:
    mode = request.app[SETTINGS].durable_streams
    if mode == "keys" and not has_key(request):
        raise JSONError(401, "Durable Streams need one of the server's API keys (Authorization: Bearer).")
    path = request.match_info["path"]
    if len(path.encode()) > durable.MAX_PATH_BYTES or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise JSONError(400, "The stream path is too long or holds control characters.")
    return DurableKeys(path)


def _media_type(value: str | None) -> str | None:
    """The media type of a Content-Type header, without parameters, lower-case (None: absent or empty)."""
    kind = (value or "").split(";", 1)[0].strip().lower()
    return kind or None


def _messages(kind: str, body: bytes, *, initial: bool) -> list[bytes]:
    """The body as stored messages: a JSON stream's value (an array: each element, one level), any
    other stream's body as it is."""
    if kind != _JSON:
        return [body] if body else []
    if initial and not body.strip():
        return []
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise JSONError(400, "The body is not valid JSON.") from None
    values = value if isinstance(value, list) else [value]
    if not values and not initial:
        raise JSONError(400, "An empty JSON array appends nothing.")
    return [json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode() for v in values]


def _expiry(request: web.Request) -> tuple[str, str, str]:
    """``Stream-TTL`` and ``Stream-Expires-At`` as given, and the expiry in ms from now ('' none)."""
    ttl = request.headers.get("Stream-TTL", "")
    expires_at = request.headers.get("Stream-Expires-At", "")
    if ttl and expires_at:
        raise JSONError(400, "Give Stream-TTL or Stream-Expires-At, not both.")
    if ttl:
        if not _DECIMAL.match(ttl) or int(ttl) > _MAX_INTEGER // 1000:
            raise JSONError(400, "Stream-TTL must be a whole number of seconds.")
        return ttl, "", str(int(ttl) * 1000) if int(ttl) else "1"
    if expires_at:
        try:
            when = datetime.fromisoformat(expires_at)
        except ValueError:
            raise JSONError(400, "Stream-Expires-At must be an RFC 3339 time.") from None
        if when.tzinfo is None:
            raise JSONError(400, "Stream-Expires-At needs a time zone.")
        left_ms = int((when.timestamp() - time.time()) * 1000)
        return "", expires_at, str(max(1, left_ms))
    return "", "", ""


def _whole(request: web.Request, name: str) -> int:
    value = request.headers[name]
    if not _DECIMAL.match(value) or int(value) > _MAX_INTEGER:
        raise JSONError(400, f"{name} must be a whole number up to 2^53-1.")
    return int(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _body(request: web.Request) -> bytes:
    """The request's body, up to ``STREAMFAN_DURABLE_MAX_BODY_BYTES`` (a 413 past it)."""
    limit = request.app[SETTINGS].durable_max_body_bytes
    return await request.clone(client_max_size=limit).read()


def _headers(**fields: str) -> dict[str, str]:
    """Every response's own headers: Durable Streams are read by fetch (CORS), never embedded."""
    return {"Cross-Origin-Resource-Policy": "same-origin", **{k.replace("_", "-"): v for k, v in fields.items()}}


async def create(request: web.Request) -> web.StreamResponse:
    keys = _stream(request)
    request.app[GATE].take_post(request)
    kind = _media_type(request.headers.get("Content-Type")) or _DEFAULT_TYPE
    ttl, expires_at, expiry_ms = _expiry(request)
    messages = _messages(kind, await _body(request), initial=True)
    script = request.app[REDIS].register_script(durable.CREATE)
    reply = await script(keys=list(keys.all), args=[kind, ttl, expires_at, expiry_ms, *messages])
    status = _text(reply[0])
    if status == "conflict":
        raise JSONError(409, "A stream with another configuration exists at this path.")
    headers = _headers(Content_Type=kind, Stream_Next_Offset=durable.offset_of(_text(reply[1])))
    if status == "created":
        headers["Location"] = str(request.url)
        return web.Response(status=201, headers=headers)
    return web.Response(status=200, headers=headers)


async def append(request: web.Request) -> web.StreamResponse:
    keys = _stream(request)
    request.app[GATE].take_post(request)
    kind = _media_type(request.headers.get("Content-Type"))
    if kind is None:
        raise JSONError(400, "An append needs the stream's Content-Type.")
    producer = [name for name in ("Producer-Id", "Producer-Epoch", "Producer-Seq") if name in request.headers]
    if producer and len(producer) < 3:
        raise JSONError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together.")
    producer_id, epoch, seq = "", 0, 0
    if producer:
        producer_id = request.headers["Producer-Id"]
        if not producer_id:
            raise JSONError(400, "Producer-Id must not be empty.")
        epoch, seq = _whole(request, "Producer-Epoch"), _whole(request, "Producer-Seq")
    body = await _body(request)
    if not body:
        raise JSONError(400, "An append needs a body.")
    messages = _messages(kind, body, initial=False)
    script = request.app[REDIS].register_script(durable.APPEND)
    stream_seq = request.headers.get("Stream-Seq", "")
    reply = await script(keys=list(keys.all), args=[kind, stream_seq, producer_id, epoch, seq, *messages])
    status = _text(reply[0])
    if status == "missing":
        raise JSONError(404, "No stream at this path.")
    if status == "type":
        raise JSONError(409, "The Content-Type is not the stream's.")
    if status == "seq":
        raise JSONError(409, "Stream-Seq must be above the last one appended.")
    if status == "stale":
        raise JSONError(403, "A newer epoch of this producer writes here.", headers={"Producer-Epoch": _text(reply[1])})
    if status == "epoch_seq":
        raise JSONError(400, "A new producer epoch starts at Producer-Seq 0.")
    if status == "gap":
        headers = {"Producer-Expected-Seq": _text(reply[1]), "Producer-Received-Seq": str(seq)}
        raise JSONError(409, "Producer-Seq skips ahead.", headers=headers)
    headers = _headers(Stream_Next_Offset=durable.offset_of(_text(reply[1])))
    if status == "duplicate":
        headers |= {"Producer-Epoch": str(epoch), "Producer-Seq": _text(reply[2])}
        return web.Response(status=204, headers=headers)
    if producer:
        headers |= {"Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}
        return web.Response(status=200, headers=headers)
    return web.Response(status=204, headers=headers)


def _after(request: web.Request, *, required: bool) -> str:
    """The entry id a read starts after (``'+'``: the tail, for ``offset=now``)."""
    offset = request.query.get("offset")
    if offset is None and required:
        raise JSONError(400, "A live read needs an offset.")
    if offset is None or offset == "-1":
        return "0-0"
    if offset == "now":
        return "+"
    entry = durable.entry_id_of(offset)
    if entry is None:
        raise JSONError(400, "The offset is not one this server gave.")
    return entry


class _Read:
    """One read of a stream: its content type, tail, where it ended and the messages it got."""

    __slots__ = ("kind", "last", "messages", "tail")

    def __init__(self, reply: list[Any]) -> None:
        self.kind, self.tail, self.last = _text(reply[0]), _text(reply[2]), _text(reply[3])
        self.messages: list[bytes] = [m if isinstance(m, bytes) else str(m).encode() for m in reply[4:]]

    def body(self) -> bytes:
        return b"[" + b",".join(self.messages) + b"]" if self.kind == _JSON else b"".join(self.messages)


async def _read_after(request: web.Request, keys: DurableKeys, after: str) -> _Read:
    reply = await request.app[REDIS].register_script(durable.READ)(keys=list(keys.all), args=[after, _READ_BYTES])
    if reply is None:
        raise JSONError(404, "No stream at this path.")
    return _Read(reply)


_CURSOR_EPOCH = datetime(2024, 10, 9, tzinfo=UTC).timestamp()
_CURSOR_SECONDS = 20


def _cursor(request: web.Request) -> str:
    """The protocol's collapsing cursor: the current 20 s interval, always above the client's own
    (with 1 to 180 intervals of jitter when the client is at or past it)."""
    interval = int((time.time() - _CURSOR_EPOCH) // _CURSOR_SECONDS)
    given = request.query.get("cursor", "")
    if _DECIMAL.match(given) and int(given) >= interval:
        return str(int(given) + secrets.randbelow(180) + 1)
    return str(interval)


async def _long_poll(request: web.Request, keys: DurableKeys, after: str) -> web.StreamResponse:
    """Data after ``after`` as soon as there is some, or a 204 once the wait is over."""
    hub, settings, gate = request.app[HUB], request.app[SETTINGS], request.app[GATE]
    address = gate.client(request)
    limited = gate.limited(address)
    if limited:
        gate.streams_per_ip.enter(address)  # a waiting reader holds a connection, as a stream does
    try:
        return await _wait_for_data(request, keys, after, hub, settings.durable_long_poll_seconds)
    finally:
        if limited:
            gate.streams_per_ip.leave(address)


async def _wait_for_data(
    request: web.Request, keys: DurableKeys, after: str, hub: Any, seconds: float
) -> web.StreamResponse:
    reader = DurableReader()
    feed = await hub.watch_stream(keys.channel.encode(), reader)  # confirmed: no growth is missed
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            reader.arm()
            got = await _read_after(request, keys, after)
            if after == "+":
                after = got.last  # now: the tail when the wait began
            elif got.messages:
                headers = _headers(Content_Type=got.kind, Stream_Next_Offset=durable.offset_of(got.last))
                headers |= {"Stream-Cursor": _cursor(request), "Cache-Control": _CACHE}
                if got.last == got.tail:
                    headers["Stream-Up-To-Date"] = "true"
                return web.Response(body=got.body(), headers=headers)
            left = deadline - asyncio.get_running_loop().time()
            if reader.closed or left <= 0 or not await reader.wait(left):
                headers = _headers(Stream_Next_Offset=durable.offset_of(got.tail), Stream_Up_To_Date="true")
                headers |= {"Stream-Cursor": _cursor(request), "Cache-Control": "no-store"}
                return web.Response(status=204, headers=headers)
    finally:
        hub.unwatch_stream(feed, reader)


async def read(request: web.Request) -> web.StreamResponse:
    keys = _stream(request)
    live = request.query.get("live")
    if live == "sse":
        raise JSONError(400, "SSE reads of Durable Streams are not served yet: use long-poll.", code="unsupported")
    if live == "long-poll":
        return await _long_poll(request, keys, _after(request, required=True))
    if live is not None:
        raise JSONError(400, "live must be long-poll or sse.")
    after = _after(request, required=False)
    got = await _read_after(request, keys, after)
    kind, tail, last = got.kind, got.tail, got.last
    body = got.body()
    headers = _headers(Content_Type=kind, Stream_Next_Offset=durable.offset_of(last))
    if last == tail:
        headers["Stream-Up-To-Date"] = "true"
    if after == "+":
        headers["Cache-Control"] = "no-store"
        return web.Response(body=body, headers=headers)
    start = durable.offset_of(after)
    etag = f'"{hashlib.sha256(keys.path.encode()).hexdigest()[:16]}:{start}:{durable.offset_of(last)}"'
    headers |= {"ETag": etag, "Cache-Control": _CACHE}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


async def head(request: web.Request) -> web.StreamResponse:
    keys = _stream(request)
    reply = await request.app[REDIS].register_script(durable.META)(keys=list(keys.all))
    if reply is None:
        raise JSONError(404, "No stream at this path.")
    kind, tail, ttl, expires_at, left_ms = (_text(value) for value in reply)
    headers = _headers(Content_Type=kind, Stream_Next_Offset=durable.offset_of(tail), Cache_Control="no-store")
    if ttl and int(left_ms) > 0:
        headers["Stream-TTL"] = str(-(-int(left_ms) // 1000))  # what is left, in whole seconds
    if expires_at:
        headers["Stream-Expires-At"] = expires_at
    return web.Response(headers=headers)


async def delete(request: web.Request) -> web.StreamResponse:
    keys = _stream(request)
    request.app[GATE].take_post(request)
    if not await request.app[REDIS].register_script(durable.DELETE)(keys=list(keys.all)):
        raise JSONError(404, "No stream at this path.")
    return web.Response(status=204)
