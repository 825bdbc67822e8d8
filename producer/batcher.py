"""Coalesce the script calls of one event-loop tick into one pipelined round trip.

Hundreds of answers stream at once; their chunks come due in bursts. Sent one by one, each chunk
costs a write, a read and a pool checkout; batched, a burst costs one of each, so the producer keeps
up with bursts instead of queueing them (queueing is latency). Every call keeps its own result or
error, and the scripts are idempotent, so a failed batch is simply retried by its callers.
"""

import asyncio
import hashlib
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

_READ_TIMEOUT = 10.0
"""Seconds for a whole batch's replies (one timeout per batch, not one per reply)."""


def pack(calls: list[list[Any]], sha: bytes) -> bytes:
    """``EVALSHA sha ...`` for each call, in RESP: cheaper than redis-py's per-command encoder."""
    parts: list[bytes] = []
    head = b"$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (len(sha), sha)
    for call in calls:
        parts.append(b"*%d\r\n" % (len(call) + 2))
        parts.append(head)
        for arg in call:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class ScriptBatcher:
    def __init__(self, redis: "Redis | RedisCluster", script: str) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append(([len(keys), *keys, *args], future))
        return await future

    def _flush_soon(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[list[Any], "asyncio.Future[Any]"]]) -> None:
        try:
            results = await self._execute([call for call, _ in batch])
            if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted: its script cache is empty
                await self._redis.script_load(self._script)
                results = await self._execute([call for call, _ in batch])
        except BaseException as exc:  # the callers see it and retry, or are being cancelled anyway
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, calls: list[list[Any]]) -> list[Any]:
        if isinstance(self._redis, RedisCluster):
            # The cluster pipeline sends each shard its calls in one round trip, following MOVED.
            return await self._execute_pipeline(calls)
        pool = self._redis.connection_pool
        if pool.connection_class.read_response is not AbstractConnection.read_response:
            return await self._execute_pipeline(calls)  # not redis-py's own connection: fakeredis
        conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # The hot path: one packed write, then the replies straight from the parser under one
            # timeout. redis-py's pipeline costs several times more CPU per command (a timeout
            # context and an encoder per reply and argument), and that CPU is the producer's limit.
            await conn.send_packed_command(pack(calls, self._sha.encode()), check_health=False)
            parser: Any = conn._parser
            results: list[Any] = []
            async with asyncio.timeout(_READ_TIMEOUT):
                for _ in calls:
                    results.append(await parser.read_response())
            return results  # error replies arrive as exception instances, one per failed call
        except BaseException:
            await conn.disconnect(nowait=True)  # replies may still be in flight: never reuse it
            raise
        finally:
            await pool.release(conn)

    async def _execute_pipeline(self, calls: list[list[Any]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.execute_command("EVALSHA", self._sha, *call)
            return list(await pipe.execute(raise_on_error=False))
