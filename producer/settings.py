"""The producer's settings, from environment variables (see the README's configuration table)."""

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from producer.generator import Pacing
from support.env import SettingsError, env_float, env_int, env_secret, read_settings, setting
from wire.env import Retention


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    redis_url: str | None = None
    """REDIS_URL (required when the producer runs on its own)."""
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """STREAMFAN_PRODUCER_NAME: this producer's consumer name in the jobs group."""
    concurrency: int = setting(1000, "STREAMFAN_PRODUCER_CONCURRENCY", low=1, high=100_000)
    """Answers generated at once by this process."""
    claim_idle_seconds: float = setting(5.0, "STREAMFAN_JOB_CLAIM_SECONDS", low=1, high=86_400)
    """A job its producer has not re-claimed this long belonged to a producer that stopped."""
    takeover: str = setting("continue", "STREAMFAN_TAKEOVER")
    """A half-written answer whose producer stopped: 'continue' it (if the generator can) or 'fail' it."""
    publish_retry_seconds: float = setting(30.0, "STREAMFAN_PUBLISH_RETRY_SECONDS", low=0.1, high=86_400)
    """How long a chunk is retried while Redis is unreachable."""
    publish_interval_ms: float = setting(5.0, "STREAMFAN_PUBLISH_INTERVAL_MS", low=0, high=1000)
    """The shortest time between two sends of chunks to Redis: chunks that come sooner join the
    next call (at most this much later; a chunk after a quiet spell goes at once). Much of what a
    chunk costs is its call's, shared by the call's chunks: at 6,000 chunks/s one call per 5 ms
    (the side-by-side harness's own tick) instead of per 2 ms halves the calls (~30 chunks each,
    not ~12) and cuts the producer's Python calls per chunk by a tenth; timed CPU differences were
    within this box's noise (docs/measurements.md, deltas-interval). 0 sends every loop turn."""
    drain_seconds: float = setting(20.0, "STREAMFAN_PRODUCER_DRAIN_SECONDS", low=0, high=3600)
    """On SIGTERM, how long answers in flight may finish."""
    redis_max_connections: int = setting(64, "STREAMFAN_REDIS_MAX_CONNECTIONS", low=2, high=100_000)
    """Connections to Redis; more callers wait for one."""
    orphans: str = setting("keep", "STREAMFAN_ORPHANS")
    """An answer nobody follows any more (STREAMFAN_ORPHAN_SECONDS): 'keep' generating it (a returning
    tab finds it whole) or 'cancel' it (frees the model server)."""
    generator: str = setting("simulated", "STREAMFAN_GENERATOR")
    """'simulated', 'echo', 'openai' (an OpenAI-compatible server), or 'package.module:factory'."""
    pacing: Pacing = field(default_factory=Pacing)
    """STREAMFAN_SIM_TTFT_MS, STREAMFAN_SIM_TOKENS_PER_SECOND, STREAMFAN_SIM_JITTER, STREAMFAN_SIM_SEED."""
    retention: Retention = field(default_factory=Retention)
    metrics_host: str = setting("127.0.0.1", "STREAMFAN_PRODUCER_METRICS_HOST")
    """Where the metrics endpoint listens (0.0.0.0 in containers)."""
    metrics_port: int = setting(0, "STREAMFAN_PRODUCER_METRICS_PORT", low=0, high=65535)
    """Serves GET /metrics and /healthz; 0 turns it off."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        # The simulated model's pacing: its time to first token is given in milliseconds.
        pacing = Pacing(
            ttft_seconds=env_int(env, "STREAMFAN_SIM_TTFT_MS", 300, low=0, high=600_000) / 1000,
            tokens_per_second=env_float(env, "STREAMFAN_SIM_TOKENS_PER_SECOND", 40.0, low=0.1, high=100_000),
            jitter=env_float(env, "STREAMFAN_SIM_JITTER", 0.3, low=0, high=0.99),
            seed=env_int(env, "STREAMFAN_SIM_SEED", 0, low=0, high=2**63),
        )
        settings = read_settings(
            cls,
            env,
            redis_url=env_secret(env, "REDIS_URL") or None,
            name=env.get("STREAMFAN_PRODUCER_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            pacing=pacing,
            retention=Retention.from_env(env),
        )
        if settings.orphans not in ("keep", "cancel"):
            raise SettingsError(f"STREAMFAN_ORPHANS={settings.orphans!r}: use 'keep' or 'cancel'")
        if settings.takeover not in ("continue", "fail"):
            raise SettingsError(f"STREAMFAN_TAKEOVER={settings.takeover!r}: use 'continue' or 'fail'")
        if settings.generator == "openai":  # checked at start, with the rest, not at the first answer
            from producer.upstream import UpstreamSettings

            UpstreamSettings.from_env(env)
        if settings.generator not in ("simulated", "echo", "openai") and ":" not in settings.generator:
            raise SettingsError(
                f"STREAMFAN_GENERATOR={settings.generator!r}: use 'simulated', 'echo', 'openai' or 'module:factory'"
            )
        return settings
