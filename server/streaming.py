"""What every event stream of the node does alike: send its headers, catch a follower up, go live.

The native streams (``server.sse_endpoint``, ``server.mux_endpoint``) and the dialects
(``server.dialects``) compose these; none of them imports another endpoint.
"""

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from server.client_stream import ClientStream
from server.context import METRICS, SETTINGS
from server.feed import ChannelFeed
from server.follower import Follower
from server.history import history_after
from server.hub import Hub
from server.pubsub import PubSubUnavailable
from server.sse_response import EventStreamResponse
from server.store import ConversationStore, Reset


async def event_stream_response(
    request: web.Request,
    add_headers: Callable[[web.StreamResponse], object] | None = None,
    *,
    until_close: bool = False,
) -> tuple[EventStreamResponse, ClientStream | None]:
    """Send the stream's headers (``add_headers`` adds any, such as cookies, first) and make its write path.

    The stream is ``None`` when the client left before the headers were sent. ``until_close``: see
    ``EventStreamResponse``.
    """
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    response = EventStreamResponse(
        send_timeout=settings.send_timeout_seconds,
        send_buffer=settings.socket_send_buffer_bytes,
        method=request.method,  # the handler checked it; the OpenAI dialects stream a POST
        until_close=until_close,
    )
    if add_headers is not None:
        add_headers(response)
    writer = await response.prepare(request)
    transport = request.transport
    if writer is None or transport is None:
        return response, None
    # The headers (and cookies) are on the wire: drop this response's copies (about 2 KiB per open stream).
    response.headers.clear()
    response.cookies.clear()
    metrics.connections.inc()
    return response, ClientStream(
        transport,
        writer,
        chunked=bool(getattr(writer, "chunked", False)),
        max_buffer=settings.client_buffer_bytes,
        send_timeout=settings.send_timeout_seconds,
        on_close=response.stop_streaming,
        on_slow=metrics.slow_clients.inc,
    )


async def catch_up(follower: Follower, store: ConversationStore, conversation_id: str, page_size: int) -> int:
    """Write the history after ``follower.position``; returns how many events it wrote."""
    sent = 0
    while not follower.closed:
        follower.overflowed = False
        async for item in history_after(store, conversation_id, follower.position, page_size):
            if isinstance(item, Reset):
                follower.reset(item.head, item.frame())
            else:
                await follower.replay(item.frames)
                sent += len(item.frames)
            if follower.closed:
                break
        if not follower.overflowed:
            break
    return sent


async def follow_live(response: EventStreamResponse, follower: Follower, done: "asyncio.Future[Any]") -> bool:
    """Go live (after ``catch_up``) and wait until ``done`` (the follower saw its answer end) or the
    client leaves; True if the answer ended while the client was there."""
    if follower.closed:
        return False
    follower.go_live()
    waits: list[asyncio.Future[Any]] = [done, response.ended]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    return done.done() and not follower.closed


async def attach_or_end(
    hub: Hub, conversation_id: str, follower: Follower, last_words: Callable[[str], bytes]
) -> ChannelFeed | None:
    """``hub.attach``, for a stream whose headers are out: if the node cannot follow the
    conversation now, the stream ends with ``last_words(reason)`` (the dialect's error event)
    instead of breaking, and this returns ``None``."""
    try:
        return await hub.attach(conversation_id, follower)
    except (PubSubUnavailable, RedisError, OSError) as exc:
        follower.stream.put(
            follower.stream.framed(last_words(f"the answer could not be followed ({type(exc).__name__})"))
        )
        return None
