"""One SSE client as the hub sees it: where it is in the stream, and its socket.

The fan-out path never awaits a client: ``deliver`` writes the pre-encoded frame straight into the
client's transport, whose write buffer is the client's bounded queue. A client whose unsent bytes
exceed ``max_buffer`` is cut off (its connection aborted); its EventSource reconnects with
``Last-Event-ID`` and loses nothing, and nobody else waited for it.
"""

import asyncio
import logging
from collections.abc import Callable

from wire.events import EventId

log = logging.getLogger(__name__)


def http_chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk, so live frames bypass aiohttp's per-write framing."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class Listener:
    """A client of one conversation: catching up (``pending`` buffers live frames) or live."""

    __slots__ = (
        "_on_close",
        "_on_slow",
        "_transport",
        "chunked",
        "closed",
        "max_buffer",
        "max_pending",
        "overflowed",
        "pending",
        "position",
        "skip_until",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        chunked: bool,
        max_buffer: int,
        max_pending: int,
        on_close: Callable[[], None],
        on_slow: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._on_close = on_close
        self._on_slow = on_slow
        self.chunked = chunked
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.pending: list[tuple[EventId, bytes]] | None = []
        """Live frames that arrived during catch-up; ``None`` once live."""
        self.overflowed = False
        """``pending`` overflowed and was dropped: catch-up must read the history again."""
        self.position: EventId = (0, 0)
        """The last event id sent to this client (during catch-up, and when it went live)."""
        self.skip_until: EventId | None = None
        """Live frames up to this id were sent from history already."""
        self.closed = False

    @property
    def live(self) -> bool:
        return self.pending is None

    def deliver(self, event_id: EventId, frame: bytes, chunk: bytes) -> None:
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
        # _write, inlined: this line runs once per client per event.
        transport = self._transport
        if transport.is_closing():
            self.close()
            return
        transport.write(chunk if self.chunked else frame)
        if transport.get_write_buffer_size() > self.max_buffer:
            self._too_slow()

    def send(self, frame: bytes, chunk: bytes) -> None:
        """Write a frame that is not an event (a heartbeat) to a live client."""
        self._write(chunk if self.chunked else frame)

    def go_live(self) -> None:
        """Send the buffered live frames newer than ``position``, then take frames as they come.

        Runs without awaiting, so no frame can slip between the history and the live stream.
        """
        pending, self.pending = self.pending or [], None
        position = self.position
        for event_id, frame in pending:
            if event_id > position:
                self._write(http_chunk(frame) if self.chunked else frame)
                position = event_id
        self.position = position
        self.skip_until = position

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport.is_closing():
            self.close()
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.max_buffer:
            self._too_slow()

    def _too_slow(self) -> None:
        if self._on_slow is not None:
            self._on_slow()
        self.cut_off()

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
