"""Redis key and channel names.

Every conversation belongs to one of ``PARTITIONS`` partitions, and every key and the shard channel
of a conversation carry its partition's hash tag (``{p17}``): what one Lua script touches lies in
one Redis Cluster slot, the partition's jobs stream included. A fixed set of tags rather than one
per conversation lets a node re-subscribe a whole partition's conversations with one SSUBSCRIBE
(channels of one slot) after a reconnect, instead of one command per conversation.

Changing ``PARTITIONS`` moves every conversation to other keys: it is part of the stored format.
"""

import re
import zlib
from dataclasses import dataclass, field
from typing import Final

PREFIX = "sf"
PARTITIONS = 128
JOBS_GROUP = "producers"
"""The producers' consumer group on every partition's jobs stream."""
ID_PATTERN: Final = "[A-Za-z0-9_-]{16,64}"
"""A conversation's (and a browser session's) id: URL-safe, so it goes into paths, keys and the
multiplexed stream's id lines as it is. The page's copy (``web/js/api.js``) is held equal by a test."""
ID_RE: Final = re.compile(rf"\A{ID_PATTERN}\Z")


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
    """The Redis names of one conversation's state, made once when the object is (the per-chunk
    path reads them for every chunk: computed on each read they were most of the publisher's
    per-chunk Python work)."""

    conversation_id: str
    partition: int = field(init=False)
    jobs: str = field(init=False)
    """The jobs stream of the conversation's partition (same slot as its other keys)."""
    events: str = field(init=False)
    """Capped, expiring Redis Stream holding every event: the replayable history."""
    channel: str = field(init=False)
    """Shard channel (SPUBLISH/SSUBSCRIBE) carrying each event's SSE frame, live. Named as the
    history stream (channels and keys are separate namespaces): ``DELTAS`` publishes on the key it
    appends to, with no name built in Lua per chunk (docs/measurements.md, channel-name)."""
    state: str = field(init=False)
    """Hash: the active response (id, phase, owner, its start, cancel flag), first event id."""
    messages: str = field(init=False)
    """List of finished messages, one JSON object each, oldest first."""
    draft: str = field(init=False)
    """No longer written (an answer's text is read from its events); deleted with the rest."""
    watched: str = field(init=False)
    """String that exists while some node has a client of the conversation (refreshed by the
    nodes, expiring ``STREAMFAN_ORPHAN_SECONDS`` after the last one left): orphaned answers."""
    all: tuple[str, str, str, str] = field(init=False)
    """The keys that expire together (the events stream expires with them)."""
    fences: str = field(init=False)
    """What every answer's fence name (``fence``) starts with."""

    def __post_init__(self) -> None:
        partition = partition_of(self.conversation_id)
        base = f"{PREFIX}:{partition_tag(partition)}:{self.conversation_id}"
        names = {
            "partition": partition,
            "jobs": jobs_stream(partition),
            "events": f"{base}:events",
            "channel": f"{base}:events",
            "state": f"{base}:state",
            "messages": f"{base}:messages",
            "draft": f"{base}:draft",
            "watched": f"{base}:watched",
            "fences": f"{base}:fence:",
        }
        for name, value in names.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "all", (names["state"], names["messages"], names["draft"], names["events"]))

    def fence(self, response_id: str, owner: str) -> str:
        """The chunk counter of ``owner``'s run of the answer (``wire.deltas``): it exists only while
        that owner may append, so the name is the fence. The scripts build the same name in Lua
        (``wire.scripts``' ``fence_key``; a test holds them equal)."""
        return f"{self.fences}{response_id}:{owner}"


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The Redis names of one browser session (the multiplexed stream's credential)."""

    session_id: str

    @property
    def conversations(self) -> str:
        """Set of ``<conversation id>:<token generation>`` this session proved it may read."""
        return f"{PREFIX}:{{s:{self.session_id}}}:conversations"


def conversation_id_from_channel(channel: bytes) -> str:
    """Inverse of ``ConversationKeys.channel``: ``sf:{p17}:<id>:events``."""
    text = channel.decode("ascii")
    return text[text.index("}:") + 2 : text.rindex(":")]
