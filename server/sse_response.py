"""The event stream's HTTP response: aiohttp-sse's headers, with no task per connection.

aiohttp-sse's ``EventSourceResponse`` starts a ping task for every connection (about a kilobyte and
a wake-up per client per interval); this node sends heartbeats to all its clients from one loop
(``Hub``), and writes through ``ClientStream``. So only its headers are used, and the two things
its ``prepare`` does for a stream are done here, in the open:
- the kernel drops a peer that leaves sent bytes unacknowledged for ``send_timeout`` seconds
  (``TCP_USER_TIMEOUT``, Linux), so a vanished client is noticed even on an idle stream, and its
  send buffer is capped (``SO_SNDBUF``), so the node's byte bound means what it says;
- aiohttp-sse's ``Connection: keep-alive`` is not sent (meaningless in HTTP/1.1, forbidden in
  HTTP/2): aiohttp sends ``close`` where the connection ends with the response.
"""

import asyncio
import socket
from collections import deque
from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest, HTTPMethodNotAllowed, RequestHandler, StreamResponse
from aiohttp_sse import EventSourceResponse

_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def tune_socket(request: BaseRequest, send_timeout: float, send_buffer: int) -> None:
    """Bound what the kernel holds for this client, and how long it waits for acknowledgements.

    ``SO_SNDBUF`` caps the kernel's send buffer (autotuned, it grows to megabytes, and the node's
    own bound would only start counting after that); ``TCP_USER_TIMEOUT`` aborts the connection
    when sent data stays unacknowledged for ``send_timeout`` seconds (Linux).
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    if _TCP_USER_TIMEOUT is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(send_timeout * 1000))


def end_with_this_request(protocol: RequestHandler) -> None:
    """The connection's last request is the one being answered: free what serves the next ones.

    For a stream that ends with its connection. No keep-alive timer (aiohttp arms one per
    connection, 75 s, and it would stay armed under the stream: about 570 bytes each), and, through
    aiohttp's own ``close()``, no further requests: bytes the client sends are dropped unparsed, so
    the protocol's request parser and its queue of parsed requests, about 2.3 KiB per open stream
    (docs/measurements.md ``stream-parser``), are released here. aiohttp drops the parser itself
    only when the connection is lost, and guards every other use of both with ``close()``'s flag
    (aiohttp 3.14; ``tests/test_dependency_internals.py`` checks it).
    """
    protocol.keep_alive(False)
    protocol.close()
    protocol._parser = None
    protocol._messages = _NO_REQUESTS


_NO_REQUESTS: "deque[Any]" = deque(maxlen=0)
"""Shared by every released protocol: a deque of length 0 keeps nothing appended to it."""


class EventStreamResponse(EventSourceResponse):
    _ended: "asyncio.Future[None] | None" = None

    def __init__(
        self, *, send_timeout: float, send_buffer: int, method: str = "GET", until_close: bool = False
    ) -> None:
        """``until_close``: the body ends where the connection does (HTTP/1.1, RFC 9112 section 6.3),
        so frames go out as they are, without chunked framing (docs/measurements.md, until-close).
        For the native streams, which last as long as their connection anyway; API clients of the
        dialects keep chunked, reusable connections.
        """
        super().__init__(send_timeout=send_timeout)
        del self.headers["Connection"]  # aiohttp says "close" where it applies
        if until_close:
            # aiohttp chunks every HTTP/1.1 body of unknown length unless its length check is off
            # (as for its WebSocket responses); tests/test_api.py checks the bytes on the wire.
            self._length_check = False
            self.force_close()
        self._socket_options = (send_timeout, send_buffer)
        self._method = method
        self._until_close = until_close

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp prepares a returned response again: it is the writer we have
            return await StreamResponse.prepare(self, request)
        if request.method != self._method:
            raise HTTPMethodNotAllowed(request.method, (self._method,))
        tune_socket(request, *self._socket_options)
        writer = await StreamResponse.prepare(self, request)
        if self._until_close and writer is not None:
            end_with_this_request(request.protocol)
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
