"""The OpenAI Responses dialect, resumable: ``/v1/responses`` (stream, background, resume, cancel).

Each response is one streamfan conversation (``resp_<conversation id>``). Its events carry
``sequence_number``s derived from the stored stream, so every node numbers them alike and
``GET /v1/responses/{id}?stream=true&starting_after=N`` replays from any node, from any number: the
history is read from the start (cheap: one answer) and events up to N are skipped. The sequence:
``response.created`` (0), ``response.in_progress`` (1), ``response.output_item.added`` (2),
``response.content_part.added`` (3), one ``response.output_text.delta`` per chunk (4 + its index),
then ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
and ``response.completed`` (or ``response.incomplete`` at the token limit, ``response.failed``).
Keys: ``STREAMFAN_API_KEYS``, as for Chat Completions.
"""

import asyncio
from typing import Any

from aiohttp import web

from server import inputs
from server.context import HUB, SETTINGS, STORE
from server.dialects.openai import OpenAIError, busy, cancel_unfinished, check_key
from server.dialects.responses_events import ID_PREFIX, STATUS, TERMINAL, ResponsesFollower, event, response_object
from server.settings import Settings
from server.store import MESSAGES_PAGE, Busy, ConversationStore, Overloaded, new_id
from server.streaming import attach_or_end, catch_up, event_stream_response, follow_live

_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "conversation": (),
    "text": ({"format": {"type": "text"}},),
    "include": ([],),
    "reasoning": (),
}
"""Parameters that would change the answer and that streamfan does not implement: refused, not ignored."""


def _input(body: dict[str, Any], settings: Settings) -> list[dict[str, str]]:
    """The request's messages: ``instructions`` as a system message, then ``input`` (a string, or
    items with a role and text content); checked as the native API checks a message."""
    limit = settings.max_message_chars
    messages: list[dict[str, str]] = []
    if body.get("instructions") is not None:
        messages.append({"role": "system", "content": inputs.text(body["instructions"], "instructions", limit)})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": inputs.text(raw, "input", limit)})
    elif isinstance(raw, list) and raw:
        for i, item in enumerate(raw):
            role = item.get("role") if isinstance(item, dict) else None
            if role not in ("system", "developer", "user", "assistant"):
                raise inputs.bad_field("input", "each input item needs a role: system, developer, user or assistant")
            content = inputs.content_text(item.get("content"), "input", limit, required=i == len(raw) - 1)
            messages.append({"role": "system" if role == "developer" else str(role), "content": content})
    else:
        raise inputs.bad_field("input", "'input' must be a string or a non-empty array of messages")
    if messages[-1]["role"] != "user":
        raise inputs.bad_field("input", "'input' must end with the user's message")
    return messages


async def _earlier_turns(store: ConversationStore, body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation ``previous_response_id`` names, to continue it: its stored messages (the
    previous response's ``instructions`` are not carried over, as OpenAI does)."""
    previous = body.get("previous_response_id")
    if previous is None:
        return []
    if not isinstance(previous, str) or not previous.startswith(ID_PREFIX) or len(previous) > 100:
        raise OpenAIError(400, "'previous_response_id' must be a response id.", param="previous_response_id")
    snapshot = await store.snapshot(previous.removeprefix(ID_PREFIX), MESSAGES_PAGE)
    if not snapshot["messages"]:
        raise OpenAIError(404, f"Previous response with id '{previous}' not found.", param="previous_response_id")
    if snapshot["active_response_id"] is not None:
        raise OpenAIError(
            400, f"Previous response with id '{previous}' is still in progress.", param="previous_response_id"
        )
    return [
        {"role": m["role"], "content": m["content"]}
        for m in snapshot["messages"]
        if m["role"] in ("user", "assistant") and isinstance(m.get("content"), str)
    ]


def _conversation(response_id: str) -> str:
    if not response_id.startswith(ID_PREFIX):
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.")
    return response_id.removeprefix(ID_PREFIX)


async def create(request: web.Request) -> web.StreamResponse:
    check_key(request)
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await inputs.json_body(request, required=True)
    inputs.refuse_unsupported(body, _UNSUPPORTED)
    messages = _input(body, settings)
    limit = inputs.whole_number(
        body.get("max_output_tokens", settings.default_max_tokens), "max_output_tokens", 1, settings.max_tokens_limit
    )
    model = body.get("model") if isinstance(body.get("model"), str) else settings.model_name
    streaming, background = bool(body.get("stream")), bool(body.get("background"))
    earlier = await _earlier_turns(store, body)
    conversation_id = new_id()
    response_id = ID_PREFIX + conversation_id
    await store.seed(conversation_id, earlier + messages[:-1])
    result = await store.post_message(conversation_id, messages[-1]["content"], limit, "node:" + new_id())
    if isinstance(result, Busy | Overloaded):
        raise busy()
    if streaming:
        return await _stream(request, response_id, str(model), -1, cancel_on_leave=not background)
    if background:
        return web.json_response(response_object(response_id, str(model), "in_progress", "", None))
    await store.wait_idle(conversation_id)
    return web.json_response(await _object(request, response_id, str(model)))


async def retrieve(request: web.Request) -> web.StreamResponse:
    check_key(request)
    response_id = request.match_info["response_id"]
    model = request.app[SETTINGS].model_name
    if request.query.get("stream") == "true":
        raw = request.query.get("starting_after", "-1")
        if not raw.lstrip("-").isdigit() or len(raw) > 12:
            raise OpenAIError(400, "starting_after must be a sequence number.", param="starting_after")
        return await _stream(request, response_id, model, int(raw))
    return web.json_response(await _object(request, response_id, model))


async def cancel(request: web.Request) -> web.StreamResponse:
    """Idempotent: a finished response is returned as it is."""
    check_key(request)
    response_id = request.match_info["response_id"]
    conversation_id = _conversation(response_id)
    store = request.app[STORE]
    active = await store.active_response(conversation_id)
    if active is not None:
        await store.cancel(conversation_id, active)
        await store.wait_idle(conversation_id)
    return web.json_response(await _object(request, response_id, request.app[SETTINGS].model_name))


async def _object(request: web.Request, response_id: str, model: str) -> dict[str, Any]:
    snapshot = await request.app[STORE].snapshot(_conversation(response_id), 1)
    if not snapshot["messages"]:
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.")
    last = snapshot["messages"][-1]
    if snapshot["active_response_id"] is not None:
        return response_object(response_id, model, "in_progress", last.get("content", ""), None)
    status = STATUS.get(last.get("finish_reason", "stop"), "completed")
    body = response_object(response_id, model, status, last.get("content", ""), last.get("usage"))
    if status == "failed":
        body["error"] = {"code": "server_error", "message": last.get("error") or "the answer failed"}
    return body


async def _stream(
    request: web.Request, response_id: str, model: str, after: int, *, cancel_on_leave: bool = False
) -> web.StreamResponse:
    """The response's events after sequence number ``after``. ``cancel_on_leave``: the stream that
    created a response without ``background`` cancels it when its client leaves, as OpenAI does."""
    settings, hub, store = request.app[SETTINGS], request.app[HUB], request.app[STORE]
    conversation_id = _conversation(response_id)
    snapshot = await store.snapshot(conversation_id, 2)
    answer = snapshot["active_response_id"] or next(
        (m["id"] for m in reversed(snapshot["messages"]) if m["role"] == "assistant"), None
    )
    if answer is None:
        raise OpenAIError(404, f"No response found with id '{response_id[:80]}'.")
    response, stream = await event_stream_response(request)
    if stream is None:
        return response
    follower = ResponsesFollower(
        stream,
        max_pending=settings.catchup_buffer_events,
        response_id=response_id,
        answer=answer,
        model=model,
        after=after,
    )

    def error(why: str) -> bytes:
        message = f"{why}; retry with starting_after"
        return event(
            "error", {"code": "unavailable", "message": message, "param": None, "sequence_number": max(after, -1) + 1}
        )

    feed = await attach_or_end(hub, conversation_id, follower, error)  # before the history: nothing missed
    if feed is None:
        return response
    try:
        await catch_up(follower, store, conversation_id, settings.replay_page_events)
        if await follow_live(response, follower, follower.done):
            end = follower.done.result()
            final = await _object(request, response_id, model)
            kind = {"failed": "response.failed", "incomplete": "response.incomplete"}.get(
                end["status"], "response.completed"
            )
            closing = follower.numbered(end["base"] + TERMINAL, kind, {"response": final})
            if closing:
                stream.put(stream.framed(closing))
        elif cancel_on_leave:
            await cancel_unfinished(store, conversation_id, answer, follower.done)
    except asyncio.CancelledError:
        if cancel_on_leave:
            await cancel_unfinished(store, conversation_id, answer, follower.done)
        raise
    finally:
        hub.detach(feed, follower)
    return response
