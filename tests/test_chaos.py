"""Chaos through the whole topology: every answer ends, nothing lost, doubled, reordered or 500.

240 conversations through nginx on 3 nodes and 2 producers (a quarter followed by two tabs) chat
back to back while a seeded loop kills and restarts nodes, producers, Redis and nginx, reloads
nginx and kills Redis connections. Bounded: 25 s of chaos, then the answers drain.
"""

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from launch.cluster import LocalCluster
from loadtest.sse_parser import SSEParser
from wire.events import parse_event_id

CONVERSATIONS = 240
TURNS = 2
CHAOS_SECONDS = 25.0
SEED = 20261130
JITTER = random.Random(SEED + 1)
"""The clients' retry delays: seeded too, so a run repeats its schedule and its timing draws."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # slow: a seeded fault schedule over minutes of traffic


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    env = {
        "STREAMFAN_GENERATOR": "echo",
        "STREAMFAN_SIM_TTFT_MS": "50",
        "STREAMFAN_SIM_TOKENS_PER_SECOND": "15",
        "STREAMFAN_SIM_JITTER": "0",
        "STREAMFAN_JOB_CLAIM_SECONDS": "2",
        "STREAMFAN_HEARTBEAT_SECONDS": "1",
        "STREAMFAN_SHUTDOWN_SECONDS": "1",
        "STREAMFAN_PRODUCER_DRAIN_SECONDS": "1",
    }
    cluster = LocalCluster(nodes=3, producers=2, env=env, workdir=tmp_path, redis_fsync="always")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Tab:
    """One EventSource-like follower: reconnects with Last-Event-ID, checks ids strictly increase."""

    last_id: str = ""
    current: str = ""
    texts: dict[str, list[str]] = field(default_factory=dict)
    done: dict[str, dict[str, str]] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, event_type: str, data: str, event_id: str) -> None:
        if event_id and self.last_id and parse_event_id(event_id) <= parse_event_id(self.last_id):
            self.anomalies.append(f"{event_type} {event_id} after {self.last_id}")
            return
        self.last_id = event_id or self.last_id
        if event_type == "delta":  # the text of the answer last started
            self.texts.setdefault(self.current, []).append(data)
            return
        body = json.loads(data)
        if event_type in ("user_message", "regenerate"):
            self.current = body["response_id"]
        elif event_type == "done":
            self.done[body["response_id"]] = body
        elif event_type == "reset":
            self.anomalies.append(f"reset {data}")
        self.changed.set()


@dataclass
class Outcome:
    statuses: dict[int, int] = field(default_factory=dict)
    tabs: list[Tab] = field(default_factory=list)


async def follow(session: aiohttp.ClientSession, url: str, auth: dict[str, str], tab: Tab, outcome: Outcome) -> None:
    while True:
        headers = {**auth, "Last-Event-ID": tab.last_id} if tab.last_id else auth
        try:
            async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=10)) as resp:
                outcome.statuses[resp.status] = outcome.statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    parser = SSEParser()
                    async for chunk in resp.content.iter_any():
                        for event in parser.feed(chunk):
                            tab.apply(event.type, event.data, event.last_event_id)
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(JITTER.uniform(0.1, 0.4))


async def request(
    session: aiohttp.ClientSession, method: str, url: str, outcome: Outcome, **kwargs: object
) -> dict[str, Any]:
    """Retry like a client would (same idempotency key) until the node answers 2xx."""
    while True:
        try:
            async with session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
                outcome.statuses[resp.status] = outcome.statuses.get(resp.status, 0) + 1
                if resp.status < 300:
                    return dict(await resp.json())
                assert resp.status != 409, await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(JITTER.uniform(0.2, 0.6))


async def conversation(
    session: aiohttp.ClientSession, base: str, index: int, outcome: Outcome, until: float
) -> tuple[str, dict[str, str], int]:
    created = await request(session, "POST", f"{base}/api/conversations", outcome)
    cid, auth = str(created["id"]), {"Authorization": f"Bearer {created['token']}"}
    tabs = [Tab() for _ in range(2 if index % 4 == 0 else 1)]
    outcome.tabs += tabs
    url = f"{base}/api/conversations/{cid}/events"
    followers = [asyncio.create_task(follow(session, url, auth, tab, outcome)) for tab in tabs]
    turn = 0
    try:
        while turn < TURNS or time.monotonic() < until:
            content = f"conversation {index} turn {turn}: " + " ".join(f"w{index}.{i}" for i in range(25))
            posted = await request(
                session,
                "POST",
                f"{base}/api/conversations/{cid}/messages",
                outcome,
                json={"content": content, "client_message_id": f"{index}-{turn}"},
                headers=auth,
            )
            rid = str(posted["response_id"])
            for tab in tabs:
                while rid not in tab.done:
                    tab.changed.clear()
                    await tab.changed.wait()
            turn += 1
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return cid, auth, turn


async def chaos(cluster: LocalCluster, until: float) -> list[str]:
    rng = random.Random(SEED)
    done: list[str] = []
    assert cluster.redis is not None
    redis = cluster.redis
    kinds = ["node", "producer", "redis", "nginx", "reload", "pubsub", "normal"]
    schedule = [kind for _ in range(10) for kind in rng.sample(kinds, len(kinds))]  # each kind in each round
    for action in schedule:
        await asyncio.sleep(rng.uniform(0.5, 1.2))
        if time.monotonic() >= until:
            break
        if action in ("node", "producer"):
            members = cluster.node_members if action == "node" else cluster.producer_members
            member = rng.choice(members)
            member.stop(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(cluster.restart, member)
        elif action == "redis":
            redis.stop(signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            await asyncio.to_thread(redis.start)
        elif action == "nginx":
            await asyncio.to_thread(cluster.restart_balancer, signal.SIGTERM)
        elif action == "reload":
            assert cluster.nginx is not None
            cluster.nginx.send_signal(signal.SIGHUP)
        else:
            await asyncio.to_thread(redis.cli, "CLIENT", "KILL", "TYPE", action)
        done.append(action)
    return done


async def test_chaos_every_answer_ends_and_nothing_is_lost(cluster: LocalCluster) -> None:
    outcome = Outcome()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        until = time.monotonic() + CHAOS_SECONDS
        chaos_task = asyncio.create_task(chaos(cluster, until))
        conversations = await asyncio.wait_for(
            asyncio.gather(*(conversation(session, cluster.url, i, outcome, until) for i in range(CONVERSATIONS))), 200
        )
        actions = await chaos_task
        histories = []
        for cid, auth, turns in conversations:
            url = f"{cluster.url}/api/conversations/{cid}"
            histories.append((await request(session, "GET", url, outcome, headers=auth), turns))

    assert len(set(actions)) == 7, actions
    assert outcome.statuses.get(500, 0) == 0, outcome.statuses
    stored: dict[str, dict[str, Any]] = {}
    for history, turns in histories:
        assert history["active_response_id"] is None  # nothing stuck busy
        answers = [m for m in history["messages"] if m["role"] == "assistant"]
        assert len(answers) == turns
        for answer in answers:
            assert answer["finish_reason"] in ("stop", "failed"), answer
            if answer["finish_reason"] == "failed":
                assert answer.get("error"), answer
            stored[answer["id"]] = answer
    for tab in outcome.tabs:
        assert tab.anomalies == []
        for rid, done in tab.done.items():
            assert "".join(tab.texts.get(rid, [])) == stored[rid]["content"]
            assert done["finish_reason"] == stored[rid]["finish_reason"]
    finished = [a for a in stored.values() if a["finish_reason"] == "stop"]
    print(f"chaos: {actions}; {len(stored)} answers, {len(finished)} stop; statuses {outcome.statuses}")
    assert len(finished) >= 0.9 * len(stored)
