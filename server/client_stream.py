"""One SSE client's only write path: ``retry:``, replayed history, resets, live events, heartbeats.

Every byte a client receives goes through one ``ClientStream``, straight into its transport, so the
order on the wire is the order of the calls and the bounds below are enforced in one place.

Invariants (this class owns them):
- ``position`` is the id of the last event written; nothing at or before it is written again.
- While catching up (``pending`` is a list) live events wait in ``pending``, at most
  ``max_pending`` of them; an overflow drops the list and sets ``overflowed``, and the catch-up
  reads the history again from ``position``. Heartbeats are not sent then (the replay is traffic).
- Live writes never await: the fan-out hands the same pre-framed bytes to every client. A client
  is cut off (aborted) when more than ``max_buffer`` bytes were already unsent in the node before
  an event (one large event alone never cuts a client off), or when bytes have
  waited in the node for ``send_timeout`` seconds (checked at each heartbeat); either way the
  kernel's socket buffer is full first. Its EventSource resumes with ``Last-Event-ID`` and loses
  nothing, and nobody else waited for it.
- Replay writes await the socket: after each frame the stream waits (at most ``send_timeout``) until
  the transport's buffer drains, so a client that does not read pins one frame plus the transport's
  high-water mark, never a whole history page; one that stays stuck is cut off.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiohttp.abc import AbstractStreamWriter

from wire.events import EventId

log = logging.getLogger(__name__)


def http_chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk (the stream's framing, done once per frame by the fan-out)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class ClientStream:
    __slots__ = (
        "_on_close",
        "_on_slow",
        "_transport",
        "_writer",
        "chunked",
        "closed",
        "max_buffer",
        "max_pending",
        "overflowed",
        "pending",
        "position",
        "send_timeout",
        "skip_until",
        "stalled_since",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        writer: AbstractStreamWriter | None,
        *,
        chunked: bool,
        max_buffer: int,
        max_pending: int,
        send_timeout: float,
        on_close: Callable[[], None],
        on_slow: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._writer = writer
        self._on_close = on_close
        self._on_slow = on_slow
        self.chunked = chunked
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.send_timeout = send_timeout
        self.pending: list[tuple[EventId, bytes]] | None = []
        """Live frames that arrived during catch-up; ``None`` once live."""
        self.overflowed = False
        """``pending`` overflowed and was dropped: catch-up must read the history again."""
        self.position: EventId = (0, 0)
        """The id of the last event written to this client."""
        self.skip_until: EventId | None = None
        """Live frames up to this id were written already (from history or the catch-up buffer)."""
        self.stalled_since = 0.0
        """When the node last saw this client's unsent bytes start waiting (0: none wait)."""
        self.closed = False

    @property
    def live(self) -> bool:
        return self.pending is None

    # -- live: called by the fan-out, never awaits ---------------------------------------------

    def deliver(self, event_id: EventId, frame: bytes, chunk: bytes) -> None:
        """A live event; ``chunk`` is ``frame`` already framed as an HTTP chunk (once per node)."""
        pending = self.pending
        if pending is not None:
            if len(pending) >= self.max_pending:
                pending.clear()
                self.overflowed = True
            else:
                pending.append((event_id, frame))
            return
        skip = self.skip_until
        if skip is not None:
            if event_id <= skip:
                return
            self.skip_until = None
        self.position = event_id
        # _put, inlined: this runs once per client per event.
        transport = self._transport
        if transport.is_closing():
            self.close()
            return
        data = chunk if self.chunked else frame
        transport.write(data)
        if transport.get_write_buffer_size() - len(data) > self.max_buffer:
            self._too_slow()

    def heartbeat(self, frame: bytes, chunk: bytes, now: float) -> None:
        """A comment that keeps idle connections and proxies alive, and the live send timeout.

        Only live clients get one. Bytes still waiting in the node mean the kernel's socket buffer
        is full: a client whose bytes have waited ``send_timeout`` seconds is cut off, however few.
        """
        if self.pending is not None:
            return
        if self._transport.get_write_buffer_size():
            if not self.stalled_since:
                self.stalled_since = now
            elif now - self.stalled_since > self.send_timeout:
                self._too_slow()
            return  # no heartbeat needed while bytes wait
        self.stalled_since = 0.0
        self._put(chunk if self.chunked else frame)

    def go_live(self) -> None:
        """Write the buffered live frames newer than ``position``, then take frames as they come.

        Runs without awaiting, so no frame can slip between the history and the live stream.
        """
        pending, self.pending = self.pending or [], None
        position = self.position
        for event_id, frame in pending:
            if event_id > position:
                self._put(self._framed(frame))
                position = event_id
        self.position = position
        self.skip_until = position

    # -- control and history: awaited by the client's own handler ------------------------------

    def send_control(self, frame: bytes) -> None:
        """A frame that is not an event (``retry:``), written before anything else."""
        self._put(self._framed(frame))

    async def replay(self, frames: Sequence[tuple[EventId, bytes]]) -> None:
        """History events in order, with back-pressure; frames at or before ``position`` are skipped."""
        for event_id, frame in frames:
            if self.closed:
                return
            if event_id <= self.position:
                continue
            self._put(self._framed(frame), bounded=False)
            self.position = event_id
            await self._drain()

    def reset(self, head: EventId, frame: bytes) -> None:
        """A ``reset`` event: the history cannot continue from ``position``; the client reloads.

        Written whatever its id (after a Redis data loss the head may be older than ``position``),
        and it moves ``position`` to the head: what follows the head is new to this client.
        """
        self._put(self._framed(frame))
        self.position = head
        self.skip_until = head

    # -- ending ----------------------------------------------------------------------------------

    def cut_off(self) -> None:
        """Drop the connection now; the client resumes from its last event id."""
        log.info(
            "cutting off a client (%d bytes unsent); it resumes from its cursor",
            self._transport.get_write_buffer_size(),
        )
        self._transport.abort()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()

    # -- the one place bytes meet the socket ------------------------------------------------------

    def _framed(self, frame: bytes) -> bytes:
        return http_chunk(frame) if self.chunked else frame

    def _put(self, data: bytes, *, bounded: bool = True) -> None:
        transport = self._transport
        if self.closed or transport.is_closing():
            self.close()
            return
        transport.write(data)
        if bounded and transport.get_write_buffer_size() - len(data) > self.max_buffer:
            self._too_slow()

    async def _drain(self) -> None:
        writer = self._writer
        if writer is None or self.closed:
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await writer.drain()
        except TimeoutError:
            self._too_slow()
        except ConnectionError:
            self.close()

    def _too_slow(self) -> None:
        if self._on_slow is not None:
            self._on_slow()
        self.cut_off()
