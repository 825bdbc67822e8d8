"""The event stream's HTTP response: aiohttp-sse's headers, with no task per connection.

aiohttp-sse's ``EventSourceResponse`` starts a ping task for every connection (about a kilobyte and
a wake-up per client per interval); this node sends heartbeats to all its clients from one loop
(``Hub``), and writes through ``ClientStream``. So only its headers are used, and the two things
its ``prepare`` does for a stream are done here, in the open:
- the kernel drops a peer that leaves sent bytes unacknowledged for ``send_timeout`` seconds
  (``TCP_USER_TIMEOUT``, Linux), so a vanished client is noticed even on an idle stream;
- the ``Connection`` header is not sent (meaningless in HTTP/1.1, forbidden in HTTP/2).
"""

import asyncio
import socket

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest, HTTPMethodNotAllowed, StreamResponse
from aiohttp_sse import EventSourceResponse

_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def set_send_timeout(request: BaseRequest, seconds: float) -> None:
    """Ask the kernel to abort the connection when sent data stays unacknowledged for ``seconds``."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if _TCP_USER_TIMEOUT is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(seconds * 1000))


class EventStreamResponse(EventSourceResponse):
    _ended: "asyncio.Future[None] | None" = None

    def __init__(self, *, send_timeout: float) -> None:
        super().__init__(send_timeout=send_timeout)
        del self.headers["Connection"]
        self._stream_send_timeout = send_timeout

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if request.method != "GET":
            raise HTTPMethodNotAllowed(request.method, ("GET",))
        if self.prepared:
            return await super().prepare(request)
        set_send_timeout(request, self._stream_send_timeout)
        writer = await StreamResponse.prepare(self, request)
        self._ended = asyncio.get_running_loop().create_future()
        return writer

    def is_connected(self) -> bool:
        return self._ended is not None and not self._ended.done()

    @property
    def ended(self) -> "asyncio.Future[None]":
        """Done when the stream should end; awaiting it directly keeps no extra frame alive."""
        if self._ended is None:
            raise RuntimeError("Response is not started")
        return self._ended

    async def wait(self) -> None:
        await self.ended  # cancelling the handler cancels this future: the stream is over either way

    def stop_streaming(self) -> None:
        if self._ended is None:
            raise RuntimeError("Response is not started")
        if not self._ended.done():
            self._ended.set_result(None)
