"""The contract's one setting from the environment: how much history Redis keeps.

Part of the contract because both the nodes and the producers append (and the bench harness reads
it here, as ``wire.env.Retention``); how settings are read is ``support.env``'s job.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from support.env import read_settings, setting
from wire.keys import PARTITIONS


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history Redis keeps: both the nodes and the producers append, so both read this."""

    max_events: int = setting(10_000, "STREAMFAN_HISTORY_MAX_EVENTS", low=100, high=10**8)
    """Events kept per conversation (approximate, ``MAXLEN ~``)."""
    ttl_seconds: int = setting(86_400, "STREAMFAN_RETENTION_SECONDS", low=60, high=10**9)
    """A conversation expires this long after its last event."""
    max_messages: int = setting(1000, "STREAMFAN_HISTORY_MAX_MESSAGES", low=10, high=10**7)
    """Messages kept per conversation (the oldest are dropped, like the oldest events)."""
    orphan_seconds: float = setting(60.0, "STREAMFAN_ORPHAN_SECONDS", low=1, high=86_400)
    """An answer nobody has followed on any node for this long is orphaned (see STREAMFAN_ORPHANS)."""
    jobs_max: int = setting(100_000, "STREAMFAN_JOBS_MAX", low=1, high=10**9)
    """Most generation jobs waiting or running; a post beyond it gets 503 (jobs are never trimmed).

    Enforced per partition (a cluster has no atomic global count): each holds ``jobs_per_partition``."""

    @property
    def jobs_per_partition(self) -> int:
        return -(-self.jobs_max // PARTITIONS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return read_settings(cls, os.environ if env is None else env)
