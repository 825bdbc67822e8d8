"""The compacted catch-up: one ``snapshot`` event instead of every event so far, then live."""

import asyncio
import json
from typing import Any

from producer.generator import Pacing
from tests.conftest import fast_producer
from tests.sse_client import read_events
from tests.test_api import create, post

LONG = " ".join(f"word{i}" for i in range(200))


async def test_a_refresh_mid_answer_gets_the_text_so_far_in_one_event_then_live(client_factory: Any) -> None:
    slow = fast_producer(pacing=Pacing(ttft_seconds=0.01, tokens_per_second=100, jitter=0.0))
    client = await client_factory(producer=slow)
    cid, auth = await create(client)
    first = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    posted = await post(client, cid, auth, LONG)
    await read_events(first, count=40)  # mid-answer
    first.close()
    resp = await client.get(f"/api/conversations/{cid}/events?catchup=snapshot", headers=auth)
    got = await read_events(resp, within=15)
    resp.close()
    assert got.events[0].type == "snapshot" and all(e.type != "user_message" for e in got.events)
    snapshot = json.loads(got.events[0].data)
    assert got.events[0].last_event_id == snapshot["last_event_id"]
    draft = snapshot["messages"][-1]["content"]
    assert snapshot["active_response_id"] == posted["response_id"] and LONG.startswith(draft)
    assert draft + got.text() == LONG  # nothing lost or doubled between the snapshot and live
    assert len(got.events) < 200 + 5
    bad = await client.get(f"/api/conversations/{cid}/events?catchup=all", headers=auth)
    assert bad.status == 400


async def orphan_outcome(client_factory: Any, policy: str) -> dict[str, Any]:
    from dataclasses import replace

    from tests.conftest import node_settings
    from wire.env import Retention

    retention = replace(Retention(), orphan_seconds=1.0)
    producer = fast_producer(
        retention=retention, orphans=policy, pacing=Pacing(ttft_seconds=0.01, tokens_per_second=60, jitter=0.0)
    )
    client = await client_factory(settings=node_settings(retention=retention), producer=producer)
    cid, auth = await create(client)
    stream = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    await post(client, cid, auth, " ".join(f"w{i}" for i in range(240)))  # 4 s of answer
    await read_events(stream, count=10)
    stream.close()  # the only tab closes
    for _ in range(100):
        body = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
        if body["active_response_id"] is None:
            return dict(body["messages"][-1])
        await asyncio.sleep(0.1)
    raise AssertionError("the answer never ended")


async def test_an_orphaned_answer_is_kept_by_default_and_cancelled_when_asked(client_factory: Any) -> None:
    kept = await orphan_outcome(client_factory, "keep")
    assert kept["finish_reason"] == "stop"  # closing a tab alone never cancels
    cancelled = await orphan_outcome(client_factory, "cancel")
    assert cancelled["finish_reason"] == "cancelled" and cancelled["error"] == "nobody was following this answer"


async def test_regenerate_makes_a_new_version_of_the_last_answer(client_factory: Any) -> None:
    client = await client_factory()
    cid, auth = await create(client)
    stream = await client.get(f"/api/conversations/{cid}/events", headers=auth)
    first = await post(client, cid, auth, "answer me twice")
    await read_events(stream)
    resp = await client.post(
        f"/api/conversations/{cid}/regenerate", json={"response_id": first["response_id"]}, headers=auth
    )
    assert resp.status == 202
    second = await resp.json()
    got = await read_events(stream)
    stream.close()
    [event] = got.of_type("regenerate")
    assert event == {
        "response_id": second["response_id"],
        "replaces": first["response_id"],
        "message_id": first["message_id"],
    }
    assert got.text(second["response_id"]) == "answer me twice"
    history = await (await client.get(f"/api/conversations/{cid}", headers=auth)).json()
    roles = [(m["role"], m.get("replaces")) for m in history["messages"]]
    assert roles == [("user", None), ("assistant", None), ("assistant", first["response_id"])]
    stale = await client.post(
        f"/api/conversations/{cid}/regenerate", json={"response_id": first["response_id"]}, headers=auth
    )
    assert stale.status == 409 and (await stale.json())["error"] == "not_last"
