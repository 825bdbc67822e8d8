"""The multiplexed stream: one connection, many conversations, each from its own cursor."""

import json
from typing import Any

from loadtest.sse_parser import SSEParser
from tests.conftest import node_settings
from tests.test_api import post

BROWSER = {"Sec-Fetch-Site": "same-origin"}


async def browser_create(client: Any) -> tuple[str, dict[str, str]]:
    resp = await client.post("/api/conversations", headers=BROWSER)
    assert resp.status == 201 and "streamfan_session" in resp.cookies
    body = await resp.json()
    return body["id"], {"Authorization": f"Bearer {body['token']}"}


async def read_mux(resp: Any, until_done: set[str]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(conversation, event id, type, data) until every conversation in ``until_done`` sent ``done``."""
    parser, events, waiting = SSEParser(), [], set(until_done)
    while waiting:
        chunk = await resp.content.readany()
        assert chunk, "the stream ended early"
        for event in parser.feed(chunk):
            conversation, _, event_id = event.last_event_id.partition("/")
            data = {"text": event.data} if event.type == "delta" else json.loads(event.data)
            events.append((conversation, event_id, event.type, data))
            if event.type in ("done", "gone"):
                waiting.discard(conversation)
    return events


async def test_one_stream_carries_many_conversations_each_from_its_cursor(client_factory: Any) -> None:
    client = await client_factory()
    conversations = [await browser_create(client) for _ in range(3)]
    first_cid, first_auth = conversations[0]
    await post(client, first_cid, first_auth, "before the stream")
    history = await (await client.get(f"/api/conversations/{first_cid}", headers=first_auth)).json()
    while history["active_response_id"]:
        history = await (await client.get(f"/api/conversations/{first_cid}", headers=first_auth)).json()
    query = "&".join(f"c={cid}.{history['last_event_id'] if cid == first_cid else ''}" for cid, _ in conversations)
    resp = await client.get(f"/api/stream?{query}")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    for i, (cid, auth) in enumerate(conversations):
        await post(client, cid, auth, f"answer {i} please")
    events = await read_mux(resp, {cid for cid, _ in conversations})
    resp.close()
    for i, (cid, auth) in enumerate(conversations):
        mine = [e for e in events if e[0] == cid]
        text = "".join(e[3]["text"] for e in mine if e[2] == "delta")
        assert text == f"answer {i} please"  # the first conversation resumed after its cursor: nothing old
        stored = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
        assert stored["messages"][-1]["content"] == text
        ids = [e[1] for e in mine]
        assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-")))) and len(set(ids)) == len(ids)


async def test_a_conversation_the_session_never_joined_or_deleted_is_gone(client_factory: Any) -> None:
    client = await client_factory()
    mine, auth = await browser_create(client)
    other = await client_factory()  # another browser's conversation
    theirs = (await (await other.post("/api/conversations", headers=BROWSER)).json())["id"]
    resp = await client.get(f"/api/stream?c={mine}.&c={theirs}.")
    assert resp.status == 200
    parser = SSEParser()
    events = parser.feed(await resp.content.readany())
    while not events:
        events = parser.feed(await resp.content.readany())
    assert [(e.type, e.last_event_id) for e in events] == [("gone", f"{theirs}/")]
    resp.close()
    assert (await client.delete(f"/api/conversations/{mine}", headers=auth)).status == 204
    resp = await client.get(f"/api/stream?c={mine}.")
    events = parser.feed(await resp.content.readany())
    while not events:
        events = parser.feed(await resp.content.readany())
    assert events[-1].type == "gone"
    resp.close()


async def test_the_multiplexed_stream_refuses_bad_requests_as_json(client_factory: Any) -> None:
    client = await client_factory(settings=node_settings())
    resp = await client.get("/api/stream?c=abcdefghijklmnopqr.")
    assert resp.status == 401 and (await resp.json())["error"] == "no_session"
    cid, _ = await browser_create(client)
    for query in ("", f"c={cid}", f"c={cid}.x-1", "c=short.", "&".join(f"c={'a' * 16}{i:04d}." for i in range(65))):
        resp = await client.get(f"/api/stream?{query}")
        assert resp.status == 400 and resp.headers["Content-Type"].startswith("application/json"), query
