"""``GET /api/stream?c=<conversation>.<cursor>&c=...``: many conversations on one event stream.

Browsers allow six HTTP/1.1 connections per host; a page with a stream per conversation hangs at
the seventh. The page's leader tab holds this one stream for every conversation any tab follows.

- Credential: the browser session cookie (``SameSite=Strict``, read-only): a conversation is
  carried only if this session joined it by presenting its token, at its current generation
  (``Gate.join``, ``ConversationStore.session_allows``). Others get one ``gone`` event each.
- Frames are the conversations' own frames with the conversation in the id line
  (``id: <conversation>/<event id>``), so ``EventSource.lastEventId`` tells the page both. Each
  conversation resumes from its own cursor (``c=<id>.<cursor>``; ``<id>.`` for the start); the page
  reconnects with its cursors, so changing the set of conversations never loses or doubles an
  event of the others. ``Last-Event-ID`` is not used here.
- One connection: one ``ClientStream`` (write path, bounds, heartbeat), one ``Follower`` per
  conversation; each catches up from its cursor and goes live, the others streaming meanwhile.
"""

import logging

from aiohttp import web
from redis.exceptions import RedisError

from server.context import GATE, HUB, METRICS, SETTINGS, STORE
from server.errors import JSONError, unavailable
from server.feed import ChannelFeed
from server.follower import Follower
from server.pubsub import PubSubUnavailable
from server.streaming import catch_up, event_stream_response
from wire.events import EventId, EventType, dumps, parse_event_id
from wire.keys import ID_RE
from wire.sse import encode_event, encode_retry

log = logging.getLogger(__name__)

MAX_CONVERSATIONS = 64


def requested(request: web.Request) -> dict[str, EventId]:
    """The conversations asked for, each with its cursor; anything malformed is a 400."""
    wanted: dict[str, EventId] = {}
    for item in request.query.getall("c", []):
        conversation_id, dot, cursor = item.partition(".")
        if not dot or not ID_RE.match(conversation_id):
            raise JSONError(400, "c must be <conversation id>.<event id or nothing>", code="bad_field", field="c")
        try:
            wanted[conversation_id] = parse_event_id(cursor) if cursor else (0, 0)
        except ValueError:
            raise JSONError(400, "a cursor is not an event id of this stream", code="bad_cursor") from None
    if not wanted:
        raise JSONError(400, "name at least one conversation: ?c=<id>.<cursor>", code="bad_field", field="c")
    if len(wanted) > MAX_CONVERSATIONS:
        raise JSONError(400, f"at most {MAX_CONVERSATIONS} conversations per stream", code="bad_field", field="c")
    return wanted


async def stream_many(request: web.Request) -> web.StreamResponse:
    gate, store = request.app[GATE], request.app[STORE]
    if request.method != "GET":
        raise JSONError(405, "Method Not Allowed", headers={"Allow": "GET"})
    address = gate.client(request)
    session_id = gate.session(request)
    if session_id is None:
        raise JSONError(401, "a browser session is required (open a conversation first)", code="no_session")
    wanted = requested(request)
    try:
        allowed = await store.session_allows(session_id, list(wanted))
    except (RedisError, OSError, TimeoutError):
        raise unavailable() from None
    limited = gate.limited(address)
    if limited:
        gate.streams_per_ip.enter(address)
    try:
        return await _stream(request, wanted, dict(zip(wanted, allowed, strict=True)))
    finally:
        if limited:
            gate.streams_per_ip.leave(address)


async def _stream(request: web.Request, wanted: dict[str, EventId], allowed: dict[str, bool]) -> web.StreamResponse:
    settings, hub, store, metrics = request.app[SETTINGS], request.app[HUB], request.app[STORE], request.app[METRICS]
    response, stream = await event_stream_response(request, until_close=True)
    if stream is None:
        return response
    stream.send_control(encode_retry(settings.retry_ms))
    for conversation_id, ok in allowed.items():
        if not ok:
            stream.send_control(encode_event(f"{conversation_id}/", EventType.GONE, dumps({"reason": "not_found"})))
    followers: list[tuple[Follower, ChannelFeed]] = []
    metrics.multiplexed.inc()
    metrics.sockets_open += 1
    try:
        for conversation_id, cursor in wanted.items():
            if not allowed[conversation_id] or stream.closed:
                continue
            follower = Follower(stream, max_pending=settings.catchup_buffer_events, conversation_id=conversation_id)
            follower.position = cursor
            followers.append((follower, await hub.attach(conversation_id, follower)))
            await catch_up(follower, store, conversation_id, settings.replay_page_events)
            if not stream.closed:
                follower.go_live()
        if not stream.closed:
            await response.ended
    except (PubSubUnavailable, RedisError, OSError, TimeoutError) as exc:
        log.warning("multiplexed stream ended early: %r", exc)
    finally:
        metrics.sockets_open -= 1
        for follower, feed in followers:
            hub.detach(feed, follower)
    return response
