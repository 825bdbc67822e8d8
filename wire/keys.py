"""Redis key and channel names.

Every key of one conversation carries the conversation id as a hash tag (``{id}``), so the keys a
Lua script touches for one conversation hash to one Redis Cluster slot.
"""

from dataclasses import dataclass

PREFIX = "sf"
JOBS_STREAM = f"{PREFIX}:jobs"
"""Redis Stream of generation jobs, consumed by the producers' consumer group."""
JOBS_GROUP = "producers"


@dataclass(frozen=True, slots=True)
class ConversationKeys:
    """The Redis names of one conversation's state."""

    conversation_id: str

    @property
    def _base(self) -> str:
        return f"{PREFIX}:{{{self.conversation_id}}}"

    @property
    def events(self) -> str:
        """Capped, expiring Redis Stream holding every event: the replayable history."""
        return f"{self._base}:events"

    @property
    def channel(self) -> str:
        """Pub/sub channel carrying each event's SSE frame, live."""
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
    """Inverse of ``ConversationKeys.channel``."""
    text = channel.decode("ascii")
    start, end = text.index("{") + 1, text.rindex("}")
    return text[start:end]
