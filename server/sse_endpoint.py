"""``GET /api/conversations/{id}/events``: the conversation as a resumable Server-Sent Events stream.

Flow of one connection (replay, then live, with no gap and no duplicate):

1. Check the token and the cursor (``Last-Event-ID`` header, else the ``last_event_id`` query
   parameter, else the start) before anything is sent, so bad requests get a clean 4xx.
2. Send the headers and ``retry:``, then attach to the hub: the listener buffers live frames from
   the moment Redis confirms the channel's subscription.
3. Replay the history after the cursor page by page, with back-pressure (awaiting the socket here
   slows only this client). If the live buffer overflowed meanwhile, read the history again.
4. Go live without awaiting: buffered frames newer than the last replayed id are sent, then frames
   flow straight from the hub. A cursor the history cannot honour gets a ``reset`` event first.
"""

import logging

from aiohttp import web
from redis.exceptions import RedisError

from server.auth import authorize
from server.context import HUB, METRICS, SETTINGS, STORE
from server.errors import JSONError
from server.hub import HubUnavailable
from server.listener import Listener
from server.sse_response import RelayResponse
from server.store import ConversationStore, Page
from wire.events import START_ID, EventType, format_event_id, parse_event_id, reset_data
from wire.sse import encode_event, encode_retry

log = logging.getLogger(__name__)


def requested_cursor(request: web.Request) -> str:
    """The client's cursor; a malformed one is a 400, never silently the start."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("last_event_id")
    if raw is None or raw.strip() == "":
        return START_ID
    try:
        return format_event_id(parse_event_id(raw.strip()))
    except ValueError:
        raise JSONError(400, "Last-Event-ID is not an event id of this stream", code="bad_cursor") from None


async def stream_events(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    conversation_id = authorize(request, settings.secret, settings.cors_origins)
    cursor = requested_cursor(request)
    hub, store, metrics = request.app[HUB], request.app[STORE], request.app[METRICS]

    response = RelayResponse()
    writer = await response.prepare(request)
    transport = request.transport
    if writer is None or transport is None:
        return response
    await response.write(encode_retry(settings.retry_ms))
    # The headers are on the wire: drop this response's copy of them (about 1 KiB per open stream).
    response.headers.clear()
    listener = Listener(
        transport,
        chunked=bool(getattr(writer, "chunked", False)),
        max_buffer=settings.client_buffer_bytes,
        max_pending=settings.catchup_buffer_events,
        on_close=response.stop_streaming,
        on_slow=metrics.slow_clients.inc,
    )
    metrics.connections.inc()
    try:
        channel = await hub.attach(conversation_id, listener)
        try:
            replayed = await _catch_up(response, listener, store, conversation_id, cursor, settings.replay_page_events)
            if replayed:
                metrics.replays.inc()
                metrics.replay_events.observe(replayed)
            if not listener.closed:
                listener.go_live()
                await response.ended
        finally:
            hub.detach(channel, listener)
    except (HubUnavailable, RedisError, OSError, TimeoutError) as exc:
        # The client reconnects with its cursor once the node can serve it again.
        log.warning("stream of a conversation ended early: %r", exc)
    return response


async def _catch_up(
    response: RelayResponse,
    listener: Listener,
    store: ConversationStore,
    conversation_id: str,
    cursor: str,
    page_size: int,
) -> int:
    """Send the history after ``cursor``; returns how many events it sent."""
    resets = 0
    sent = 0
    while not listener.closed:
        listener.overflowed = False
        page = await store.replay(conversation_id, cursor, page_size)
        if not isinstance(page, Page):
            resets += 1
            if resets > 1:
                raise HubUnavailable("history keeps resetting")
            await response.write(encode_event(page.head, EventType.RESET, reset_data(page.reason)))
            cursor = page.head
            listener.position = parse_event_id(cursor)
            if not listener.overflowed:
                return sent
            continue
        if page.frames:
            await response.write(b"".join(frame for _, frame in page.frames))
            cursor = page.frames[-1][0].decode()
            listener.position = parse_event_id(cursor)
            sent += len(page.frames)
        if len(page.frames) < page_size and not listener.overflowed:
            return sent
    return sent
