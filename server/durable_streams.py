"""Durable Streams over HTTP (issue 25, in progress): ``/v1/stream/{path}``.

Create (PUT), append and close (POST, with ``Stream-Seq`` and idempotent producers checked and
written atomically by ``wire.durable.APPEND``), catch-up reads (GET, bounded in bytes, ETags),
metadata (HEAD) and delete; the live reads (long-poll, SSE) are ``server.durable_live``'s. Not yet:
per-stream read tokens, forks. Off unless ``STREAMFAN_DURABLE_STREAMS`` says ``keys`` (every
request presents an API key) or ``open``.
"""

import functools
import hashlib
import json
import time
import urllib.parse
from datetime import datetime

from aiohttp import web

from server import durable_live
from server.context import DURABLE, GATE, SETTINGS
from server.durable_http import (
    CACHE,
    DECIMAL,
    READ_BYTES,
    headers,
    may_read,
    missing,
    read_start,
    read_token,
    stream_keys,
    valid_path,
)
from server.durable_store import JSON, Fork
from server.errors import JSONError
from wire import durable

_DEFAULT_TYPE = "application/octet-stream"
_MAX_INTEGER = 2**53 - 1


def _media_type(value: str | None) -> str | None:
    """The media type of a Content-Type header, without parameters, lower-case (None: absent or empty)."""
    kind = (value or "").split(";", 1)[0].strip().lower()
    return kind or None


def _messages(kind: str, body: bytes, *, initial: bool) -> list[bytes]:
    """The body as stored messages: a JSON stream's value (an array: each element, one level), any
    other stream's body as it is."""
    if kind != JSON:
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
        if not DECIMAL.match(ttl) or int(ttl) > _MAX_INTEGER // 1000:
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
    if not DECIMAL.match(value) or int(value) > _MAX_INTEGER:
        raise JSONError(400, f"{name} must be a whole number up to 2^53-1.")
    return int(value)


def _flag(request: web.Request, name: str) -> bool:
    value = request.headers.get(name)
    if value is None or value.lower() == "false":
        return False
    if value.lower() != "true":
        raise JSONError(400, f"{name} must be true or false.")
    return True


def _producer(request: web.Request) -> tuple[str, int, int] | None:
    """``(Producer-Id, Producer-Epoch, Producer-Seq)``: all three or none."""
    given = [name for name in ("Producer-Id", "Producer-Epoch", "Producer-Seq") if name in request.headers]
    if not given:
        return None
    if len(given) < 3:
        raise JSONError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together.")
    if not request.headers["Producer-Id"]:
        raise JSONError(400, "Producer-Id must not be empty.")
    return request.headers["Producer-Id"], _whole(request, "Producer-Epoch"), _whole(request, "Producer-Seq")


async def _body(request: web.Request) -> bytes:
    """The request's body, up to ``STREAMFAN_DURABLE_MAX_BODY_BYTES`` (a 413 past it)."""
    limit = request.app[SETTINGS].durable_max_body_bytes
    return await request.clone(client_max_size=limit).read()


_STREAMS = "/v1/stream/"


def _fork(request: web.Request, kind: str | None) -> Fork | None:
    """The fork the request asks for (``Stream-Forked-From``, ``Stream-Fork-Offset`` and
    ``Stream-Fork-Sub-Offset``), or None for a stream of its own."""
    source = request.headers.get("Stream-Forked-From")
    offset = request.headers.get("Stream-Fork-Offset")
    sub = request.headers.get("Stream-Fork-Sub-Offset")
    if source is None:
        if offset is not None or sub is not None:
            raise JSONError(400, "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From.")
        return None
    path = urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    if not path.startswith(_STREAMS) or len(path) == len(_STREAMS):
        raise JSONError(400, f"Stream-Forked-From must name a stream under {_STREAMS}.")
    at = ""
    if offset == "-1":
        at = "0-0"
    elif offset is not None and offset != "now":
        at = durable.entry_id_of(offset) or ""
        if not at:
            raise JSONError(400, "Stream-Fork-Offset is not an offset this server gave.")
    if sub is not None and not DECIMAL.match(sub):
        raise JSONError(400, "Stream-Fork-Sub-Offset must be a whole number.")
    sub_offset = int(sub or "0")
    if sub_offset and offset is None:
        raise JSONError(400, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset.")
    ttl = request.headers.get("Stream-TTL", "")
    expires_at = request.headers.get("Stream-Expires-At", "")
    return Fork(valid_path(path[len(_STREAMS) :]), at, sub_offset, kind or "", ttl, expires_at)


async def create(request: web.Request) -> web.StreamResponse:
    """Create a stream, or a fork of one (its source's messages up to an offset, then its own)."""
    keys = stream_keys(request)
    request.app[GATE].take_post(request)
    given = _media_type(request.headers.get("Content-Type"))
    expiry = _expiry(request)
    closed, public = _flag(request, "Stream-Closed"), _flag(request, "Stream-Public")
    fork = _fork(request, given)
    body = await _body(request)
    kind = given or _DEFAULT_TYPE
    store = request.app[DURABLE]
    if fork is not None:
        initial = functools.partial(_messages, body=body, initial=True)
        made = await store.fork(keys, fork, expiry, initial, closed=closed, public=public)
    else:
        made = await store.create(keys, kind, expiry, _messages(kind, body, initial=True), closed=closed, public=public)
    if made.status == "conflict":
        raise JSONError(409, "A stream with another configuration exists at this path.")
    fields = headers(Content_Type=made.kind, Stream_Next_Offset=durable.offset_of(made.tail))
    fields["Stream-Read-Token"] = read_token(request, keys)
    if made.closed:
        fields["Stream-Closed"] = "true"
    if made.status == "created":
        fields["Location"] = str(request.url)
        return web.Response(status=201, headers=fields)
    return web.Response(status=200, headers=fields)


async def append(request: web.Request) -> web.StreamResponse:
    """Append the body (and with ``Stream-Closed: true``, close the stream after it, or alone)."""
    keys = stream_keys(request)
    request.app[GATE].take_post(request)
    close = _flag(request, "Stream-Closed")
    producer = _producer(request)
    body = await _body(request)
    kind = _media_type(request.headers.get("Content-Type"))
    if body and kind is None:
        raise JSONError(400, "An append needs the stream's Content-Type.")
    if not body and not close:
        raise JSONError(400, "An append needs a body.")
    messages = _messages(kind, body, initial=False) if body and kind else []
    got = await request.app[DURABLE].append(
        keys, kind or "", messages, stream_seq=request.headers.get("Stream-Seq", ""), producer=producer, close=close
    )
    status = got.status
    if status == "missing":
        raise JSONError(404, "No stream at this path.")
    if status == "closed":
        fields = {"Stream-Closed": "true", "Stream-Next-Offset": durable.offset_of(got.tail)}
        raise JSONError(409, "The stream is closed.", code="stream_closed", headers=fields)
    if status == "type":
        raise JSONError(409, "The Content-Type is not the stream's.")
    if status == "seq":
        raise JSONError(409, "Stream-Seq must be above the last one appended.")
    if status == "stale":
        raise JSONError(403, "A newer epoch of this producer writes here.", headers={"Producer-Epoch": got.detail})
    if status == "epoch_seq":
        raise JSONError(400, "A new producer epoch starts at Producer-Seq 0.")
    if status == "gap":
        expected = {"Producer-Expected-Seq": got.detail, "Producer-Received-Seq": str(producer[2] if producer else 0)}
        raise JSONError(409, "Producer-Seq skips ahead.", headers=expected)
    fields = headers(Stream_Next_Offset=durable.offset_of(got.tail))
    if got.closed:
        fields["Stream-Closed"] = "true"
    if producer is None:
        return web.Response(status=204, headers=fields)
    _, epoch, seq = producer
    if status == "duplicate":
        fields |= {"Producer-Epoch": str(epoch), "Producer-Seq": got.detail}
        return web.Response(status=204, headers=fields)
    fields |= {"Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}
    return web.Response(status=200 if messages else 204, headers=fields)


async def read(request: web.Request) -> web.StreamResponse:
    keys = stream_keys(request, write=False)
    live = request.query.get("live")
    if live == "sse":
        return await durable_live.sse(request, durable_live.StreamSource(request, keys), read_start(request, live=True))
    if live == "long-poll":
        source = durable_live.StreamSource(request, keys)
        return await durable_live.long_poll(request, source, read_start(request, live=True))
    if live is not None:
        raise JSONError(400, "live must be long-poll or sse.")
    after = read_start(request, live=False)
    got = await request.app[DURABLE].read(keys, after, READ_BYTES)
    if got is None:
        raise missing(request, keys)
    may_read(request, keys, got.public)
    fields = headers(Content_Type=got.kind, Stream_Next_Offset=durable.offset_of(got.last))
    if got.up_to_date:
        fields["Stream-Up-To-Date"] = "true"
    if got.ended:
        fields["Stream-Closed"] = "true"
    if after == "+":
        fields["Cache-Control"] = "no-store"
        return web.Response(body=got.body(), headers=fields)
    start = durable.offset_of(after)
    end = durable.offset_of(got.last)
    closed = ":closed" if got.ended else ""  # closing changes what a read at the tail answers
    etag = f'"{hashlib.sha256(keys.path.encode()).hexdigest()[:16]}:{start}:{end}{closed}"'
    fields |= {"ETag": etag, "Cache-Control": CACHE}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=fields)
    return web.Response(body=got.body(), headers=fields)


async def head(request: web.Request) -> web.StreamResponse:
    keys = stream_keys(request, write=False)
    meta = await request.app[DURABLE].meta(keys)
    if meta is None:
        raise missing(request, keys)
    may_read(request, keys, meta.public)
    fields = headers(Content_Type=meta.kind, Stream_Next_Offset=durable.offset_of(meta.tail), Cache_Control="no-store")
    if meta.ttl:
        fields["Stream-TTL"] = meta.ttl  # sliding: what is left after the last read or write
    if meta.expires_at:
        fields["Stream-Expires-At"] = meta.expires_at
    if meta.closed:
        fields["Stream-Closed"] = "true"
    return web.Response(headers=fields)


async def delete(request: web.Request) -> web.StreamResponse:
    keys = stream_keys(request)
    request.app[GATE].take_post(request)
    if not await request.app[DURABLE].delete(keys):
        raise JSONError(404, "No stream at this path.")
    return web.Response(status=204, headers=headers())
