"""One conversation as one connection follows it: where it is, and what waits while it catches up.

``/api/conversations/{id}/events`` has one follower on its connection; the multiplexed
``/api/stream`` has one per conversation, sharing the connection's ``ClientStream`` (its write
path and bounds). A multiplexed follower's frames say their conversation in the id line
(``id: <conversation>/<event id>``), which ``ChannelFeed`` builds once per frame.

Invariants (this class owns them):
- ``position`` is the id of the last event written for this conversation; nothing at or before
  it is written again.
- While catching up (``pending`` is a list) live events wait in ``pending``, at most
  ``max_pending`` of them and at most the stream's ``max_buffer`` bytes; an overflow drops the list
  and sets ``overflowed``, and the catch-up reads the history again from ``position``.
"""

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from server.client_stream import ClientStream
from wire.events import AnswerTracker, EventId, EventType
from wire.sse import frame_data


def mux_prefix(conversation_id: str) -> bytes:
    """The id line's start of a conversation's events on the multiplexed stream."""
    return b"id: " + conversation_id.encode() + b"/"


def mux_frame(prefix: bytes, frame: bytes) -> bytes:
    """``frame`` with its id line naming the conversation (``prefix``: its ``mux_prefix``)."""
    return prefix + frame[4:] if frame.startswith(b"id: ") else frame


class Follower:
    __slots__ = (
        "max_pending",
        "muxed",
        "overflowed",
        "pending",
        "pending_bytes",
        "position",
        "prefix",
        "skip_until",
        "stream",
    )

    def __init__(self, stream: ClientStream, *, max_pending: int, conversation_id: str | None = None) -> None:
        self.stream = stream
        self.max_pending = max_pending
        self.prefix = b"" if conversation_id is None else mux_prefix(conversation_id)
        self.muxed = conversation_id is not None
        """Frames carry the conversation in their id line (the multiplexed stream)."""
        self.pending: list[tuple[EventId, bytes]] | None = []
        """Live frames that arrived during catch-up, in this follower's form; ``None`` once live."""
        self.pending_bytes = 0
        self.overflowed = False
        """``pending`` overflowed and was dropped: catch-up must read the history again."""
        self.position: EventId = (0, 0)
        """The id of the last event written to this client for this conversation."""
        self.skip_until: EventId | None = None
        """Live frames up to this id were written already (from history or the catch-up buffer)."""

    @property
    def live(self) -> bool:
        return self.pending is None

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def deliver(self, event_id: EventId, frame: bytes) -> None:
        """A live event: ``frame`` already in this follower's form (prefixed when ``muxed``). The
        feed's fan-out goes through ``deliver_run``; this is its frame-by-frame path."""
        pending = self.pending
        if pending is not None:
            self._hold(pending, event_id, frame)
            return
        skip = self.skip_until
        if skip is not None:
            if event_id <= skip:
                return
            self.skip_until = None
        self.position = event_id
        self.stream.put(self.stream.framed(frame))

    def deliver_run(self, events: list[tuple[EventId, bytes]], data: bytes, chunk: bytes) -> None:
        """Live events in order: ``data`` their frames joined in this follower's form, ``chunk``
        the same as one HTTP chunk, built once per node. One write for them all, unless the
        follower is catching up or has some of them already (then one by one, as ``deliver``)."""
        skip = self.skip_until
        if self.pending is not None or (skip is not None and events[0][0] <= skip):
            for event_id, frame in events:
                self.deliver(event_id, mux_frame(self.prefix, frame) if self.muxed else frame)
            return
        self.skip_until = None
        self.position = events[-1][0]
        # ClientStream.put, inlined: this runs once per client per event (or run of events).
        stream = self.stream
        transport = stream.transport
        if stream.closed or transport.is_closing():
            stream.close()
            return
        out = chunk if stream.chunked else data
        transport.write(out)
        if transport.get_write_buffer_size() - len(out) > stream.max_buffer:
            stream.too_slow()

    def _hold(self, pending: list[tuple[EventId, bytes]], event_id: EventId, frame: bytes) -> None:
        """Keep a live frame for ``go_live``; past either bound, drop them all (history has them)."""
        self.pending_bytes += len(frame)
        if len(pending) >= self.max_pending or self.pending_bytes > self.stream.max_buffer:
            pending.clear()
            self.pending_bytes = 0
            self.overflowed = True
        else:
            pending.append((event_id, frame))

    def go_live(self) -> None:
        """Write the buffered live frames newer than ``position``, then take frames as they come.

        Runs without awaiting, so no frame can slip between the history and the live stream.
        """
        pending, self.pending = self.pending or [], None
        self.pending_bytes = 0
        position = self.position
        for event_id, frame in pending:
            if event_id > position:
                data = self._framed_live(frame)
                if data:
                    self.stream.put(data)
                position = event_id
        self.position = position
        self.skip_until = position

    async def replay(self, frames: Sequence[tuple[EventId, bytes]]) -> None:
        """History events in order, with back-pressure; frames at or before ``position`` are skipped."""
        stream = self.stream
        for event_id, frame in frames:
            if stream.closed:
                return
            if event_id <= self.position:
                continue
            data = self._framed(frame)
            self.position = event_id
            if data:
                stream.put(data, bounded=False)
                await stream.drain()

    def reset(self, head: EventId, frame: bytes) -> None:
        """A ``reset`` event: the history cannot continue from ``position``; the client reloads.

        Written whatever its id (after a Redis data loss the head may be older than ``position``),
        and it moves ``position`` to the head: what follows the head is new to this client.
        """
        data = self._framed(frame)
        if data:
            self.stream.put(data)
        self.position = head
        self.skip_until = head

    def _framed_live(self, frame: bytes) -> bytes:
        """A frame that came live (from ``deliver``): already in this follower's form."""
        return self.stream.framed(frame)

    def _framed(self, frame: bytes) -> bytes:
        """A frame from the history as this follower writes it (empty: nothing), framed for the wire."""
        return self.stream.framed(mux_frame(self.prefix, frame) if self.muxed else frame)


class TranslatingFollower(Follower):
    """A follower that writes each event in another dialect (OpenAI chunks, AI SDK parts).

    ``translate`` turns one of the conversation's frames into the bytes to send (empty: nothing);
    it runs once per client, unlike the native fan-out's once per node: the dialects are for API
    clients, a handful per answer.
    """

    __slots__ = ()

    def translate(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def deliver(self, event_id: EventId, frame: bytes) -> None:
        pending = self.pending
        if pending is not None:
            self._hold(pending, event_id, frame)
            return
        if self.skip_until is not None and event_id <= self.skip_until:
            return
        self.position = event_id
        data = self.translate(frame)
        if data:
            self.stream.put(self.stream.framed(data))

    def deliver_run(self, events: list[tuple[EventId, bytes]], data: bytes, chunk: bytes) -> None:
        for event_id, frame in events:  # the feed hands a translating follower the native frames
            self.deliver(event_id, frame)

    def _framed(self, frame: bytes) -> bytes:
        data = self.translate(frame)
        return self.stream.framed(data) if data else b""

    def _framed_live(self, frame: bytes) -> bytes:
        return self._framed(frame)  # the feed hands a translating follower the native frames


class AnswerEvent(NamedTuple):
    event_id: bytes
    type: str
    text: str
    """A delta's text ("" for the other events)."""
    body: dict[str, Any]
    """A ``user_message``'s, ``regenerate``'s or ``done``'s JSON (empty for a delta)."""


class AnswerEvents:
    """Picks one answer's events out of its conversation's stream, for the dialects
    (``wire.events.AnswerTracker`` says which answer each event belongs to)."""

    __slots__ = ("answers", "inside", "response_id")

    def __init__(self, response_id: str, *, inside: bool) -> None:
        self.response_id = response_id
        self.inside = inside
        """Whether the follower starts inside the answer (it will not see the answer's start)."""
        self.answers = AnswerTracker(response_id if inside else "")

    def follow(self, response_id: str) -> None:
        """Pick ``response_id``'s events: for a follower attached before the post that names it."""
        self.response_id = response_id
        if self.inside:
            self.answers.current = response_id

    def take(self, frame: bytes) -> AnswerEvent | None:
        """The frame's event if it belongs to the answer (``user_message`` or ``regenerate``
        starting it, a ``delta`` or the ``done`` of it), else ``None``."""
        event_id, raw_type, data = frame_parts(frame)
        event_type = raw_type.decode()
        answer = self.answers.answer_of(event_type, data)
        if not answer or answer != self.response_id:
            return None
        if event_type == EventType.DELTA:
            return AnswerEvent(event_id, event_type, data.decode(), {})
        return AnswerEvent(event_id, event_type, "", json.loads(data))


def frame_parts(frame: bytes) -> tuple[bytes, bytes, bytes]:
    """(event id, type, data) of a frame of ours, its data lines joined with LF."""
    head, _, rest = frame.partition(b"\nevent: ")
    event_type, _, _ = rest.partition(b"\n")
    return head.removeprefix(b"id: "), event_type, frame_data(frame)
