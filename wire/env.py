"""Reading settings from environment variables, the same way in every process.

Bad values fail at start with the variable's name, never later with a confusing error.
"""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Self, TypeVar

N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A setting from the environment is malformed or out of range."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default)


def _env_number(
    env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str, low: N, high: N
) -> N:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is outside {low}..{high}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    return _env_number(env, name, default, int, "a whole number", low, high)


def env_float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    return _env_number(env, name, default, float, "a number", low, high)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history Redis keeps: both the nodes and the producers append, so both read this."""

    max_events: int = 10_000
    """STREAMFAN_HISTORY_MAX_EVENTS: events kept per conversation (approximate, ``MAXLEN ~``)."""
    ttl_seconds: int = 86_400
    """STREAMFAN_RETENTION_SECONDS: a conversation expires this long after its last event."""
    jobs_max: int = 100_000
    """STREAMFAN_JOBS_MAX: cap of the generation jobs stream."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            max_events=env_int(env, "STREAMFAN_HISTORY_MAX_EVENTS", d.max_events, low=100, high=10**8),
            ttl_seconds=env_int(env, "STREAMFAN_RETENTION_SECONDS", d.ttl_seconds, low=60, high=10**9),
            jobs_max=env_int(env, "STREAMFAN_JOBS_MAX", d.jobs_max, low=1000, high=10**9),
        )
