"""The Responses stream's events: one streamfan answer as numbered ``response.*`` events.

Numbers derive from the stored stream (the opening four, one per delta, the closing three, the
terminal event), so every node numbers a response's events alike and any node can resume after any
number.
"""

import asyncio
import json
import time
from typing import Any

from server.follower import AnswerEvents, TranslatingFollower
from wire.events import EventType

ID_PREFIX = "resp_"
_OPENING = ("response.created", "response.in_progress", "response.output_item.added", "response.content_part.added")
"""A response's first events, numbered 0 to 3 on every node; its deltas follow from ``_FIRST_DELTA``."""
_FIRST_DELTA = len(_OPENING)
_CLOSING = ("response.output_text.done", "response.content_part.done", "response.output_item.done")
"""After the last delta: these, then the terminal event (``response.completed`` or its kin)."""
TERMINAL = len(_CLOSING)
"""The terminal event's place after the closing events' base."""
STATUS = {"stop": "completed", "length": "incomplete", "cancelled": "cancelled", "failed": "failed"}


def response_object(
    response_id: str, model: str, status: str, text: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    item = {
        "id": f"msg_{response_id.removeprefix(ID_PREFIX)}",
        "type": "message",
        "status": "completed" if status == "completed" else "in_progress",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
        if text or status != "in_progress"
        else [],
    }
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [item] if item["content"] or status != "in_progress" else [],
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "error": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
    }


def event(kind: str, body: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **body}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class ResponsesFollower(TranslatingFollower):
    """Writes one answer as Responses events, numbered from the stored stream."""

    __slots__ = ("after", "answer", "done", "model", "response_id", "text")

    def __init__(self, stream: Any, *, max_pending: int, response_id: str, answer: str, model: str, after: int) -> None:
        super().__init__(stream, max_pending=max_pending)
        self.response_id = response_id
        self.answer = AnswerEvents(answer, inside=False)
        """The streamfan answer this follows (its conversation's only one), read from the start."""
        self.model = model
        self.after = after
        """Events numbered up to this are not written (the client has them)."""
        self.text: list[str] = []
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def numbered(self, sequence: int, kind: str, body: dict[str, Any]) -> bytes:
        return b"" if sequence <= self.after else event(kind, {"sequence_number": sequence, **body})

    def translate(self, frame: bytes) -> bytes:
        event = self.answer.take(frame)
        if event is None:
            return b""
        event_type, data = event.type, event.body
        item_id = f"msg_{self.response_id.removeprefix(ID_PREFIX)}"
        where: dict[str, Any] = {"item_id": item_id, "output_index": 0, "content_index": 0}
        if event_type not in (EventType.DELTA, EventType.DONE):  # its user_message (or a regenerate)
            started = response_object(self.response_id, self.model, "in_progress", "", None)
            item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            empty = {"type": "output_text", "text": "", "annotations": []}
            bodies: tuple[dict[str, Any], ...] = (
                {"response": started},
                {"response": started},
                {"output_index": 0, "item": item},
                {**where, "part": empty},
            )
            return b"".join(
                self.numbered(n, kind, body) for n, (kind, body) in enumerate(zip(_OPENING, bodies, strict=True))
            )
        if event_type == EventType.DELTA:
            self.text.append(event.text)
            number = _FIRST_DELTA + len(self.text) - 1
            return self.numbered(number, "response.output_text.delta", {**where, "delta": event.text, "logprobs": []})
        text = "".join(self.text)
        base = _FIRST_DELTA + len(self.text)
        status = STATUS.get(data["finish_reason"], "completed")
        if not self.done.done():
            self.done.set_result({"status": status, "base": base, "error": data.get("error")})
        part = {"type": "output_text", "text": text, "annotations": []}
        finished = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        closing: tuple[dict[str, Any], ...] = (
            {**where, "text": text, "logprobs": []},
            {**where, "part": part},
            {"output_index": 0, "item": finished},
        )
        return b"".join(
            self.numbered(base + n, kind, body) for n, (kind, body) in enumerate(zip(_CLOSING, closing, strict=True))
        )
