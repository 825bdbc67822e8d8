"""Script calls on a Redis Cluster: one ``CommandPipe`` per primary, each call routed by its keys'
slot (a script's keys share one).

redis-py's cluster pipeline cost the producer 74-80 µs of its own CPU per token on 3 primaries,
against 24-26 on one Redis (docs/measurements.md, cluster-pipe): a pipeline object, a routing pass
and an encoder per argument on every send. Here it costs 43-52: a call costs what it costs on one
Redis, plus finding its node; the rest is a call per slot where one Redis takes one per send.

Invariants (this class owns them):
- a call's future is resolved exactly once, with its reply or an error;
- ``MOVED`` (the slot has a new owner: a failover, a migration done) updates the slot map and sends
  the call again to the new owner; ``ASK`` (a migration under way, the keys already moved) sends it
  again to the importing node after ``ASKING``, on the same connection in the same write; either at
  most ``_REDIRECTS`` times, as redis-py's own client does (``NodesManager.move_slot``). Calls
  are idempotent (every script here is), so sending again doubles nothing;
- a lost connection, ``CLUSTERDOWN`` or ``TRYAGAIN`` fails the call (callers retry with backoff, as on
  one Redis) and has the slot map read again, once at a time, so the retry finds the new primary.
"""

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redisio.pipe import CommandPipe, Script

log = logging.getLogger(__name__)

_REDIRECTS = 5
"""``MOVED`` or ``ASK`` replies one call follows before it fails (as ``CLUSTERDOWN``)."""

_REFRESH_EVERY = 0.5
"""Seconds between two readings of the slot map, however many calls failed meanwhile."""

_STALE_MAP = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, OSError)
"""Failures after which the slot map is read again (a primary gone, a failover under way)."""

_SLOTS_KEPT = 10_000


@dataclass(slots=True)
class _Call:
    script: Script
    keys: list[str]
    args: list[str | int]
    future: "asyncio.Future[Any]"
    redirects: int = 0


def _consumed(reply: "asyncio.Future[Any]") -> None:
    """A reply nobody reads (``ASKING``'s ``OK``): its error, if any, is the next call's too."""
    if not reply.cancelled():
        reply.exception()


class ClusterPipe:
    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._pipes: dict[str, CommandPipe] = {}
        """One per node that was sent a call, by name (host:port)."""
        self._clients: list[Redis] = []
        """The pipes' clients (their connection pools), closed with them."""
        self._slots: dict[str, int] = {}
        """Each first key's slot (a conversation's keys are named once per answer)."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Slot-map updates and readings under way (owned: cancelled and awaited by ``aclose``)."""
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -_REFRESH_EVERY
        self._closed = False

    def script(self, script: Script, keys: list[str], args: list[str | int]) -> "asyncio.Future[Any]":
        """Run ``script`` on its keys' primary with this turn's other calls there; its reply (or
        error) arrives in the future."""
        call = _Call(script, keys, args, asyncio.get_running_loop().create_future())
        self._send(call)
        return call.future

    def _send(self, call: _Call, node: ClusterNode | None = None, *, asking: bool = False) -> None:
        if self._closed:
            call.future.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return
        if node is None:
            try:
                node = self._cluster.nodes_manager.get_node_from_slot(self._slot(call.keys[0]))
            except RedisClusterException as exc:  # no node holds the slot (yet): as CLUSTERDOWN
                self._refresh()
                call.future.set_exception(ClusterDownError(f"no primary for this call's slot: {exc}"))
                return
        pipe = self._pipe(node)
        if asking:
            # Queued just before the call: the same write, the same connection. As EVAL with the
            # source: an importing node may not hold the script yet, and a NOSCRIPT retry would go
            # without its ASKING (redirects are rare: the source's size does not matter).
            pipe.command(b"ASKING").add_done_callback(_consumed)
            reply = pipe.command(b"EVAL", call.script.source, len(call.keys), *call.keys, *call.args)
        else:
            reply = pipe.script(call.script, call.keys, call.args)
        reply.add_done_callback(functools.partial(self._answered, call))

    def _answered(self, call: _Call, reply: "asyncio.Future[Any]") -> None:
        future = call.future
        if future.done():
            return
        if reply.cancelled():
            future.cancel()
            return
        error = reply.exception()
        if error is None:
            future.set_result(reply.result())
        elif isinstance(error, AskError) and call.redirects < _REDIRECTS:
            call.redirects += 1
            if isinstance(error, MovedError):  # (a MovedError is an AskError)
                self._spawn(self._moved(call, error))
            else:
                host, port = self._cluster.nodes_manager.remap_host_port(error.host, error.port)
                target = self._cluster.nodes_manager.get_node(host=host, port=port) or ClusterNode(
                    host, port, **self._cluster.nodes_manager.connection_kwargs
                )
                self._send(call, target, asking=True)
        else:
            if isinstance(error, AskError):
                error = ClusterDownError(f"redirected more than {_REDIRECTS} times: {error}")
            if isinstance(error, _STALE_MAP):
                self._refresh()
            future.set_exception(error)

    async def _moved(self, call: _Call, error: MovedError) -> None:
        """The slot's new owner, learnt from the reply (as redis-py does), and the call sent there."""
        try:
            await self._cluster.nodes_manager.move_slot(error)
        except Exception as exc:
            self._refresh()
            if not call.future.done():
                call.future.set_exception(ClusterDownError(f"the slot moved and its owner is unknown: {exc!r}"))
            return
        self._send(call)

    def _slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= _SLOTS_KEPT:
                self._slots.clear()
            slot = self._slots[key] = key_slot(key.encode())
        return slot

    def _pipe(self, node: ClusterNode) -> CommandPipe:
        pipe = self._pipes.get(node.name)
        if pipe is None:
            # The node's own connection settings (auth, TLS, timeouts), on a pool of its own.
            client = Redis(
                connection_pool=ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            )
            self._clients.append(client)
            pipe = self._pipes[node.name] = CommandPipe(client)
        return pipe

    def _refresh(self) -> None:
        """Read the slot map again (in the background), unless a reading is under way or recent."""
        now = time.monotonic()
        if self._closed or self._refreshing is not None or now - self._refreshed_at < _REFRESH_EVERY:
            return
        self._refreshed_at = now
        self._refreshing = self._spawn(self._read_map())

    async def _read_map(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except Exception as exc:
            log.warning("reading the cluster's slot map failed (%r)", exc)
        finally:
            self._refreshing = None

    def _spawn(self, work: Any) -> "asyncio.Task[None]":
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Fail what waits and give the connections up."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # they end by cancellation; this task's own is not swallowed
        for pipe in self._pipes.values():
            await pipe.aclose()
        for client in self._clients:
            await client.aclose()
        self._pipes.clear()
        self._clients.clear()
