"""A TCP proxy that injects one fault on cue: the deterministic way to lose a reply.

It sits on a free loopback port in front of a real server (Redis). ``lose_reply_to(pattern)`` arms
it: the next client command containing ``pattern`` reaches the server (which executes it), and the
server's reply is swallowed while the client's connection is closed, exactly as a reply lost in the
network. ``stall()`` swallows every reply from then on and keeps the connections open: a server that
hangs. ``kill_all()`` drops every connection at once.
"""

import asyncio
import contextlib
import socket
import struct


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pattern: bytes | None = None
        self._stalled = False
        self.replies_lost = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, pattern: bytes) -> None:
        self._pattern = pattern

    def stall(self) -> None:
        self._stalled = True

    def reset_all(self) -> None:
        """End every connection with a TCP reset (not a FIN): the client's transport sees it and
        closes at once, as after a TLS close or a reset by a middlebox, without any read."""
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                sock = writer.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()

    def kill_all(self) -> None:
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.kill_all()  # every connection's loops end on their own (a cancelled one logs an error)
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        pair = (client_writer, up_writer)
        self._pairs.add(pair)
        armed = asyncio.Event()  # set when this connection's next reply must be lost

        async def to_server() -> None:
            while data := await client_reader.read(65536):
                if self._pattern is not None and self._pattern in data:
                    self._pattern = None
                    armed.set()
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if self._stalled:
                    continue
                if armed.is_set():
                    self.replies_lost += 1
                    client_writer.transport.abort()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()  # the server ended the connection: so does the proxy, to the client

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(to_server())
                group.create_task(to_client())
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for writer in pair:
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
            self._tasks.discard(task)
