"""Coalesce the script calls of one event-loop tick into one redis-py pipeline: for the embedded
broker and test doubles (``redisio.calls``).

A standalone Redis takes ``redisio.pipe.CommandPipe`` instead, which keeps one connection and skips
redis-py's per-command work, and a cluster ``redisio.cluster_pipe.ClusterPipe``. Every call keeps
its own result or error, and the scripts are idempotent, so a failed batch is simply retried by its
callers.
"""

import asyncio
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from redisio.pipe import Script

_Pending = tuple[Script, list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: "Redis | RedisCluster") -> None:
        self._redis = redis
        self._pending: list[_Pending] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def script(self, script: Script, keys: list[str], args: list[str | int]) -> "asyncio.Future[Any]":
        """Queue the call for this tick's batch; its reply (or error) arrives in the future.
        Cancelling the future before the tick ends withdraws the call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append((script, [len(keys), *keys, *args], future))
        return future

    def _flush_soon(self) -> None:
        batch = [call for call in self._pending if not call[2].done()]
        self._pending = []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            results = await self._execute(batch)
            lost = {
                script
                for (script, _, _), result in zip(batch, results, strict=True)
                if isinstance(result, NoScriptError)
            }
            if lost:  # Redis restarted: its script cache is empty
                for script in lost:
                    await self._redis.script_load(script.source)
                results = await self._execute(batch)
        except BaseException as exc:  # the callers see it and retry, or are being cancelled anyway
            for _, _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Pending]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, call, _ in batch:
                pipe.execute_command("EVALSHA", script.sha.decode(), *call)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Wait for the batches on the way (their callers get their replies)."""
        if self._flushes:
            await asyncio.wait(list(self._flushes))
