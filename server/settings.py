"""The node's settings, from environment variables (see the README's configuration table)."""

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from wire.env import Retention, SettingsError, env_float, env_int, env_str

log = logging.getLogger(__name__)

_MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    """REDIS_URL; unset runs the embedded in-memory broker and producer in this process."""
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """STREAMFAN_SECRET: signs conversation tokens; the same on every node. Required with Redis."""
    retention: Retention = field(default_factory=Retention)
    heartbeat_seconds: float = 15.0
    """STREAMFAN_HEARTBEAT_SECONDS: comment sent on idle streams."""
    retry_ms: int = 1000
    """STREAMFAN_RETRY_MS: the reconnection delay told to EventSource."""
    client_buffer_bytes: int = 256 * 1024
    """STREAMFAN_CLIENT_BUFFER_BYTES: unsent bytes a client may fall behind before it is cut off."""
    send_timeout_seconds: float = 30.0
    """STREAMFAN_SEND_TIMEOUT_SECONDS: a client whose socket accepts nothing this long is dropped."""
    catchup_buffer_events: int = 4096
    """STREAMFAN_CATCHUP_BUFFER_EVENTS: live events held for a client while its history replays."""
    replay_page_events: int = 500
    """STREAMFAN_REPLAY_PAGE_EVENTS: history events read from Redis per round trip."""
    unsubscribe_grace_seconds: float = 5.0
    """STREAMFAN_UNSUBSCRIBE_GRACE_SECONDS: how long a channel stays subscribed after its last client."""
    redis_timeout_seconds: float = 5.0
    """STREAMFAN_REDIS_TIMEOUT_SECONDS: bound on any Redis call and on waiting for a subscription."""
    redis_max_connections: int = 64
    """STREAMFAN_REDIS_MAX_CONNECTIONS: command connections to Redis; more callers wait for one."""
    max_body_bytes: int = 64 * 1024
    """STREAMFAN_MAX_BODY_BYTES: larger request bodies get 413."""
    max_message_chars: int = 16_000
    """STREAMFAN_MAX_MESSAGE_CHARS: longest user message."""
    max_tokens_limit: int = 4096
    """STREAMFAN_MAX_TOKENS_LIMIT: highest ``max_tokens`` a message may ask for."""
    default_max_tokens: int = 400
    """STREAMFAN_DEFAULT_MAX_TOKENS: ``max_tokens`` when a message gives none."""
    shutdown_seconds: float = 3.0
    """STREAMFAN_SHUTDOWN_SECONDS: on SIGTERM, how long requests may finish after streams are ended."""
    cors_origins: tuple[str, ...] = ()
    """STREAMFAN_CORS_ORIGINS: comma-separated origins allowed cross-origin; none by default."""

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        d = cls()
        redis_url = env.get("REDIS_URL") or None
        raw_secret = env.get("STREAMFAN_SECRET", "")
        if raw_secret:
            if len(raw_secret.encode()) < _MIN_SECRET_BYTES:
                raise SettingsError(f"STREAMFAN_SECRET must be at least {_MIN_SECRET_BYTES} bytes")
            secret = raw_secret.encode()
        elif redis_url is not None:
            raise SettingsError("STREAMFAN_SECRET must be set, the same on every node, when REDIS_URL is set")
        else:
            log.warning("STREAMFAN_SECRET unset: tokens are signed with a random key and die with this process")
            secret = secrets.token_bytes(32)
        default_max_tokens = env_int(env, "STREAMFAN_DEFAULT_MAX_TOKENS", d.default_max_tokens, low=1, high=10**6)
        max_tokens_limit = env_int(env, "STREAMFAN_MAX_TOKENS_LIMIT", d.max_tokens_limit, low=1, high=10**6)
        if default_max_tokens > max_tokens_limit:
            raise SettingsError("STREAMFAN_DEFAULT_MAX_TOKENS exceeds STREAMFAN_MAX_TOKENS_LIMIT")
        origins = tuple(o.strip() for o in env_str(env, "STREAMFAN_CORS_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise SettingsError(f"STREAMFAN_CORS_ORIGINS: {origin!r} is not an origin (no wildcards)")
        return cls(
            redis_url=redis_url,
            secret=secret,
            retention=Retention.from_env(env),
            heartbeat_seconds=env_float(env, "STREAMFAN_HEARTBEAT_SECONDS", d.heartbeat_seconds, low=0.05, high=15),
            retry_ms=env_int(env, "STREAMFAN_RETRY_MS", d.retry_ms, low=0, high=600_000),
            client_buffer_bytes=env_int(
                env, "STREAMFAN_CLIENT_BUFFER_BYTES", d.client_buffer_bytes, low=4096, high=1 << 30
            ),
            send_timeout_seconds=env_float(
                env, "STREAMFAN_SEND_TIMEOUT_SECONDS", d.send_timeout_seconds, low=1, high=3600
            ),
            catchup_buffer_events=env_int(
                env, "STREAMFAN_CATCHUP_BUFFER_EVENTS", d.catchup_buffer_events, low=16, high=10**7
            ),
            replay_page_events=env_int(env, "STREAMFAN_REPLAY_PAGE_EVENTS", d.replay_page_events, low=1, high=100_000),
            unsubscribe_grace_seconds=env_float(
                env, "STREAMFAN_UNSUBSCRIBE_GRACE_SECONDS", d.unsubscribe_grace_seconds, low=0, high=3600
            ),
            redis_timeout_seconds=env_float(
                env, "STREAMFAN_REDIS_TIMEOUT_SECONDS", d.redis_timeout_seconds, low=0.1, high=300
            ),
            redis_max_connections=env_int(
                env, "STREAMFAN_REDIS_MAX_CONNECTIONS", d.redis_max_connections, low=2, high=100_000
            ),
            max_body_bytes=env_int(env, "STREAMFAN_MAX_BODY_BYTES", d.max_body_bytes, low=1024, high=1 << 30),
            max_message_chars=env_int(env, "STREAMFAN_MAX_MESSAGE_CHARS", d.max_message_chars, low=1, high=10**7),
            max_tokens_limit=max_tokens_limit,
            default_max_tokens=default_max_tokens,
            shutdown_seconds=env_float(env, "STREAMFAN_SHUTDOWN_SECONDS", d.shutdown_seconds, low=0, high=300),
            cors_origins=origins,
        )
