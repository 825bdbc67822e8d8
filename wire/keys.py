"""Redis key and channel names.

Every conversation belongs to one of ``PARTITIONS`` partitions, and every key and the shard channel
of a conversation carry its partition's hash tag (``{p17}``): what one Lua script touches lies in
one Redis Cluster slot, the partition's jobs stream included. A fixed set of tags rather than one
per conversation lets a node re-subscribe a whole partition's conversations with one SSUBSCRIBE
(channels of one slot) after a reconnect, instead of one command per conversation.

Changing ``PARTITIONS`` moves every conversation to other keys: it is part of the stored format.
"""

import zlib
from dataclasses import dataclass

PREFIX = "sf"
PARTITIONS = 128
JOBS_GROUP = "producers"
"""The producers' consumer group on every partition's jobs stream."""


def partition_of(conversation_id: str) -> int:
    """The conversation's partition (CRC-32 of its id: stable across processes and versions)."""
    return zlib.crc32(conversation_id.encode()) % PARTITIONS


def partition_tag(partition: int) -> str:
    return f"{{p{partition}}}"


def jobs_stream(partition: int) -> str:
    """Redis Stream of the partition's generation jobs, read by the producers' consumer group."""
    return f"{PREFIX}:{partition_tag(partition)}:jobs"


ALL_JOBS_STREAMS = tuple(jobs_stream(p) for p in range(PARTITIONS))


@dataclass(frozen=True, slots=True)
class ConversationKeys:
    """The Redis names of one conversation's state."""

    conversation_id: str

    @property
    def partition(self) -> int:
        return partition_of(self.conversation_id)

    @property
    def _base(self) -> str:
        return f"{PREFIX}:{partition_tag(self.partition)}:{self.conversation_id}"

    @property
    def jobs(self) -> str:
        """The jobs stream of the conversation's partition (same slot as its other keys)."""
        return jobs_stream(self.partition)

    @property
    def events(self) -> str:
        """Capped, expiring Redis Stream holding every event: the replayable history."""
        return f"{self._base}:events"

    @property
    def channel(self) -> str:
        """Shard channel (SPUBLISH/SSUBSCRIBE) carrying each event's SSE frame, live."""
        return f"{self._base}:live"

    @property
    def state(self) -> str:
        """Hash: the active response (id, phase, owner, next delta index, cancel flag), first event id."""
        return f"{self._base}:state"

    @property
    def messages(self) -> str:
        """List of finished messages, one JSON object each, oldest first."""
        return f"{self._base}:messages"

    @property
    def draft(self) -> str:
        """String: the text of the answer being generated, appended delta by delta."""
        return f"{self._base}:draft"

    @property
    def watched(self) -> str:
        """String that exists while some node has a client of the conversation (refreshed by the
        nodes, expiring ``STREAMFAN_ORPHAN_SECONDS`` after the last one left): orphaned answers."""
        return f"{self._base}:watched"

    @property
    def all(self) -> tuple[str, str, str, str]:
        """The keys that expire together (the events stream expires with them)."""
        return (self.state, self.messages, self.draft, self.events)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The Redis names of one browser session (the multiplexed stream's credential)."""

    session_id: str

    @property
    def conversations(self) -> str:
        """Set of ``<conversation id>:<token generation>`` this session proved it may read."""
        return f"{PREFIX}:{{s:{self.session_id}}}:conversations"


def conversation_id_from_channel(channel: bytes) -> str:
    """Inverse of ``ConversationKeys.channel``: ``sf:{p17}:<id>:live``."""
    text = channel.decode("ascii")
    return text[text.index("}:") + 2 : text.rindex(":")]
