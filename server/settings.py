"""The node's settings, from environment variables (see the README's configuration table)."""

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from wire.env import Retention, SettingsError, env_str, read_settings, setting

log = logging.getLogger(__name__)

_MIN_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    """REDIS_URL; unset runs the embedded in-memory broker and producer in this process."""
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """STREAMFAN_SECRET: signs conversation tokens; the same on every node. Required with Redis."""
    retention: Retention = field(default_factory=Retention)
    heartbeat_seconds: float = setting(15.0, "STREAMFAN_HEARTBEAT_SECONDS", low=0.05, high=15)
    """A comment is sent on idle streams this often."""
    retry_ms: int = setting(1000, "STREAMFAN_RETRY_MS", low=0, high=600_000)
    """The reconnection delay told to EventSource."""
    client_buffer_bytes: int = setting(256 * 1024, "STREAMFAN_CLIENT_BUFFER_BYTES", low=4096, high=1 << 30)
    """Unsent bytes a client may fall behind before it is cut off."""
    send_timeout_seconds: float = setting(30.0, "STREAMFAN_SEND_TIMEOUT_SECONDS", low=1, high=3600)
    """A client whose bytes wait this long (its socket buffer full, or unacknowledged) is cut off."""
    socket_send_buffer_bytes: int = setting(64 * 1024, "STREAMFAN_SOCKET_SEND_BUFFER_BYTES", low=4096, high=1 << 26)
    """The kernel's send buffer per stream (Linux doubles it); past it, unsent bytes count above."""
    catchup_buffer_events: int = setting(4096, "STREAMFAN_CATCHUP_BUFFER_EVENTS", low=16, high=10**7)
    """Live events held for a client while its history replays."""
    replay_page_events: int = setting(500, "STREAMFAN_REPLAY_PAGE_EVENTS", low=1, high=100_000)
    """History events read from Redis per round trip."""
    unsubscribe_grace_seconds: float = setting(5.0, "STREAMFAN_UNSUBSCRIBE_GRACE_SECONDS", low=0, high=3600)
    """How long a channel stays subscribed after its last client."""
    redis_timeout_seconds: float = setting(5.0, "STREAMFAN_REDIS_TIMEOUT_SECONDS", low=0.1, high=300)
    """Bound on any Redis call and on waiting for a subscription."""
    redis_max_connections: int = setting(64, "STREAMFAN_REDIS_MAX_CONNECTIONS", low=2, high=100_000)
    """Command connections to Redis; more callers wait for one."""
    max_body_bytes: int = setting(64 * 1024, "STREAMFAN_MAX_BODY_BYTES", low=1024, high=1 << 30)
    """Larger request bodies get 413."""
    max_message_chars: int = setting(16_000, "STREAMFAN_MAX_MESSAGE_CHARS", low=1, high=10**7)
    """Longest user message."""
    max_tokens_limit: int = setting(4096, "STREAMFAN_MAX_TOKENS_LIMIT", low=1, high=10**6)
    """Highest ``max_tokens`` a message may ask for."""
    default_max_tokens: int = setting(400, "STREAMFAN_DEFAULT_MAX_TOKENS", low=1, high=10**6)
    """``max_tokens`` when a message gives none."""
    shutdown_seconds: float = setting(3.0, "STREAMFAN_SHUTDOWN_SECONDS", low=0, high=300)
    """On SIGTERM, how long requests may finish after streams are ended."""
    cors_origins: tuple[str, ...] = ()
    """STREAMFAN_CORS_ORIGINS: comma-separated origins allowed cross-origin; none by default."""

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
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
        origins = tuple(o.strip() for o in env_str(env, "STREAMFAN_CORS_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise SettingsError(f"STREAMFAN_CORS_ORIGINS: {origin!r} is not an origin (no wildcards)")
        settings = read_settings(
            cls, env, redis_url=redis_url, secret=secret, retention=Retention.from_env(env), cors_origins=origins
        )
        if settings.default_max_tokens > settings.max_tokens_limit:
            raise SettingsError("STREAMFAN_DEFAULT_MAX_TOKENS exceeds STREAMFAN_MAX_TOKENS_LIMIT")
        return settings
