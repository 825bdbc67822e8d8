"""The Redis client every process uses: a bounded, blocking pool that retries a dead connection once.

Redis closes pooled connections behind the client's back (its idle ``timeout``, ``CLIENT KILL``, a
restart); without a retry the next command on one fails although Redis is up. Each command is
retried once, on a fresh connection, after a jittered pause. That is safe because every write the
processes make is idempotent (scripts keyed by delta index, owner or idempotency key).
"""

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(url: str, *, max_connections: int, timeout_seconds: float) -> "Redis":
    """A client for ``url``; more than ``max_connections`` callers wait (up to the timeout) for one."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        health_check_interval=30,
        retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), retries=1),
        retry_on_error=[RedisConnectionError],
    )
    return Redis(connection_pool=pool)
