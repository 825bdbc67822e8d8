"""Which way a process's script calls go to Redis, for the producer's publish path: one layer, three
transports, the same contract (``ScriptCalls``).

- a standalone Redis: ``redisio.pipe.CommandPipe``, one pipelined connection;
- a Redis Cluster: ``redisio.cluster_pipe.ClusterPipe``, one ``CommandPipe`` per primary;
- anything else (the embedded broker, test doubles): ``redisio.batcher.ScriptBatcher``, redis-py's
  pipelines, one per loop turn.
"""

import asyncio
from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster

from redisio.batcher import ScriptBatcher
from redisio.cluster_pipe import ClusterPipe
from redisio.pipe import Script, pipe_for


class ScriptCalls(Protocol):
    def script(self, script: Script, keys: list[str], args: list[str | int]) -> "asyncio.Future[Any]":
        """Run ``script`` with this loop turn's other calls; its reply (or error) arrives in the future."""
        ...

    async def aclose(self) -> None:
        """Give the connections up (calls still waiting fail, or end, first)."""
        ...


def script_calls_for(redis: "Redis | RedisCluster") -> ScriptCalls:
    """The cheapest transport ``redis`` allows (the module's docstring)."""
    if isinstance(redis, RedisCluster):
        return ClusterPipe(redis)
    return pipe_for(redis) or ScriptBatcher(redis)
