"""aiohttp-sse's ``EventSourceResponse`` without its per-connection ping task.

A task per connection costs about a kilobyte and a wake-up per client per interval; the hub sends
heartbeats to all of a node's clients from one loop instead. Everything else (headers, the send
timeout on the socket, ``wait``/``stop_streaming``) is aiohttp-sse's behaviour.
"""

import asyncio

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest, HTTPMethodNotAllowed, StreamResponse
from aiohttp_sse import EventSourceResponse


class RelayResponse(EventSourceResponse):
    _ended: "asyncio.Future[None] | None" = None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if request.method != "GET":
            raise HTTPMethodNotAllowed(request.method, ("GET",))
        if self.prepared:
            return await super().prepare(request)
        self._set_tcp_user_timeout(request)  # a peer that stops acknowledging is dropped by the kernel
        del self.headers["Connection"]  # meaningless in HTTP/1.1, forbidden in HTTP/2
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
