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
