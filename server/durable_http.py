"""What every Durable Streams request shares: the stream it names and who may touch it, offsets,
the protocol's headers (its own, CORS, caching) and its collapsing cursor.

Access (``STREAMFAN_DURABLE_STREAMS``): ``open`` lets anyone do anything (a trusted network). With
``keys``, creating, appending, closing and deleting present one of ``STREAMFAN_API_KEYS``; reading
(GET, HEAD) presents an API key or the stream's own read token (``Stream-Read-Token``, answered to
its creation), unless the stream was created with ``Stream-Public: true``.

Durable Streams are read by ``fetch`` from any origin (their clients run in other sites' pages), so
their responses allow every origin, without credentials: access is by a bearer token the page must
already hold (``Authorization``), never by a cookie the browser would attach on its own, so a
foreign page can read nothing it could not read anyway.
"""

import functools
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from server.context import GATE, SETTINGS
from server.dialects.openai import has_key
from server.durable_store import ForkRefused, StreamGone
from server.errors import Handler, JSONError
from wire import durable
from wire.durable import DurableKeys

PATH: Final = "/v1/stream/{path:.+}"
DECIMAL: Final = re.compile(r"\A(0|[1-9][0-9]*)\Z")
READ_BYTES: Final = 256 * 1024
"""Most bytes one read carries (at least one message): a catch-up client reads on from its
``Stream-Next-Offset``; an SSE reader gets one data event per read."""
CACHE: Final = "private, max-age=60, stale-while-revalidate=300"
"""Streams may hold what only their readers may see: cacheable by the browser, not by shared caches."""

_EXPOSED = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, Stream-Expires-At, "
    "Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, "
    "Stream-Read-Token, ETag, Location, Content-Type"
)
_ALLOWED = (
    "Authorization, Content-Type, If-None-Match, Stream-TTL, Stream-Expires-At, Stream-Seq, Stream-Closed, "
    "Stream-Public, Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset, "
    "Producer-Id, Producer-Epoch, Producer-Seq"
)
_CURSOR_EPOCH: Final = datetime(2024, 10, 9, tzinfo=UTC).timestamp()
_CURSOR_SECONDS: Final = 20


def stream_keys(request: web.Request, *, write: bool = True) -> DurableKeys:
    """The stream the request names, once the request may write to it (``write``) or may try to
    read it (``may_read`` then says whether it may without the stream being public)."""
    if write and not writer(request):
        raise JSONError(
            401,
            "Writing Durable Streams needs one of the server's API keys (Authorization: Bearer).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return DurableKeys(valid_path(request.match_info["path"]))


def writer(request: web.Request) -> bool:
    return request.app[SETTINGS].durable_streams == "open" or has_key(request)


def read_token(request: web.Request, keys: DurableKeys) -> str:
    return request.app[GATE].stream_reads.issue(keys.path)


def missing(request: web.Request, keys: DurableKeys) -> JSONError:
    """No stream at this path: a 404 to whoever could read it, a 401 to anyone else (which paths
    exist is not told to those who may not read them)."""
    may_read(request, keys, public=False)
    return JSONError(404, "No stream at this path.")


def may_read(request: web.Request, keys: DurableKeys, public: bool) -> None:
    """A 401 unless the request may read the stream: it is public, or the request presents an API
    key or the stream's read token."""
    if public or writer(request):
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and request.app[GATE].stream_reads.opens(token.strip(), keys.path):
        return
    raise JSONError(
        401, "Reading this stream needs its read token (Authorization: Bearer).", headers={"WWW-Authenticate": "Bearer"}
    )


def valid_path(path: str) -> str:
    if len(path.encode()) > durable.MAX_PATH_BYTES or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise JSONError(400, "The stream path is too long or holds control characters.")
    return path


_CROSS_ORIGIN: Final = {
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": _EXPOSED,
}


def headers(**fields: str) -> dict[str, str]:
    """Every response's own headers (``Stream_Next_Offset`` → ``Stream-Next-Offset``)."""
    return _CROSS_ORIGIN | {name.replace("_", "-"): value for name, value in fields.items()}


_FORK_REFUSALS: Final = {
    "missing": (404, "No stream to fork at Stream-Forked-From."),
    "gone": (409, "The stream to fork was deleted."),
    "type": (409, "A fork has its source's Content-Type."),
    "beyond": (400, "Stream-Fork-Offset is past the source's tail."),
    "sub": (400, "Stream-Fork-Sub-Offset is past what follows Stream-Fork-Offset."),
}


def cross_origin(handler: Handler) -> Handler:
    """The handler, with its refusals readable cross-origin too (a client must see its 409), and
    the store's refusals as their statuses (a deleted stream its forks keep is a 410)."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            try:
                return await handler(request)
            except StreamGone:
                raise JSONError(410, "This stream was deleted.", code="gone") from None
            except ForkRefused as refused:
                raise JSONError(*_FORK_REFUSALS[refused.reason]) from None
        except web.HTTPException as error:
            for name, value in _CROSS_ORIGIN.items():
                error.headers.setdefault(name, value)
            raise

    return handle


async def preflight(request: web.Request) -> web.StreamResponse:
    """``OPTIONS``: any origin may send the protocol's requests (see the module's docstring)."""
    allow = headers(Access_Control_Allow_Methods="GET, HEAD, POST, PUT, DELETE, OPTIONS")
    allow |= {"Access-Control-Allow-Headers": _ALLOWED, "Access-Control-Max-Age": "600"}
    return web.Response(status=204, headers=allow)


def read_start(request: web.Request, *, live: bool) -> str:
    """The entry id a read starts after (``'+'``: the tail, for ``offset=now``)."""
    offset = request.query.get("offset")
    if offset is None and live:
        raise JSONError(400, "A live read needs an offset.")
    if offset is None or offset == "-1":
        return "0-0"
    if offset == "now":
        return "+"
    entry = durable.entry_id_of(offset)
    if entry is None:
        raise JSONError(400, "The offset is not one this server gave.")
    return entry


def cursor(request: web.Request) -> str:
    """The protocol's collapsing cursor: the current 20 s interval, always above the client's own
    (with 1 to 180 intervals of jitter when the client is at or past it)."""
    interval = int((time.time() - _CURSOR_EPOCH) // _CURSOR_SECONDS)
    given = request.query.get("cursor", "")
    if DECIMAL.match(given) and int(given) >= interval:
        return str(int(given) + secrets.randbelow(180) + 1)
    return str(interval)
