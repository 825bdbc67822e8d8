"""The private details of aiohttp and redis-py that streamfan relies on, checked by name, so an
upgrade that removes one fails here, loudly, rather than somewhere on the hot path (pyproject.toml
bounds both libraries; raise a bound once this passes on the new version)."""

import inspect
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from launch.processes import RedisServer
from redisio.pipe import native


def test_aiohttp_stream_responses_keep_their_length_check_flag() -> None:
    """server/sse_response.py turns it off so a native stream's body is not chunked."""
    response = web.StreamResponse()
    assert response._length_check is True  # the attribute exists and defaults on
    assert "_length_check" in inspect.getsource(web.StreamResponse)


async def test_redis_py_connections_expose_their_writer_and_parser(redis_process: RedisServer) -> None:
    """redisio/pipe.py writes on ``_writer`` and reads from ``_parser``; server/pubsub.py reads push
    messages from ``_parser.read_response(push_request=True)``."""
    client = Redis(port=redis_process.port)
    try:
        conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            assert native(type(conn)) and isinstance(conn, AbstractConnection)
            assert conn._writer is not None and not conn._writer.is_closing()
            parser: Any = conn._parser  # the class redis-py picked (hiredis' or its own): read_response is there
            assert "push_request" in inspect.signature(parser.read_response).parameters
            await conn.send_command("PING")
            assert await parser.read_response() in (b"PONG", "PONG")
        finally:
            await client.connection_pool.release(conn)
    finally:
        await client.aclose()


def test_aiohttp_protocols_ignore_requests_after_close_and_name_their_parser() -> None:
    """server/sse_response.py ``end_with_this_request`` calls ``close()`` on a stream's protocol and
    then drops ``_parser`` and ``_messages``: aiohttp must drop what arrives after ``close()``
    before it parses it, and keep both under these names."""
    from aiohttp.web_protocol import RequestHandler

    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    assert {"_parser", "_messages", "_close"} <= slots
    received = inspect.getsource(RequestHandler.data_received).split("\n")
    assert received[1].strip() == "if self._force_close or self._close:"
    assert received[2].strip() == "return"
    assert "self._close = True" in inspect.getsource(RequestHandler.close)
