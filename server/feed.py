"""One conversation's live feed on this node: its followers, the order of its frames, its gap fill.

Each frame arrives already encoded (the publishing script built it); the feed parses its id once
and hands the same bytes to every follower (encode once, write many; a multiplexed follower gets
one prefixed copy per frame, shared by all of them). Each follower's ``ClientStream`` decides the
framing: the native streams send frames as they are (their body ends with the connection), the
dialects' reusable connections wrap each in an HTTP chunk.

Invariants (this class owns them):
- ``forwarded`` is the newest event id handed to the clients; no frame at or before it is forwarded
  again, so a frame that comes both from the history and live is delivered once.
- When the pub/sub connection of generation *g* comes up, a feed that has live clients holds the
  live frames until its gap fill for *g* has forwarded what was published while it was down.
  Only the fill of the current generation may forward or release the held frames: a newer
  connection cancels an older fill, and a fill checks its generation after every await.
- A gap the history cannot fill (lost by Redis, or too slow) cuts the clients off: each resumes
  from its own cursor and gets a ``reset`` if it must reload. Nobody sees a gap or a duplicate.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from server.client_stream import http_chunk
from server.follower import Follower, mux_frame, mux_prefix
from server.history import history_after
from server.metrics import NodeMetrics
from server.store import ConversationStore, Reset
from support.backoff import Backoff
from wire.events import EventId, parse_event_id
from wire.keys import conversation_id_from_channel
from wire.sse import frame_event_id

log = logging.getLogger(__name__)

_MAX_HELD = 100_000
"""Live frames a feed holds while its gap fills; past this the fill is too slow and clients resume."""
_FILL_ATTEMPTS = 4

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(frozen=True, slots=True)
class FeedServices:
    """What every feed of a node shares."""

    store: ConversationStore
    page_size: int
    timeout_seconds: float
    metrics: NodeMetrics
    spawn: Spawn
    """Starts a task owned (cancelled and awaited) by the hub."""


class ChannelFeed:
    __slots__ = (
        "_fill",
        "_generation",
        "_held",
        "_mux_prefix",
        "_services",
        "followers",
        "forwarded",
        "name",
    )

    def __init__(self, name: bytes, services: FeedServices) -> None:
        self.name = name
        self._services = services
        self.followers: set[Follower] = set()
        self._mux_prefix: bytes | None = None
        """Made when a multiplexed follower first needs it: a node holds a feed per conversation
        with tabs on it, and most have none (what the name already says is not kept twice)."""
        self.forwarded: EventId | None = None
        self._held: list[bytes] | None = None
        """Live frames held back while the gap after a reconnect is filled."""
        self._generation = 0
        self._fill: asyncio.Task[None] | None = None

    @property
    def conversation_id(self) -> str:
        return conversation_id_from_channel(self.name)

    # -- from the pub/sub connection ----------------------------------------------------------

    def on_frames(self, frames: list[bytes]) -> None:
        """The channel's frames of one socket read, in order."""
        held = self._held
        if held is None:
            self._forward_frames(frames)
        elif len(held) + len(frames) <= _MAX_HELD:
            held += frames
        else:
            log.warning("gap fill of %r is too slow; its clients resume by themselves", self.name)
            self._abandon()

    def on_connected(self, generation: int) -> None:
        """A new connection will subscribe this channel: hold live frames until the gap is filled."""
        self._cancel_fill()
        self._generation = generation
        needs_fill = self.forwarded is not None or any(follower.live for follower in self.followers)
        self._held = [] if needs_fill else None

    def on_subscribed(self, generation: int) -> None:
        if self._held is not None and generation == self._generation and self._fill is None:
            self._fill = self._services.spawn(self._fill_gap(generation), f"fill-gap-{self.name!r}")

    def on_lost(self) -> None:
        """The connection is gone: stop the fill; clients still catching up resume by themselves.

        A client's catch-up buffer would miss what is published while the connection is down, and
        only live clients are covered by the gap fill.
        """
        self._cancel_fill()
        for follower in list(self.followers):
            if not follower.live:
                follower.stream.cut_off()

    # -- fan-out ------------------------------------------------------------------------------

    def _forward_frames(self, frames: list[bytes]) -> None:
        events: list[tuple[EventId, bytes]] = []
        forwarded = self.forwarded
        for frame in frames:
            try:
                event_id = parse_event_id(frame_event_id(frame).decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                # Not a frame of ours (a stray PUBLISH on our channel): dropped and counted; the stream goes on.
                self._services.metrics.malformed_messages.inc()
                log.warning("dropped a malformed message on %r", self.name)
                continue
            if forwarded is None or event_id > forwarded:  # else forwarded already, from the history
                events.append((event_id, frame))
                forwarded = event_id
        if events:
            self._fan_out(events)

    def _forward(self, event_id: EventId, frame: bytes) -> None:
        forwarded = self.forwarded
        if forwarded is None or event_id > forwarded:  # else forwarded already, from the history
            self._fan_out([(event_id, frame)])

    def _fan_out(self, events: list[tuple[EventId, bytes]]) -> None:
        """Events new to the feed, in order, to every follower. Each form is made once per node,
        not once per client: the frames joined, their multiplexed copy, and both as HTTP chunks
        (docs/benchmarks.md, "the frame framed once"). A run of several (the node fell behind, or
        the answer is fast) is one write per follower, so a node that is behind spends less per
        event, not more."""
        self.forwarded = events[-1][0]
        joined = b"".join([frame for _, frame in events])  # one frame: that frame itself
        chunk = http_chunk(joined)
        muxed: bytes | None = None
        muxed_chunk = b""
        followers = self.followers
        for follower in followers:
            if follower.muxed:
                if muxed is None:
                    prefix = self._mux_prefix or self._make_mux_prefix()
                    muxed = b"".join([mux_frame(prefix, frame) for _, frame in events])
                    muxed_chunk = http_chunk(muxed)
                follower.deliver_run(events, muxed, muxed_chunk)
            else:
                follower.deliver_run(events, joined, chunk)
        metrics = self._services.metrics
        metrics.delivered.value += len(followers) * len(events)
        metrics.bytes_written.value += len(followers) * len(joined)
        now = time.time()
        for event_id, _ in events:
            metrics.publish_to_write.observe(max(0.0, now - event_id[0] / 1000))

    def _make_mux_prefix(self) -> bytes:
        self._mux_prefix = prefix = mux_prefix(self.conversation_id)
        return prefix

    # -- the gap fill -------------------------------------------------------------------------

    async def _fill_gap(self, generation: int) -> None:
        backoff = Backoff(first=0.1, cap=1.0)
        try:
            for attempt in range(1, _FILL_ATTEMPTS + 1):
                try:
                    await self._replay_gap(generation)
                    break
                except (TimeoutError, RedisError, OSError) as exc:
                    # Right after a Redis restart the command pool may still hold dead connections.
                    if attempt == _FILL_ATTEMPTS:
                        log.warning("gap fill of %r failed (%r); clients resume by themselves", self.name, exc)
                        self._abandon()
                        return
                    await asyncio.sleep(backoff.next_delay())
                if generation != self._generation:
                    return
            if generation != self._generation:
                return
            held, self._held = self._held, None
            if held:
                self._forward_frames(held)
        finally:
            if self._fill is asyncio.current_task():
                self._fill = None

    async def _replay_gap(self, generation: int) -> None:
        services = self._services
        start = self.forwarded
        if start is None:
            positions = [follower.position for follower in self.followers if follower.live]
            if not positions:
                return
            start = min(positions)
        async with asyncio.timeout(services.timeout_seconds):
            async for item in history_after(services.store, self.conversation_id, start, services.page_size):
                if generation != self._generation:
                    return  # a newer connection owns this channel now
                if isinstance(item, Reset):
                    self._reset(item)
                else:
                    for event_id, frame in item.frames:
                        self._forward(event_id, frame)

    def _reset(self, reset: Reset) -> None:
        """The history lost what the live clients were following: each is told to reload.

        Clients still catching up read the history themselves and meet the same reset there.
        """
        frame = reset.frame()
        for follower in list(self.followers):
            if follower.live:
                follower.reset(reset.head, frame)
        self.forwarded = reset.head

    def _abandon(self) -> None:
        """Cut off every client: they resume from their own cursors."""
        self._cancel_fill()
        self._held = None
        self.forwarded = None
        for follower in list(self.followers):
            follower.stream.cut_off()

    def _cancel_fill(self) -> None:
        fill, self._fill = self._fill, None
        if fill is not None and fill is not asyncio.current_task():
            fill.cancel()
