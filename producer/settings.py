"""The producer's settings, from environment variables (see the README's configuration table)."""

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from producer.generator import Pacing
from wire.env import Retention, SettingsError, env_float, env_int, env_str


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    redis_url: str | None = None
    """REDIS_URL (required when the producer runs on its own)."""
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """STREAMFAN_PRODUCER_NAME: this producer's consumer name in the jobs group."""
    concurrency: int = 1000
    """STREAMFAN_PRODUCER_CONCURRENCY: answers generated at once by this process."""
    claim_idle_seconds: float = 30.0
    """STREAMFAN_JOB_CLAIM_SECONDS: a job nobody has touched this long belonged to a dead producer."""
    publish_retry_seconds: float = 30.0
    """STREAMFAN_PUBLISH_RETRY_SECONDS: how long a chunk is retried while Redis is unreachable."""
    drain_seconds: float = 20.0
    """STREAMFAN_PRODUCER_DRAIN_SECONDS: on SIGTERM, how long answers in flight may finish."""
    redis_max_connections: int = 64
    """STREAMFAN_REDIS_MAX_CONNECTIONS: connections to Redis; more callers wait for one."""
    generator: str = "simulated"
    """STREAMFAN_GENERATOR: 'simulated', 'echo', or 'package.module:factory'."""
    pacing: Pacing = field(default_factory=Pacing)
    """STREAMFAN_SIM_TTFT_MS, STREAMFAN_SIM_TOKENS_PER_SECOND, STREAMFAN_SIM_JITTER, STREAMFAN_SIM_SEED."""
    retention: Retention = field(default_factory=Retention)
    metrics_host: str = "127.0.0.1"
    """STREAMFAN_PRODUCER_METRICS_HOST: where the metrics endpoint listens (0.0.0.0 in containers)."""
    metrics_port: int = 0
    """STREAMFAN_PRODUCER_METRICS_PORT: serves GET /metrics and /healthz; 0 turns it off."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        defaults = cls()
        pacing = Pacing(
            ttft_seconds=env_int(env, "STREAMFAN_SIM_TTFT_MS", 300, low=0, high=600_000) / 1000,
            tokens_per_second=env_float(env, "STREAMFAN_SIM_TOKENS_PER_SECOND", 40.0, low=0.1, high=100_000),
            jitter=env_float(env, "STREAMFAN_SIM_JITTER", 0.3, low=0, high=0.99),
            seed=env_int(env, "STREAMFAN_SIM_SEED", 0, low=0, high=2**63),
        )
        generator = env_str(env, "STREAMFAN_GENERATOR", "simulated")
        if generator not in ("simulated", "echo") and ":" not in generator:
            raise SettingsError(f"STREAMFAN_GENERATOR={generator!r}: use 'simulated', 'echo' or 'module:factory'")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            name=env.get("STREAMFAN_PRODUCER_NAME") or defaults.name,
            concurrency=env_int(env, "STREAMFAN_PRODUCER_CONCURRENCY", defaults.concurrency, low=1, high=100_000),
            claim_idle_seconds=env_float(
                env, "STREAMFAN_JOB_CLAIM_SECONDS", defaults.claim_idle_seconds, low=1, high=86_400
            ),
            publish_retry_seconds=env_float(
                env, "STREAMFAN_PUBLISH_RETRY_SECONDS", defaults.publish_retry_seconds, low=0.1, high=86_400
            ),
            drain_seconds=env_float(env, "STREAMFAN_PRODUCER_DRAIN_SECONDS", defaults.drain_seconds, low=0, high=3600),
            redis_max_connections=env_int(
                env, "STREAMFAN_REDIS_MAX_CONNECTIONS", defaults.redis_max_connections, low=2, high=100_000
            ),
            generator=generator,
            pacing=pacing,
            retention=Retention.from_env(env),
            metrics_host=env_str(env, "STREAMFAN_PRODUCER_METRICS_HOST", defaults.metrics_host),
            metrics_port=env_int(env, "STREAMFAN_PRODUCER_METRICS_PORT", defaults.metrics_port, low=0, high=65535),
        )
