"""One SSE connection's only write path: ``retry:``, replayed history, resets, live events, heartbeats.

Every byte a client's socket receives goes through one ``ClientStream``, straight into its
transport, so the order on the wire is the order of the calls and the bounds below are enforced in
one place. What a socket follows is a ``server.follower.Follower`` per conversation (one for
``/events``, several for the multiplexed ``/api/stream``); they all write through this.

Invariants (this class owns them):
- Live writes never await: the fan-out hands the same pre-framed bytes to every client. A client
  is cut off (aborted) when more than ``max_buffer`` bytes were already unsent in the node before
  an event (one large event alone never cuts a client off), or when bytes have waited in the node
  for ``send_timeout`` seconds (checked at each heartbeat); either way the kernel's socket buffer
  (capped, see ``server.sse_response``) is full first. Its EventSource resumes with
  ``Last-Event-ID`` and loses nothing, and nobody else waited for it.
- Replay writes await the socket: after each frame the stream waits (at most ``send_timeout``) until
  the transport's buffer drains, so a client that does not read pins one frame plus the transport's
  high-water mark, never a whole history page; one that stays stuck is cut off.
- One heartbeat per connection per interval, however many conversations it follows.
"""

import asyncio
import logging
from collections.abc import Callable

from aiohttp.abc import AbstractStreamWriter

from wire.sse import HEARTBEAT

log = logging.getLogger(__name__)


def http_chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk (the stream's framing, done once per frame by the fan-out)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class ClientStream:
    __slots__ = (
        "_on_close",
        "_on_slow",
        "_writer",
        "beat_at",
        "chunked",
        "closed",
        "max_buffer",
        "send_timeout",
        "stalled_since",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        writer: AbstractStreamWriter | None,
        *,
        chunked: bool,
        max_buffer: int,
        send_timeout: float,
        on_close: Callable[[], None],
        on_slow: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self._writer = writer
        self._on_close = on_close
        self._on_slow = on_slow
        self.chunked = chunked
        self.max_buffer = max_buffer
        self.send_timeout = send_timeout
        self.stalled_since = 0.0
        """When the node last saw this client's unsent bytes start waiting (0: none wait)."""
        self.beat_at = -1.0
        """When the last heartbeat tick reached this connection."""
        self.closed = False

    def framed(self, frame: bytes) -> bytes:
        return http_chunk(frame) if self.chunked else frame

    def send_control(self, frame: bytes) -> None:
        """A frame that is not an event (``retry:``), or an event outside any history."""
        self.put(self.framed(frame))

    def heartbeat(self, now: float) -> None:
        """A comment that keeps idle connections and proxies alive, and the live send timeout.

        Bytes still waiting in the node mean the kernel's socket buffer is full: a client whose
        bytes have waited ``send_timeout`` seconds is cut off, however few.
        """
        if self.beat_at == now:
            return  # a connection following several conversations gets one beat per tick
        self.beat_at = now
        if self.transport.get_write_buffer_size():
            if not self.stalled_since:
                self.stalled_since = now
            elif now - self.stalled_since > self.send_timeout:
                self.too_slow()
            return  # no heartbeat needed while bytes wait
        self.stalled_since = 0.0
        self.put(self.framed(HEARTBEAT))

    def put(self, data: bytes, *, bounded: bool = True) -> None:
        """The one place bytes meet the socket (the fan-out inlines it: see ``Follower.deliver``)."""
        transport = self.transport
        if self.closed or transport.is_closing():
            self.close()
            return
        transport.write(data)
        if bounded and transport.get_write_buffer_size() - len(data) > self.max_buffer:
            self.too_slow()

    async def drain(self) -> None:
        """Wait (at most ``send_timeout``) until the socket takes what was written; else cut off."""
        writer = self._writer
        if writer is None or self.closed:
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await writer.drain()
        except TimeoutError:
            self.too_slow()
        except ConnectionError:
            self.close()

    def too_slow(self) -> None:
        if self._on_slow is not None:
            self._on_slow()
        self.cut_off()

    def cut_off(self) -> None:
        """Drop the connection now; the client resumes from its last event id."""
        if self.closed:
            return
        log.info(
            "cutting off a client (%d bytes unsent); it resumes from its cursor", self.transport.get_write_buffer_size()
        )
        self.transport.abort()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_close()
