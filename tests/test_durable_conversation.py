"""A conversation read as a Durable Stream (issue 25): the official Python client follows an answer
token by token (SSE and long-poll) with the conversation's own token, and resumes by offset."""

from typing import Any

import httpx
from durable_streams import astream

from tests.conftest import node_settings
from tests.test_api import TRICKY, create, post
from wire.durable import offset_of


async def follow(url: str, token: str, live: str, offset: str = "-1") -> tuple[list[dict[str, Any]], list[str]]:
    """Messages until the answer's ``done``, and the offset after each batch."""
    messages: list[dict[str, Any]] = []
    offsets: list[str] = []
    auth: dict[str, Any] = {"Authorization": f"Bearer {token}"}
    async with astream(url, offset=offset, live=live, headers=auth) as response:  # type: ignore[arg-type]
        async for event in response.iter_events(mode="json_batches"):
            messages += event.data
            offsets.append(event.next_offset)
            if messages and messages[-1]["type"] == "done":
                break
    return messages, offsets


async def test_a_durable_streams_client_follows_an_answer_and_resumes_by_offset(client_factory: Any) -> None:
    client = await client_factory(node_settings())
    cid, auth = await create(client)
    token = auth["Authorization"].removeprefix("Bearer ")
    base = f"http://{client.server.host}:{client.server.port}"
    url = f"{base}/api/conversations/{cid}/stream"
    head = await client.head(f"/api/conversations/{cid}/stream", headers=auth)
    assert head.status == 200 and head.headers["Content-Type"] == "application/json"

    posted = await post(client, cid, auth, TRICKY)
    answer = TRICKY.replace("\r\n", "\n").replace("\r", "\n")
    for live in ("sse", "long-poll"):
        messages, _ = await follow(url, token, live)
        assert messages[0]["type"] == "user_message" and messages[0]["content"] == TRICKY
        deltas = [m["text"] for m in messages if m["type"] == "delta"]
        assert "".join(deltas) == answer and len(deltas) > 1  # token by token
        assert messages[-1] | {"id": ""} == {
            "id": "",
            "type": "done",
            "response_id": posted["response_id"],
            "finish_reason": "stop",
            "chunks": len(deltas),
        }
        ids = [m["id"] for m in messages]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)

    # Resume from any event's offset: what follows it, once.
    async with httpx.AsyncClient(headers=auth) as plain:
        everything = (await plain.get(url)).json()
        first = await plain.get(url, params={"offset": "-1"})
        assert first.headers["Stream-Up-To-Date"] == "true" and first.json() == everything
        middle = everything[len(everything) // 2]
        rest = await plain.get(url, params={"offset": offset_of(middle["id"])})
        assert rest.json() == everything[len(everything) // 2 + 1 :]

        assert (await plain.get(url, headers={"Authorization": ""})).status_code == 401  # no token
        _, other_auth = await create(client)
        assert (await plain.get(url, headers=other_auth)).status_code == 404  # another conversation's token
        gone = await plain.get(url, params={"offset": "0000000000000001_0000000000000000"})
        assert gone.status_code == 410  # not an event the history holds
