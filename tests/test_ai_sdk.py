"""The Vercel AI SDK dialect (UI message stream v1): exact parts, resume from any node, stop."""

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from loadtest.sse_parser import SSEParser
from tests.conftest import API_KEY, Proc
from tests.test_openai_clients import run_js_clients

pytestmark = pytest.mark.timeout(90)

KEY = API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = " ".join(f"part{i}" for i in range(120))


@pytest.fixture
def nodes(keyed_nodes: list[Proc]) -> list[Proc]:
    return keyed_nodes


def chat_body(chat_id: str, text: str) -> dict[str, Any]:
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", "messageId": None}


async def parts(resp: aiohttp.ClientResponse, *, stop_after: int | None = None) -> list[dict[str, Any] | str]:
    parser, out = SSEParser(), list[dict[str, Any] | str]()
    async with asyncio.timeout(30):
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                return out
            for event in parser.feed(chunk):
                out.append(event.data if event.data == "[DONE]" else json.loads(event.data))
                if out[-1] == "[DONE]" or (stop_after is not None and len(out) >= stop_after):
                    return out


def text_of(received: list[Any]) -> str:
    return "".join(p["delta"] for p in received if isinstance(p, dict) and p["type"] == "text-delta")


async def test_a_chat_streams_ui_message_parts_exactly(nodes: list[Proc]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{nodes[0].url}/api/chat", json=chat_body("chat-1", "hello from useChat"), headers=AUTH
        ) as resp:
            assert resp.status == 200
            assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1" and resp.headers["x-accel-buffering"] == "no"
            received = await parts(resp)
    kinds = [p if isinstance(p, str) else p["type"] for p in received]
    assert kinds[:2] == ["start", "text-start"] and kinds[-3:] == ["text-end", "finish", "[DONE]"]
    assert set(kinds[2:-3]) == {"text-delta"} and text_of(received) == "hello from useChat"
    allowed = {"start": {"type", "messageId"}, "text-start": {"type", "id"}, "text-delta": {"type", "id", "delta"}}
    allowed |= {"text-end": {"type", "id"}, "finish": {"type"}}
    for p in received:
        if isinstance(p, dict):
            assert set(p) == allowed[p["type"]], p  # no extra fields: ai 5.x to 7 reject them


async def test_resume_on_another_node_sends_the_text_so_far_once_then_live(nodes: list[Proc]) -> None:
    async with aiohttp.ClientSession() as session:
        first = await session.post(f"{nodes[0].url}/api/chat", json=chat_body("chat-2", LONG), headers=AUTH)
        head = await parts(first, stop_after=12)
        first.close()  # the tab reloads mid-answer
        async with session.get(f"{nodes[1].url}/api/chat/chat-2/stream", headers=AUTH) as resp:
            assert resp.status == 200
            resumed = await parts(resp)
        assert [p["type"] for p in resumed[:3]] == ["start", "text-start", "text-delta"]  # type: ignore[index]
        so_far = resumed[2]["delta"]  # type: ignore[index]
        assert so_far.startswith(text_of(head)) and text_of(resumed) == LONG
        async with session.get(f"{nodes[1].url}/api/chat/chat-2/stream", headers=AUTH) as resp:
            assert resp.status == 204  # nothing is being generated any more


async def test_stop_ends_the_answer_and_a_wrong_key_is_refused(nodes: list[Proc]) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{nodes[0].url}/api/chat", json=chat_body("chat-3", LONG), headers=AUTH)
        await parts(resp, stop_after=5)
        async with session.post(f"{nodes[1].url}/api/chat/chat-3/stop", headers=AUTH) as stopped:
            assert stopped.status == 204
        rest = await parts(resp)
        resp.close()
        assert rest[-2:] == [{"type": "finish"}, "[DONE]"] and len(text_of(rest)) < len(LONG)
        async with session.post(f"{nodes[0].url}/api/chat/chat-3/stop", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401


def test_the_js_clients_people_use_read_the_same_answer(nodes: list[Proc]) -> None:
    """The official ``openai`` JS package and the ``ai`` package's chat transport, from Node."""
    text = "hello from Node — naïve 🚀"
    assert run_js_clients(nodes[0], "chat-js", text) == {
        "openai": text,
        "chat": text,
        "resumedWhenIdle": True,
        "browserChat": text,
        "otherChatRefused": True,
    }
