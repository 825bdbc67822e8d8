"""The OpenAI and AI SDK doors refuse bad input as cleanly as the native API (issue 22).

Every refusal is a 4xx in the door's own error shape, sent before any stream header: a lone
surrogate, a NUL, an over-long or non-text message, a parameter streamfan does not support. And what
a door accepts it honours: ``previous_response_id`` continues the stored conversation, a streamed
Chat answer whose client left is cancelled, a refused post is a status, not a broken stream.
"""

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from producer.generator import Pacing
from server.context import STORE
from server.store import Overloaded
from tests.conftest import API_KEY, fast_producer, node_settings

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
SURROGATE = '"a\\ud800b"'  # JSON text: a lone surrogate, which Python decodes and UTF-8 cannot encode


@pytest.fixture
async def client(client_factory: Any) -> Any:
    return await client_factory(node_settings(api_keys=(API_KEY,), max_message_chars=16_000))


def chat_body(content: str, **extra: Any) -> str:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "__C__"}], **extra}).replace(
        '"__C__"', content
    )


def responses_body(content: str, **extra: Any) -> str:
    return json.dumps({"model": "m", "input": "__C__", **extra}).replace('"__C__"', content)


def ai_sdk_body(content: str) -> str:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "__C__"}]}
    return json.dumps({"id": "chat-1", "messages": [message], "trigger": "submit-message"}).replace('"__C__"', content)


async def openai_refusal(client: Any, path: str, body: str, status: int = 400) -> dict[str, Any]:
    resp = await client.post(path, data=body, headers=AUTH)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("bad", [SURROGATE, '"a\\u0000b"', json.dumps("x" * 16_001), "[1, 2]", '[{"type": "text"}]'])
async def test_chat_completions_refuse_bad_text_with_a_400(client: Any, bad: str, stream: bool) -> None:
    error = await openai_refusal(client, "/v1/chat/completions", chat_body(bad, stream=stream))
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "bad",
    [
        SURROGATE,
        '"a\\u0000b"',
        json.dumps("x" * 60_000),
        '[{"role": "user", "content": [{"type": "input_text", "text": 7}]}]',
        '[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]',
    ],
)
async def test_responses_refuse_what_the_native_api_refuses(client: Any, bad: str, stream: bool) -> None:
    error = await openai_refusal(client, "/v1/responses", responses_body(bad, stream=stream))
    assert error["type"] == "invalid_request_error" and error["param"] == "input"


@pytest.mark.parametrize("bad", [SURROGATE, '"a\\u0000b"', "7", json.dumps("x" * 16_001)])
async def test_the_ai_sdk_chat_refuses_bad_text_with_a_400_before_any_stream(client: Any, bad: str) -> None:
    resp = await client.post("/api/chat", data=ai_sdk_body(bad), headers=AUTH)
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json" and (await resp.json())["field"] == "messages"


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"n": 2}, "n"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"stream": True, "n": 3}, "n"),
        ("/v1/responses", {"tools": [{"type": "web_search"}]}, "tools"),
    ],
)
async def test_unsupported_parameters_are_refused_not_ignored(
    client: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    body = chat_body('"hi"', **extra) if path.endswith("completions") else responses_body('"hi"', **extra)
    error = await openai_refusal(client, path, body)
    assert error["param"] == param and error["code"] == "unsupported_parameter"


async def test_previous_response_id_continues_the_stored_conversation(client: Any) -> None:
    first = await client.post("/v1/responses", data=responses_body('"my name is Ada"'), headers=AUTH)
    assert first.status == 200
    first_id = (await first.json())["id"]
    second = await client.post(
        "/v1/responses", data=responses_body('"what is my name?"', previous_response_id=first_id), headers=AUTH
    )
    assert second.status == 200, await second.text()
    second_id = (await second.json())["id"]
    stored = await client.app[STORE].snapshot(second_id.removeprefix("resp_"), 10)
    turns = [(m["role"], m["content"]) for m in stored["messages"]]
    assert turns[:3] == [("user", "my name is Ada"), ("assistant", "my name is Ada"), ("user", "what is my name?")]
    error = await openai_refusal(
        client, "/v1/responses", responses_body('"x"', previous_response_id="resp_nothing"), status=404
    )
    assert error["param"] == "previous_response_id"


async def test_a_refused_post_is_a_status_not_a_broken_stream(client: Any, monkeypatch: Any) -> None:
    async def overloaded(*_: Any, **__: Any) -> Overloaded:
        return Overloaded()

    monkeypatch.setattr(client.app[STORE], "post_message", overloaded)
    error = await openai_refusal(client, "/v1/chat/completions", chat_body('"hi"', stream=True), status=503)
    assert error["type"] == "server_error"
    resp = await client.post("/api/chat", data=ai_sdk_body('"hi"'), headers=AUTH)
    assert resp.status == 503 and resp.content_type == "application/json"


async def test_a_streamed_chat_whose_client_left_is_cancelled(client_factory: Any) -> None:
    slow = replace(fast_producer(), pacing=Pacing(ttft_seconds=0.01, tokens_per_second=40, jitter=0.0))
    client = await client_factory(node_settings(api_keys=(API_KEY,)), slow)
    words = json.dumps(" ".join(f"w{i}" for i in range(200)))
    resp = await client.post("/v1/chat/completions", data=chat_body(words, stream=True), headers=AUTH)
    assert resp.status == 200
    conversation_id = resp.headers["X-Streamfan-Conversation"]
    await resp.content.readuntil(b"\n\n")  # the first chunk
    resp.close()
    store = client.app[STORE]
    async with asyncio.timeout(5):
        while (await store.snapshot(conversation_id, 1))["active_response_id"] is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    answer = (await store.snapshot(conversation_id, 1))["messages"][-1]
    assert answer["finish_reason"] == "cancelled"


async def test_a_browser_chats_with_its_own_token_which_opens_no_other_chat(client_factory: Any) -> None:
    """The useChat recipe needs no server-wide key in browser code: the chat id is a conversation's
    id and its token the credential (the AI SDK door exists without STREAMFAN_API_KEYS too)."""
    client = await client_factory(node_settings())
    created = await (await client.post("/api/conversations")).json()
    own = {"Authorization": f"Bearer {created['token']}", "Content-Type": "application/json"}
    body = ai_sdk_body('"hello"').replace('"chat-1"', json.dumps(created["id"]))
    resp = await client.post("/api/chat", data=body, headers=own)
    assert resp.status == 200 and resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert '"delta":"hello"' in await resp.text()
    other = await (await client.post("/api/conversations")).json()
    for path in ("/api/chat", f"/api/chat/{other['id']}/stop"):
        data = ai_sdk_body('"x"').replace('"chat-1"', json.dumps(other["id"]))
        refused = await client.post(path, data=data, headers=own)
        assert refused.status == 401, path
    assert (await client.get(f"/api/chat/{other['id']}/stream", headers=own)).status == 401
    assert (await client.post("/api/chat", data=ai_sdk_body('"x"'), headers=AUTH)).status == 401  # no keys here


async def test_a_stream_that_cannot_follow_its_answer_ends_with_the_doors_error_event(
    client: Any, monkeypatch: Any
) -> None:
    from server.context import HUB
    from server.pubsub import PubSubUnavailable

    async def unavailable(*_: Any) -> None:
        raise PubSubUnavailable("pub/sub connection lost")

    monkeypatch.setattr(client.app[HUB], "attach", unavailable)
    chat = await client.post("/v1/chat/completions", data=chat_body('"hi"', stream=True), headers=AUTH)
    assert chat.status == 200 and '"error"' in await chat.text()
    conversation = chat.headers["X-Streamfan-Conversation"]
    assert (await client.app[STORE].snapshot(conversation, 1))["messages"][-1]["finish_reason"] == "cancelled"
    responses = await client.post("/v1/responses", data=responses_body('"hi"', stream=True), headers=AUTH)
    assert responses.status == 200 and "event: error" in await responses.text()
    ai_sdk = await client.post("/api/chat", data=ai_sdk_body('"hi"'), headers=AUTH)
    text = await ai_sdk.text()
    assert ai_sdk.status == 200 and '"type":"error"' in text and text.endswith("data: [DONE]\n\n")
