"""The node's settings, from environment variables (see the README's configuration table)."""

import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from server.peers import Network, parse_networks
from support.env import SettingsError, env_secret, env_str, read_settings, setting
from wire.env import Retention

log = logging.getLogger(__name__)

_MIN_SECRET_BYTES = 16
_MIN_DISTINCT_BYTES = 8
_LOOPBACK = "127.0.0.0/8,::1"


def _ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _strong_secret(name: str, raw: str) -> bytes:
    """A secret long and varied enough to sign with; a weak one stops the node with its name."""
    secret = raw.encode()
    if len(secret) < _MIN_SECRET_BYTES:
        raise SettingsError(f"{name} must be at least {_MIN_SECRET_BYTES} bytes")
    if any(ch.isspace() for ch in raw):
        raise SettingsError(f"{name} must not contain whitespace")
    if len(set(secret)) < _MIN_DISTINCT_BYTES:
        raise SettingsError(f"{name} is too weak: use a random value (e.g. openssl rand -hex 32)")
    return secret


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    """REDIS_URL; unset runs the embedded in-memory broker and producer in this process."""
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    """STREAMFAN_SECRET: signs conversation tokens; the same on every node. Required with Redis."""
    previous_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    """STREAMFAN_PREVIOUS_SECRETS: comma-separated secrets that still verify tokens (rotation)."""
    trusted_proxies: tuple[Network, ...] = field(default_factory=lambda: parse_networks(_LOOPBACK))
    """STREAMFAN_TRUSTED_PROXIES: proxies whose X-Forwarded-For/-Proto are believed."""
    limits_exempt: tuple[Network, ...] = ()
    """STREAMFAN_LIMITS_EXEMPT: clients never rate- or stream-limited (none unless configured: behind
    a same-host proxy that forwards no address, every client would look like loopback)."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """STREAMFAN_API_KEYS: comma-separated keys of the OpenAI-compatible endpoints (none: they are off)."""
    durable_streams: str = setting("off", "STREAMFAN_DURABLE_STREAMS")
    """The Durable Streams endpoints (``/v1/stream/{path}``): 'off'; 'keys' (writes present one of
    STREAMFAN_API_KEYS, reads a key or the stream's read token unless it is public); 'open' (anyone
    may create, append and read: a trusted network only)."""
    durable_max_body_bytes: int = setting(1 << 20, "STREAMFAN_DURABLE_MAX_BODY_BYTES", low=1024, high=1 << 30)
    """Largest body one Durable Streams create or append may carry (one message, or one JSON array)."""
    durable_long_poll_seconds: float = setting(15.0, "STREAMFAN_DURABLE_LONG_POLL_SECONDS", low=0.1, high=600)
    """How long a Durable Streams long-poll waits for data before its 204 (clients wait 20 s)."""
    durable_sse_seconds: float = setting(60.0, "STREAMFAN_DURABLE_SSE_SECONDS", low=1, high=3600)
    """How long one Durable Streams SSE response lasts before the server ends it (the protocol's ~60 s:
    the client reconnects from its last offset, and CDNs can collapse the reconnects)."""
    model_name: str = setting("streamfan", "STREAMFAN_MODEL_NAME")
    """The model name the OpenAI-compatible endpoints list and answer with (when a request names none)."""
    allowed_hosts: tuple[str, ...] = ()
    """STREAMFAN_ALLOWED_HOSTS: comma-separated Host names served (empty: any)."""
    token_max_age_seconds: int = setting(86_400, "STREAMFAN_TOKEN_MAX_AGE_SECONDS", low=60, high=10**9)
    """A token expires this long after it was issued (re-issued on every authorized use)."""
    streams_per_ip: int = setting(64, "STREAMFAN_STREAMS_PER_IP", low=1, high=10**6)
    """Open event streams one client address may hold on one node."""
    streams_per_conversation: int = setting(512, "STREAMFAN_STREAMS_PER_CONVERSATION", low=1, high=10**6)
    """Open event streams of one conversation on one node."""
    creates_per_minute: int = setting(30, "STREAMFAN_CREATES_PER_MINUTE", low=1, high=10**7)
    """Conversations one client address may create per minute (a third of it at once)."""
    posts_per_minute: int = setting(120, "STREAMFAN_POSTS_PER_MINUTE", low=1, high=10**7)
    """Messages, cancels and deletes one client address may send per minute (a third at once)."""
    body_timeout_seconds: float = setting(10.0, "STREAMFAN_BODY_TIMEOUT_SECONDS", low=0.1, high=3600)
    """A request body that takes longer to arrive gets 408."""
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
    replay_page_events: int = setting(200, "STREAMFAN_REPLAY_PAGE_EVENTS", low=1, high=100_000)
    """History events read from Redis per round trip."""
    replay_page_bytes: int = setting(128 * 1024, "STREAMFAN_REPLAY_PAGE_BYTES", low=1024, high=1 << 30)
    """Most event data one replay page holds (at least one event): what a replaying client pins."""
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
        redis_url = env_secret(env, "REDIS_URL") or None
        raw_secret = env_secret(env, "STREAMFAN_SECRET")
        if raw_secret:
            secret = _strong_secret("STREAMFAN_SECRET", raw_secret)
        elif redis_url is not None:
            raise SettingsError("STREAMFAN_SECRET must be set, the same on every node, when REDIS_URL is set")
        else:
            log.warning("STREAMFAN_SECRET unset: tokens are signed with a random key and die with this process")
            secret = secrets.token_bytes(32)
        previous = tuple(
            _strong_secret("STREAMFAN_PREVIOUS_SECRETS", item.strip())
            for item in env_secret(env, "STREAMFAN_PREVIOUS_SECRETS").split(",")
            if item.strip()
        )
        networks = {}
        for name, default in (("STREAMFAN_TRUSTED_PROXIES", _LOOPBACK), ("STREAMFAN_LIMITS_EXEMPT", "")):
            try:
                networks[name] = parse_networks(env_str(env, name, default))
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
        api_keys = tuple(k.strip() for k in env_secret(env, "STREAMFAN_API_KEYS").split(",") if k.strip())
        for key in api_keys:
            if len(key) < _MIN_SECRET_BYTES or any(ch.isspace() for ch in key):
                raise SettingsError(f"STREAMFAN_API_KEYS: each key needs {_MIN_SECRET_BYTES}+ characters, no spaces")
        hosts = tuple(
            h.strip().lower().strip("[]") for h in env_str(env, "STREAMFAN_ALLOWED_HOSTS", "").split(",") if h.strip()
        )
        for host in hosts:
            if ":" in host and not _ipv6(host):  # the port is never compared: such an entry never matches
                raise SettingsError(f"STREAMFAN_ALLOWED_HOSTS: {host!r} has a port; list host names only")
        origins = tuple(o.strip() for o in env_str(env, "STREAMFAN_CORS_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise SettingsError(f"STREAMFAN_CORS_ORIGINS: {origin!r} is not an origin (no wildcards)")
        settings = read_settings(
            cls,
            env,
            redis_url=redis_url,
            secret=secret,
            previous_secrets=previous,
            trusted_proxies=networks["STREAMFAN_TRUSTED_PROXIES"],
            limits_exempt=networks["STREAMFAN_LIMITS_EXEMPT"],
            allowed_hosts=hosts,
            api_keys=api_keys,
            retention=Retention.from_env(env),
            cors_origins=origins,
        )
        if settings.durable_streams not in ("off", "keys", "open"):
            raise SettingsError(f"STREAMFAN_DURABLE_STREAMS={settings.durable_streams!r}: use 'off', 'keys' or 'open'")
        if settings.durable_streams == "keys" and not api_keys:
            raise SettingsError("STREAMFAN_DURABLE_STREAMS=keys needs STREAMFAN_API_KEYS")
        if settings.default_max_tokens > settings.max_tokens_limit:
            raise SettingsError("STREAMFAN_DEFAULT_MAX_TOKENS exceeds STREAMFAN_MAX_TOKENS_LIMIT")
        return settings
