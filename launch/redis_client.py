"""The Redis client every process uses: standalone or Redis Cluster, retrying a dead connection once.

Redis closes pooled connections behind the client's back (its idle ``timeout``, ``CLIENT KILL``, a
restart); without a retry the next command on one fails although Redis is up. Each command is
retried once, on a fresh connection, after a jittered pause. That is safe because every write the
processes make is idempotent (scripts keyed by delta index, owner or idempotency key).

``STREAMFAN_REDIS_CLUSTER`` says whether ``REDIS_URL`` names a Redis (or Valkey) Cluster node:
``1``, ``0``, or ``auto`` (the default: ask the server with ``INFO cluster`` once at start, before
the event loop runs). A cluster client discovers the other nodes from that one and follows MOVED.
"""

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

import redis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from support.backoff import Backoff
from support.env import SettingsError, read_settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RedisTopology:
    cluster: str = setting("auto", "STREAMFAN_REDIS_CLUSTER")
    """'1': REDIS_URL names a Redis Cluster node; '0': a standalone Redis; 'auto': ask it at start."""
    probe_seconds: float = setting(30.0, "STREAMFAN_REDIS_PROBE_SECONDS", low=0.1, high=3600)
    """With 'auto': how long to wait for Redis to answer at start before giving up."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        settings = read_settings(cls, os.environ if env is None else env)
        if settings.cluster not in ("auto", "0", "1"):
            raise SettingsError(f"STREAMFAN_REDIS_CLUSTER={settings.cluster!r}: use 'auto', '0' or '1'")
        return settings


def is_cluster(url: str, topology: RedisTopology) -> bool:
    """Whether ``url`` is a cluster node, as configured or as the server says (blocking: call it
    before the event loop starts). Raises ``RedisError`` if Redis does not answer in time."""
    if topology.cluster != "auto":
        return topology.cluster == "1"
    deadline = time.monotonic() + topology.probe_seconds
    backoff = Backoff(first=0.1, cap=2.0)
    while True:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            info = client.info("cluster")
            return bool(info.get("cluster_enabled"))
        except (RedisError, OSError) as exc:
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise RedisConnectionError(f"Redis at {url} did not answer INFO cluster: {exc!r}") from exc
            log.warning("Redis at %s does not answer yet (%r); asking again", url, exc)
            time.sleep(delay)
        finally:
            client.close()


def connect(url: str, *, max_connections: int, timeout_seconds: float, cluster: bool = False) -> "Redis | RedisCluster":
    """A client for ``url``; more than ``max_connections`` callers wait (up to the timeout) for one."""
    retry = Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=1)
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
            retry=retry,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[RedisConnectionError],
    )
    return Redis(connection_pool=pool)


def connect_from_env(url: str, *, max_connections: int, timeout_seconds: float) -> "Redis | RedisCluster":
    """``connect``, standalone or cluster as ``STREAMFAN_REDIS_CLUSTER`` says (blocking: see ``is_cluster``)."""
    cluster = is_cluster(url, RedisTopology.from_env())
    if cluster:
        log.info("REDIS_URL names a Redis Cluster node: sharded pub/sub, one connection per primary")
    return connect(url, max_connections=max_connections, timeout_seconds=timeout_seconds, cluster=cluster)
