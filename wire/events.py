"""Event types, their JSON fields, event ids, generation jobs and stored messages.

Event ids are the Redis Stream entry ids of the conversation's history (``<ms>-<seq>``): Redis
assigns them, so they are strictly increasing per conversation and the same on every node.
"""

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypedDict


class EventType(StrEnum):
    USER_MESSAGE = "user_message"
    DELTA = "delta"
    DONE = "done"
    REGENERATE = "regenerate"
    """A new version of the last answer starts: ``response_id``, the one it ``replaces``, and the
    user ``message_id`` it answers."""
    RESET = "reset"
    """Sent by a node, never stored: the client's cursor cannot be honoured; reload the snapshot."""
    SNAPSHOT = "snapshot"
    """Sent by a node, never stored, with ``?catchup=snapshot``: the history API's body up to its
    id, in place of every event before it."""
    GONE = "gone"
    """Sent by a node on the multiplexed stream, never stored: this conversation is not (any more)
    readable by this browser (deleted, revoked, or never joined); stop following it."""


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    FAILED = "failed"


class ResetReason(StrEnum):
    UNKNOWN_CURSOR = "unknown_cursor"
    """The cursor is not in the history: trimmed by retention, or from history Redis lost."""
    TRIMMED = "trimmed"
    """No cursor, and the start of the conversation's history is no longer retained."""


class Phase(StrEnum):
    """Where the active answer of a conversation is."""

    QUEUED = "queued"
    GENERATING = "generating"


START_ID: Final = "0-0"
"""The cursor before the first event: replay from the start."""

EventId = tuple[int, int]

_ID_PART_MAX: Final = 2**64 - 1
"""Redis stream ids are two unsigned 64-bit numbers; anything larger is not an id of any stream."""


def parse_event_id(text: str) -> EventId:
    """Parse ``<ms>-<seq>`` into a tuple that orders like Redis orders stream ids.

    The one parser of event ids (the node's cursors, the fan-out, the load tester, the tests). It
    runs once per event on the load tester's hot path, hence partition rather than a regex.
    """
    ms, dash, seq = text.partition("-")
    if (
        dash
        and 0 < len(ms) <= 20
        and 0 < len(seq) <= 20
        and ms.isascii()
        and seq.isascii()
        and ms.isdigit()
        and seq.isdigit()
    ):
        event_id = int(ms), int(seq)
        if event_id[0] <= _ID_PART_MAX and event_id[1] <= _ID_PART_MAX:
            return event_id
    raise ValueError(f"not an event id: {text[:40]!r}")


def format_event_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


_json_string = json.encoder.encode_basestring
"""A JSON string literal without ASCII escaping (C-accelerated); control characters are escaped."""


def dumps(obj: object) -> str:
    """Compact one-line JSON. CR, LF and NUL are always escaped, so the result is one SSE data line."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def user_message_data(message_id: str, content: str, response_id: str) -> str:
    return dumps({"message_id": message_id, "content": content, "response_id": response_id})


def valid_unicode(text: str) -> str:
    """``text`` as valid Unicode. A model server that cuts its text between UTF-16 code units (JSON
    can spell half an emoji as ``"\\ud83d"``) gives a string no encoder takes, and Redis is sent
    UTF-8. A lone half becomes U+FFFD, as a browser shows it; two halves that meet are the character."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def delta_text(text: str) -> str:
    """The text as every view of the answer holds it: line breaks as LF.

    SSE parsers end a line at CR, LF or CRLF alike and join data lines with LF, so a CR cannot
    cross the live stream; the producer stores what the stream carries, so the history API, the
    dialects and every tab read the same text (CommonMark treats the three line endings alike).
    And valid Unicode (``valid_unicode``).
    """
    text = valid_unicode(text)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def done_data(response_id: str, finish_reason: FinishReason, error: str = "") -> str:
    """``error`` says why an answer ``failed``, in words a reader can be shown (never a traceback)."""
    data = {"response_id": response_id, "finish_reason": str(finish_reason)}
    if error:
        data["error"] = error
    return dumps(data)


def reset_data(reason: ResetReason) -> str:
    return dumps({"reason": str(reason)})


class AnswerTracker:
    """Which answer each event of a conversation's stream belongs to: every reader keeps this one state.

    A delta does not name its answer: it belongs to the one the latest ``user_message`` or
    ``regenerate`` started (both name it) until that answer's ``done`` (the DELTA script refuses a
    delta of any other answer). A reader that starts inside an answer (a resume, or after the post
    it made itself) starts with ``current`` set to it.
    """

    __slots__ = ("current",)

    def __init__(self, current: str = "") -> None:
        self.current = current
        """The answer deltas belong to now ("" between answers)."""

    def answer_of(self, event_type: str, data: str | bytes) -> str:
        """The answer the event belongs to ("" for none), the state moved past it."""
        if event_type == EventType.DELTA:
            return self.current
        if event_type in (EventType.USER_MESSAGE, EventType.REGENERATE):
            self.current = str(json.loads(data)["response_id"])
            return self.current
        if event_type == EventType.DONE:
            self.current = ""
            return str(json.loads(data)["response_id"])
        return ""


class Message(TypedDict, total=False):
    """A message of the history API. Assistant messages also carry ``finish_reason`` once done."""

    id: str
    role: str
    content: str
    status: str
    finish_reason: str
    error: str


def user_message_record(message_id: str, content: str) -> str:
    """The stored JSON of a user message."""
    return dumps({"id": message_id, "role": "user", "content": content, "status": "complete"})


def assistant_status(reason: FinishReason) -> str:
    return "complete" if reason in (FinishReason.STOP, FinishReason.LENGTH) else str(reason)


@dataclass(frozen=True, slots=True)
class Job:
    """A generation job on the jobs stream."""

    conversation_id: str
    response_id: str
    message_id: str
    prompt: str
    max_tokens: int

    def to_fields(self) -> dict[str, str]:
        return {
            "conversation_id": self.conversation_id,
            "response_id": self.response_id,
            "message_id": self.message_id,
            "prompt": self.prompt,
            "max_tokens": str(self.max_tokens),
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> "Job":
        def get(name: str) -> str:
            value = fields.get(name, fields.get(name.encode()))
            if value is None:
                raise ValueError(f"job without {name}")
            return value.decode() if isinstance(value, bytes) else str(value)

        return cls(
            conversation_id=get("conversation_id"),
            response_id=get("response_id"),
            message_id=get("message_id"),
            prompt=get("prompt"),
            max_tokens=int(get("max_tokens")),
        )
