"""The relay against a real redis-server, with nodes and a producer as separate processes.

Longer than 300 lines: the fault cases share one set of real processes (fixtures) and helpers.
"""

import asyncio
import io
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis

from launch.processes import RedisServer
from loadtest.http1 import ChunkedDecoder
from loadtest.sse_parser import SSEParser
from tests.conftest import Proc
from tests.sse_client import Received, assert_strictly_increasing, follow, raw_event_stream, read_events

TRICKY = '  leading spaces\nline two\r\nCRLF\rlone CR\n\n🚀 emoji — naïve café 日本語 </script> "q" \\'
LONG = " ".join(f"token{i}" for i in range(150))

pytestmark = pytest.mark.timeout(90)


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Proc]
    producer: Proc
    spawn: Callable[..., Proc]
    session: aiohttp.ClientSession
    streams: list[aiohttp.ClientResponse] = field(default_factory=list)

    def node_env(self, **extra: str) -> dict[str, str]:
        return {"REDIS_URL": self.redis.url, "STREAMFAN_HEARTBEAT_SECONDS": "1", **extra}

    async def create(self, node: int = 0) -> tuple[str, dict[str, str]]:
        async with self.session.post(f"{self.nodes[node].url}/api/conversations") as resp:
            assert resp.status == 201
            body = await resp.json()
        return body["id"], {"Authorization": f"Bearer {body['token']}"}

    async def post(self, cid: str, auth: dict[str, str], content: str, node: int = 0) -> dict[str, Any]:
        url = f"{self.nodes[node].url}/api/conversations/{cid}/messages"
        async with self.session.post(url, json={"content": content}, headers=auth) as resp:
            assert resp.status == 202, await resp.text()
            return dict(await resp.json())

    async def history(self, cid: str, auth: dict[str, str], node: int = 0) -> dict[str, Any]:
        async with self.session.get(f"{self.nodes[node].url}/api/conversations/{cid}", headers=auth) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def events(self, cid: str, auth: dict[str, str], node: int = 0, cursor: str | None = None) -> Any:
        headers = dict(auth) if cursor is None else {**auth, "Last-Event-ID": cursor}
        resp = await self.session.get(f"{self.nodes[node].url}/api/conversations/{cid}/events", headers=headers)
        self.streams.append(resp)
        assert resp.status == 200
        return resp


def producer_env(redis: RedisServer, tokens_per_second: int = 150) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "STREAMFAN_GENERATOR": "echo",
        "STREAMFAN_SIM_TTFT_MS": "20",
        "STREAMFAN_SIM_TOKENS_PER_SECOND": str(tokens_per_second),
        "STREAMFAN_SIM_JITTER": "0",
        "STREAMFAN_PUBLISH_RETRY_SECONDS": "30",
    }


@pytest.fixture
async def cluster(redis_process: RedisServer, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    env = {"REDIS_URL": redis_process.url, "STREAMFAN_HEARTBEAT_SECONDS": "1"}
    nodes = [spawn("server", env), spawn("server", env)]
    producer = spawn("producer", producer_env(redis_process))
    async with aiohttp.ClientSession() as session:
        cluster = Cluster(redis_process, nodes, producer, spawn, session)
        yield cluster
        for stream in cluster.streams:
            stream.close()


async def test_clients_on_two_nodes_receive_identical_complete_streams(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    on_a, on_b = await cluster.events(cid, auth, 0), await cluster.events(cid, auth, 1)
    posted = await cluster.post(cid, auth, TRICKY)
    got_a, got_b = await asyncio.gather(read_events(on_a), read_events(on_b))
    as_tuples = [(e.type, e.data, e.last_event_id) for e in got_a.events]
    assert as_tuples == [(e.type, e.data, e.last_event_id) for e in got_b.events]
    assert_strictly_increasing(got_a.ids)
    answer = TRICKY.replace("\r\n", "\n").replace("\r", "\n")  # line breaks as LF (wire.events.delta_text)
    assert got_a.text(posted["response_id"]) == answer
    for node in (0, 1):
        history = await cluster.history(cid, auth, node)
        assert history["messages"][-1]["content"] == answer
        assert history["messages"][-1]["status"] == "complete"
    on_a.close()
    on_b.close()


async def test_client_cut_off_mid_answer_resumes_on_the_other_node(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    on_a = await cluster.events(cid, auth, 0)
    await cluster.post(cid, auth, LONG)
    head = await read_events(on_a, count=20)
    on_a.close()
    await asyncio.sleep(0.2)
    on_b = await cluster.events(cid, auth, 1, cursor=head.ids[-1])
    tail = await read_events(on_b)
    on_b.close()
    assert_strictly_increasing(head.ids + tail.ids)
    stored = (await cluster.history(cid, auth, 1))["messages"][-1]["content"]
    assert head.text() + tail.text() == stored == LONG


async def test_node_killed_mid_answer_clients_resume_elsewhere(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    on_a = await cluster.events(cid, auth, 0)
    await cluster.post(cid, auth, LONG, node=1)
    head = await read_events(on_a, count=15)
    cluster.nodes[0].stop(signal.SIGKILL)
    rest = await read_events(on_a)  # the stream just ends
    assert rest.closed
    received = head.events + rest.events
    on_b = await cluster.events(cid, auth, 1, cursor=received[-1].last_event_id)
    tail = await read_events(on_b)
    on_b.close()
    ids = [e.last_event_id for e in received] + tail.ids
    assert_strictly_increasing(ids)
    text = "".join(e.data for e in received if e.type == "delta") + tail.text()
    assert text == LONG == (await cluster.history(cid, auth, 1))["messages"][-1]["content"]


async def test_cancel_on_one_node_ends_the_answer_everywhere(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    on_a, on_b = await cluster.events(cid, auth, 0), await cluster.events(cid, auth, 1)
    posted = await cluster.post(cid, auth, " ".join(["w"] * 2000))
    await read_events(on_a, until=lambda e: e.type == "delta")
    url = f"{cluster.nodes[1].url}/api/conversations/{cid}/cancel"
    async with cluster.session.post(url, json={"response_id": posted["response_id"]}, headers=auth) as resp:
        assert resp.status == 202
    got_a, got_b = await asyncio.gather(read_events(on_a), read_events(on_b))
    for got in (got_a, got_b):
        chunks = len(got_b.of_type("delta"))  # b followed the whole answer
        assert got.of_type("done") == [
            {"response_id": posted["response_id"], "finish_reason": "cancelled", "chunks": chunks}
        ]
    answer = (await cluster.history(cid, auth))["messages"][-1]
    assert answer["status"] == "cancelled"
    assert got_b.text() == answer["content"] and len(answer["content"]) < 4000
    on_a.close()
    on_b.close()


async def test_bad_input_gets_clean_4xx_from_a_real_node(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    url = f"{cluster.nodes[0].url}/api/conversations/{cid}/messages"
    async with cluster.session.post(url, data=b"{", headers=auth) as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "bad_json"
    async with cluster.session.post(url, data=b"x" * 200_000, headers=auth) as resp:
        assert resp.status == 413
    async with cluster.session.get(f"{cluster.nodes[1].url}/api/conversations/{cid}/events") as resp:
        assert resp.status == 401
    async with cluster.session.get(
        f"{cluster.nodes[1].url}/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": "x"}
    ) as resp:
        assert resp.status == 400
    assert (await cluster.history(cid, auth))["messages"] == []


def every_member(server: RedisServer) -> list["redis.Redis"]:
    """A client of every server of ``server``'s deployment: itself, or each member of its cluster."""
    first = redis.Redis(port=server.port, decode_responses=True)
    if not first.info("cluster")["cluster_enabled"]:
        return [first]
    nodes = str(first.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
    first.close()
    addresses = [line.split()[1].split("@")[0] for line in nodes.splitlines() if line.strip()]
    return [redis.Redis(port=int(address.rsplit(":", 1)[1])) for address in addresses]


async def test_command_connections_closed_by_redis_are_replaced_and_the_next_calls_succeed(
    cluster: Cluster,
) -> None:
    """Issue 23: Redis closes every command connection of the nodes and the producer (CLIENT KILL,
    as a restarted proxy or an idle timeout does); each next call gets a new connection: no 503, and
    an answer streams to its end."""
    cid, auth = await cluster.create()
    await cluster.post(cid, auth, "before")
    before = await read_events(await cluster.events(cid, auth))
    killed = 0
    for member in every_member(cluster.redis):
        killed += int(member.client_kill_filter(_type="normal", skipme=True))
        member.close()
    assert killed >= 3, killed  # two nodes and a producer had theirs
    for node in (0, 1):
        posted = await cluster.post(cid, auth, f"after, on node {node}", node=node)
        cursor = before.events[-1].last_event_id
        got = await read_events(await cluster.events(cid, auth, node, cursor=cursor))
        assert got.text(posted["response_id"]) == f"after, on node {node}"
        assert got.of_type("done")[-1]["finish_reason"] == "stop"
        before = got


async def test_slow_client_is_cut_off_without_slowing_others_then_resumes(
    redis_process: RedisServer, spawn: Callable[..., Proc]
) -> None:
    env = {
        "REDIS_URL": redis_process.url,
        "STREAMFAN_CLIENT_BUFFER_BYTES": "262144",  # the default: the capped kernel buffer makes it bite
        "STREAMFAN_MAX_MESSAGE_CHARS": "2000000",
        "STREAMFAN_MAX_BODY_BYTES": "4194304",
        "STREAMFAN_MAX_TOKENS_LIMIT": "100000",
    }
    node = spawn("server", env)
    spawn("producer", producer_env(redis_process, tokens_per_second=3000))
    # ~1.4 MB in ~700 deltas: more than loopback's socket buffers absorb, so the node's own bound bites.
    big = " ".join(f"{i:05d}" + "x" * 2000 for i in range(700))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.url}/api/conversations") as resp:
            body = await resp.json()
        cid, auth = body["id"], {"Authorization": f"Bearer {body['token']}"}

        # A client that reads nothing, with a tiny receive window.
        slow = raw_event_stream(node.port, cid, auth["Authorization"], receive_buffer=2048)
        fast = await session.get(f"{node.url}/api/conversations/{cid}/events", headers=auth)
        await asyncio.sleep(0.2)
        body_bytes = io.BytesIO(json.dumps({"content": big, "max_tokens": 100000}).encode())
        async with session.post(
            f"{node.url}/api/conversations/{cid}/messages",
            data=body_bytes,
            headers={**auth, "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 202
        got_fast = await read_events(fast, within=30)
        assert got_fast.text() == big

        # The slow client was cut off: draining its socket ends in EOF or a reset, not a hang.
        raw = await asyncio.to_thread(drain_socket, slow)
        parser = SSEParser()
        body_start = raw.index(b"\r\n\r\n") + 4
        partial = list(parser.feed(_dechunk(raw[body_start:])))
        partial_text = "".join(e.data for e in partial if e.type == "delta")
        assert len(partial_text) < len(big), "the slow client was never cut off"
        assert not any(e.type == "done" for e in partial)

        # It resumes from its last complete event and ends with exactly the answer.
        resumed = await session.get(
            f"{node.url}/api/conversations/{cid}/events", headers={**auth, "Last-Event-ID": parser.last_event_id}
        )
        rest = await read_events(resumed, within=30)
        resumed.close()
        fast.close()
        assert partial_text + rest.text() == big


def drain_socket(sock: socket.socket) -> bytes:
    """Read until the node closes the connection (bounded: a stream never cut off fails the test)."""
    sock.settimeout(5)
    deadline = time.monotonic() + 20
    chunks = []
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return b"".join(chunks)


def _dechunk(body: bytes) -> bytes:
    """The payload of the complete chunks (the stream was cut)."""
    return b"".join(ChunkedDecoder().feed(body))


async def test_pubsub_connection_killed_mid_answer_loses_nothing(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    on_a, on_b = await cluster.events(cid, auth, 0), await cluster.events(cid, auth, 1)
    await cluster.post(cid, auth, LONG)
    await read_events(on_a, count=10)
    killed = cluster.redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) >= 2  # one pub/sub connection per node
    got_a, got_b = await asyncio.gather(read_events(on_a), read_events(on_b))
    full_b = got_b
    assert full_b.text() == LONG
    assert_strictly_increasing(got_a.ids)
    stored = (await cluster.history(cid, auth))["messages"][-1]["content"]
    assert stored == LONG
    on_a.close()
    on_b.close()


async def test_redis_restart_mid_answer_loses_nothing(cluster: Cluster) -> None:
    cid, auth = await cluster.create()
    urls = [f"{node.url}/api/conversations/{cid}/events" for node in cluster.nodes]
    on_a = await cluster.events(cid, auth, 0)
    await cluster.post(cid, auth, LONG)
    first: Received = await read_events(on_a, count=10)
    on_a.close()
    follower_b = asyncio.create_task(follow(cluster.session, urls[1], auth))
    cluster.redis.stop()
    await asyncio.sleep(0.5)
    cluster.redis.start()
    rest_a, _ = await follow(cluster.session, urls[0], auth, cursor=first.ids[-1])
    got_b, _ = await follower_b
    assert first.text() + rest_a.text() == LONG
    assert got_b.text() == LONG
    assert_strictly_increasing(first.ids + rest_a.ids)
    assert_strictly_increasing(got_b.ids)
    assert (await cluster.history(cid, auth))["messages"][-1]["content"] == LONG


@pytest.mark.parametrize(("drain", "finish_reason"), [("0.3", "failed"), ("30", "stop")])
async def test_producer_sigterm_drains_then_fails_what_is_left(
    redis_process: RedisServer, spawn: Callable[..., Proc], drain: str, finish_reason: str
) -> None:
    node = spawn("server", {"REDIS_URL": redis_process.url})
    producer = spawn(
        "producer", {**producer_env(redis_process, tokens_per_second=100), "STREAMFAN_PRODUCER_DRAIN_SECONDS": drain}
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{node.url}/api/conversations") as resp:
            body = await resp.json()
        cid, auth = body["id"], {"Authorization": f"Bearer {body['token']}"}
        stream = await session.get(f"{node.url}/api/conversations/{cid}/events", headers=auth)
        async with session.post(
            f"{node.url}/api/conversations/{cid}/messages", json={"content": LONG}, headers=auth
        ) as resp:
            assert resp.status == 202
        await read_events(stream, count=10)
        producer.popen.send_signal(signal.SIGTERM)
        rest = await read_events(stream, within=10)  # not the 30 s claim timeout
        stream.close()
        assert rest.of_type("done")[0]["finish_reason"] == finish_reason
        assert await asyncio.to_thread(producer.popen.wait, 10) == 0
        async with session.get(f"{node.url}/api/conversations/{cid}", headers=auth) as resp:
            answer = (await resp.json())["messages"][-1]
        assert answer["finish_reason"] == finish_reason
        assert (answer["content"] == LONG) == (finish_reason == "stop")
