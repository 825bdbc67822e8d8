"""``GET /api/conversations/{id}/events``: the conversation as a resumable Server-Sent Events stream.

Flow of one connection (replay, then live, with no gap and no duplicate):

1. Check the token and the cursor (``Last-Event-ID`` header, else the ``last_event_id`` query
   parameter, else the start) before anything is sent, so bad requests get a clean 4xx.
2. Send the headers and ``retry:``, then attach to the hub: the client's stream buffers live frames
   from the moment Redis confirms the channel's subscription.
3. Replay the history after the cursor (``server.history``) with back-pressure; a cursor the history
   cannot honour gets a ``reset``. If the live buffer overflowed meanwhile, read the history again.
4. Go live without awaiting: buffered frames newer than the last replayed id are sent, then frames
   flow straight from the hub.

Every write, from ``retry:`` to the last heartbeat, goes through the client's ``ClientStream``.
"""

import logging

from aiohttp import web
from redis.exceptions import RedisError

from server.auth import Access
from server.context import GATE, HUB, METRICS, SETTINGS, STORE
from server.errors import JSONError, unavailable
from server.follower import Follower
from server.pubsub import PubSubUnavailable
from server.store import MESSAGES_PAGE, ConversationStore
from server.streaming import catch_up, event_stream_response
from wire.events import EventId, EventType, dumps, parse_event_id
from wire.sse import encode_event, encode_retry

log = logging.getLogger(__name__)


def requested_cursor(request: web.Request) -> EventId:
    """The client's cursor; a malformed one is a 400, never silently the start."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("last_event_id")
    if raw is None or raw.strip() == "":
        return (0, 0)
    try:
        return parse_event_id(raw.strip())
    except ValueError:
        raise JSONError(400, "Last-Event-ID is not an event id of this stream", code="bad_cursor") from None


async def stream_events(request: web.Request) -> web.StreamResponse:
    """The stream runs in this one coroutine, whose frame lives as long as the stream: the checks
    before it run in ``_admit`` (a second coroutine nested for the stream's life was 420 bytes more
    per open stream)."""
    access, cursor, snapshot, limited_address = await _admit(request)
    settings, gate = request.app[SETTINGS], request.app[GATE]
    hub, store, metrics = request.app[HUB], request.app[STORE], request.app[METRICS]
    conversation_id = access.conversation_id
    if limited_address is not None:
        gate.streams_per_ip.enter(limited_address)
    try:
        # A browser's cookie lives on while its stream is used (an API client keeps its own token).
        add_headers = (lambda r: gate.grant(r, request, access)) if access.from_cookie else None
        response, stream = await event_stream_response(request, add_headers, until_close=True)
        if stream is None:
            return response
        stream.send_control(encode_retry(settings.retry_ms))
        follower = Follower(stream, max_pending=settings.catchup_buffer_events)
        follower.position = cursor
        metrics.sockets_open += 1
        try:
            feed = await hub.attach(conversation_id, follower)
            try:
                if snapshot and cursor == (0, 0):
                    await _send_snapshot(follower, store, conversation_id)
                replayed = await catch_up(follower, store, conversation_id, settings.replay_page_events)
                if replayed:
                    metrics.replays.inc()
                    metrics.replay_events.observe(replayed)
                if not follower.closed:
                    follower.go_live()
                    await response.ended
            finally:
                hub.detach(feed, follower)
        except (PubSubUnavailable, RedisError, OSError, TimeoutError) as exc:
            # The client reconnects with its cursor once the node can serve it again.
            log.warning("stream of a conversation ended early: %r", exc)
        finally:
            metrics.sockets_open -= 1
        return response
    finally:
        if limited_address is not None:
            gate.streams_per_ip.leave(limited_address)


async def _admit(request: web.Request) -> tuple[Access, EventId, bool, str | None]:
    """(access, cursor, compacted catch-up?, the client's address if its streams are counted), or
    the JSON error that refuses the stream."""
    settings, gate, hub = request.app[SETTINGS], request.app[GATE], request.app[HUB]
    if request.method != "GET":
        raise JSONError(405, "Method Not Allowed", headers={"Allow": "GET"})
    try:
        access = await gate.conversation(request, request.app[STORE])
    except (RedisError, OSError, TimeoutError):
        raise unavailable() from None
    cursor = requested_cursor(request)
    compact = request.query.get("catchup", "events")
    if compact not in ("events", "snapshot"):
        raise JSONError(400, "catchup must be 'events' or 'snapshot'", code="bad_field", field="catchup")
    address = gate.client(request)
    limited = gate.limited(address)
    if limited and hub.follower_count(access.conversation_id) >= settings.streams_per_conversation:
        raise JSONError(
            429, "too many open streams of this conversation", code="too_many_streams", headers={"Retry-After": "5"}
        )
    return access, cursor, compact == "snapshot", address if limited else None


async def _send_snapshot(follower: Follower, store: ConversationStore, conversation_id: str) -> None:
    """The compacted catch-up (``?catchup=snapshot``, for a client with no cursor): one ``snapshot``
    event holding the history API's body, with the id of the last event it includes, instead of
    every event so far; the client is subscribed already, so what follows it arrives live."""
    body = await store.snapshot(conversation_id, MESSAGES_PAGE)
    head = parse_event_id(body["last_event_id"])
    if head == (0, 0):
        return  # nothing happened yet: nothing to compact
    frame = encode_event(body["last_event_id"], EventType.SNAPSHOT, dumps(body))
    follower.stream.put(follower.stream.framed(frame))
    follower.position = head
