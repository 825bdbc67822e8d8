"""The relay on a real Redis Cluster: 3 primaries and 3 replicas on loopback, started by the tests.

The multi-node tests of ``test_real_redis`` run again here, unchanged, on the cluster (pytest
collects the imported test functions with this module's ``cluster`` fixture); then what only a
cluster does: one slot per conversation, one SSUBSCRIBE per partition on reconnect, a primary killed
mid-answer, a slot migrated mid-answer.
"""

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from launch.processes import RedisClusterServers, RedisServer
from launch.redis_client import connect
from redisio.calls import script_calls_for
from redisio.pipe import Script
from tests.conftest import Proc
from tests.sse_client import Received, assert_strictly_increasing, read_events
from tests.test_real_redis import (
    LONG,
    Cluster,
    producer_env,
    test_bad_input_gets_clean_4xx_from_a_real_node,
    test_cancel_on_one_node_ends_the_answer_everywhere,
    test_client_cut_off_mid_answer_resumes_on_the_other_node,
    test_clients_on_two_nodes_receive_identical_complete_streams,
    test_command_connections_closed_by_redis_are_replaced_and_the_next_calls_succeed,
    test_node_killed_mid_answer_clients_resume_elsewhere,
)
from wire.keys import PARTITIONS, ConversationKeys, partition_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # slow: a real Redis Cluster

REUSED = (
    test_clients_on_two_nodes_receive_identical_complete_streams,
    test_client_cut_off_mid_answer_resumes_on_the_other_node,
    test_node_killed_mid_answer_clients_resume_elsewhere,
    test_cancel_on_one_node_ends_the_answer_everywhere,
    test_bad_input_gets_clean_4xx_from_a_real_node,
    test_command_connections_closed_by_redis_are_replaced_and_the_next_calls_succeed,
)
"""Collected here too: the same assertions, on a cluster."""


def _servers() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(primaries=3, replicas=1)
    servers.start()
    try:
        yield servers
    finally:
        servers.remove()


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[RedisClusterServers]:
    yield from _servers()


@pytest.fixture
def fresh_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of its own, for the tests that kill or reshape it."""
    yield from _servers()


async def _relay(servers: RedisClusterServers, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    # STREAMFAN_REDIS_CLUSTER is left to 'auto': the processes find out from the server.
    env = {"REDIS_URL": servers.url, "STREAMFAN_HEARTBEAT_SECONDS": "1"}
    nodes = [spawn("server", env), spawn("server", env)]
    producer = spawn("producer", producer_env(servers.members[0]))
    async with aiohttp.ClientSession() as session:
        relay = Cluster(servers.members[0], nodes, producer, spawn, session)
        yield relay
        for stream in relay.streams:
            stream.close()


@pytest.fixture
async def cluster(shared_cluster: RedisClusterServers, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    async for relay in _relay(shared_cluster, spawn):
        yield relay


@pytest.fixture
async def faulty(fresh_cluster: RedisClusterServers, spawn: Callable[..., Proc]) -> AsyncIterator[Cluster]:
    async for relay in _relay(fresh_cluster, spawn):
        yield relay


def client(server: RedisServer) -> "redis.Redis":
    return redis.Redis(port=server.port, decode_responses=True)


def primary_of(servers: RedisClusterServers, key: str) -> RedisServer:
    slot = key_slot(key.encode())
    for start, end, primary, *_ in client(servers.members[0]).execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
        if start <= slot <= end:
            return servers.member(int(primary[1]))
    raise AssertionError(f"no primary serves slot {slot}")


async def follow_to_the_end(relay: Cluster, cid: str, auth: dict[str, str], first: Any, node: int) -> list[Received]:
    """Read ``first`` to its end, resuming with Last-Event-ID on the given node whenever a stream
    is cut off, until ``done``; every piece read, in order."""
    pieces = [await read_events(first, within=30, until=lambda e: e.type == "done")]
    while not pieces[-1].of_type("done"):
        cursor = [e.last_event_id for piece in pieces for e in piece.events][-1]
        url = f"{relay.nodes[node].url}/api/conversations/{cid}/events"
        stream = await relay.session.get(url, headers={**auth, "Last-Event-ID": cursor})
        relay.streams.append(stream)
        if stream.status != 200:  # 503 while the shard fails over: retry like EventSource does
            assert stream.status == 503, stream.status
            stream.close()
            await asyncio.sleep(0.3)
            continue
        pieces.append(await read_events(stream, within=30, until=lambda e: e.type == "done"))
    return pieces


def delta_text(pieces: list[Received]) -> str:
    events = [e for piece in pieces for e in piece.events]
    assert not [e for e in events if e.type == "reset"], "the history lost what the client followed"
    assert_strictly_increasing([e.last_event_id for e in events])
    return "".join(e.data for e in events if e.type == "delta")


# -- one slot per conversation, one SSUBSCRIBE per partition ------------------------------------


def test_every_key_of_a_conversation_and_its_jobs_stream_share_one_slot() -> None:
    for cid in ("a" * 22, "conversation-0001", "Zz_-09"):
        keys = ConversationKeys(cid)
        names = [*keys.all, keys.channel, keys.jobs, keys.watched]
        assert len({key_slot(name.encode()) for name in names}) == 1, names
    slots = {key_slot(ConversationKeys(f"c{i:05d}").events.encode()) for i in range(5000)}
    assert len(slots) == PARTITIONS  # a fixed set of tags, not one per conversation


async def test_a_reconnect_resubscribes_per_partition_not_per_conversation(
    cluster: Cluster, shared_cluster: RedisClusterServers
) -> None:
    shards = shared_cluster.members
    conversations = [await cluster.create() for _ in range(90)]  # the session holds at most 100 connections
    streams = [await cluster.events(cid, auth, 0) for cid, auth in conversations]
    assert all(s.status == 200 for s in streams)
    partitions = {partition_of(cid) for cid, _ in conversations}
    before = {m.port: _ssubscribes(m) for m in shards}
    for member in shards:
        client(member).execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    cid, auth = conversations[-1]
    posted = await cluster.post(cid, auth, "after the reconnect")
    got = await read_events(streams[-1], within=20, until=lambda e: e.type == "done")
    assert got.text(posted["response_id"]) == "after the reconnect"
    sent = sum(_ssubscribes(m) - before[m.port] for m in shards)
    # 90 conversations followed on node 0: its reconnect sends one SSUBSCRIBE per partition it
    # follows (each names all of that partition's channels), not one per conversation.
    assert len(partitions) <= sent <= len(partitions) + 2, (sent, len(partitions))
    assert len(partitions) < len(conversations)


def _ssubscribes(member: RedisServer) -> int:
    stats = client(member).info("commandstats")
    return int(stats.get("cmdstat_ssubscribe", {}).get("calls", 0))


# -- faults: lost connections, failover and slot migration mid-answer ---------------------------------


async def test_the_shards_pubsub_connections_killed_mid_answer_lose_nothing(
    cluster: Cluster, shared_cluster: RedisClusterServers
) -> None:
    cid, auth = await cluster.create()
    on_a, on_b = await cluster.events(cid, auth, 0), await cluster.events(cid, auth, 1)
    await cluster.post(cid, auth, LONG)
    head = await read_events(on_a, count=10)
    shard = primary_of(shared_cluster, ConversationKeys(cid).channel)
    killed = client(shard).execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    assert int(killed) >= 2  # each node's connection to the conversation's shard
    pieces_a = [head, *await follow_to_the_end(cluster, cid, auth, on_a, 0)]
    pieces_b = await follow_to_the_end(cluster, cid, auth, on_b, 1)
    assert delta_text(pieces_a) == delta_text(pieces_b) == LONG
    assert (await cluster.history(cid, auth))["messages"][-1]["content"] == LONG


async def test_a_primary_killed_mid_answer_loses_nothing(faulty: Cluster, fresh_cluster: RedisClusterServers) -> None:
    cid, auth = await faulty.create()
    on_a, on_b = await faulty.events(cid, auth, 0), await faulty.events(cid, auth, 1)
    posted = await faulty.post(cid, auth, LONG)
    head = await read_events(on_a, count=20)
    victim = primary_of(fresh_cluster, ConversationKeys(cid).state)
    victim.stop(signal.SIGKILL)  # its replica takes over after the cluster's node timeout (1 s)
    pieces_a = [head, *await follow_to_the_end(faulty, cid, auth, on_a, 0)]
    pieces_b = await follow_to_the_end(faulty, cid, auth, on_b, 1)
    assert delta_text(pieces_a) == delta_text(pieces_b) == LONG
    done = [d for piece in pieces_a for d in piece.of_type("done")]
    chunks = sum(len(piece.of_type("delta")) for piece in pieces_a)
    assert done == [{"response_id": posted["response_id"], "finish_reason": "stop", "chunks": chunks}]
    assert (await faulty.history(cid, auth))["messages"][-1]["content"] == LONG


async def test_a_slot_migrated_mid_answer_loses_nothing(faulty: Cluster, fresh_cluster: RedisClusterServers) -> None:
    cid, auth = await faulty.create()
    keys = ConversationKeys(cid)
    on_a, on_b = await faulty.events(cid, auth, 0), await faulty.events(cid, auth, 1)
    posted = await faulty.post(cid, auth, LONG)
    head = await read_events(on_a, count=20)
    source = primary_of(fresh_cluster, keys.state)
    target = next(m for m in fresh_cluster.members if m.port in fresh_cluster.primary_ports() and m is not source)
    await asyncio.to_thread(migrate_slot, key_slot(keys.state.encode()), source, target)
    pieces_a = [head, *await follow_to_the_end(faulty, cid, auth, on_a, 0)]
    pieces_b = await follow_to_the_end(faulty, cid, auth, on_b, 1)
    assert delta_text(pieces_a) == delta_text(pieces_b) == LONG
    assert primary_of(fresh_cluster, keys.state) is target
    # both nodes followed the channel to its new shard (Redis unsubscribed them on the old one)
    _, subscribers = client(target).execute_command("PUBSUB", "SHARDNUMSUB", keys.channel)  # type: ignore[no-untyped-call]
    assert subscribers == 2
    done = [d for piece in pieces_b for d in piece.of_type("done")]
    chunks = sum(len(piece.of_type("delta")) for piece in pieces_b)
    assert done == [{"response_id": posted["response_id"], "finish_reason": "stop", "chunks": chunks}]
    assert (await faulty.history(cid, auth))["messages"][-1]["content"] == LONG


async def test_a_subscription_refused_with_moved_is_made_on_the_new_shard(
    faulty: Cluster, fresh_cluster: RedisClusterServers
) -> None:
    cid, auth = await faulty.create()
    keys = ConversationKeys(cid)
    await faulty.history(cid, auth)  # the nodes have read the cluster map by now
    source = primary_of(fresh_cluster, keys.state)
    target = next(m for m in fresh_cluster.members if m.port in fresh_cluster.primary_ports() and m is not source)
    # Nobody follows the conversation yet, so no node hears of the move: their maps are stale, and
    # the first SSUBSCRIBE goes to the old shard, which answers MOVED.
    await asyncio.to_thread(migrate_slot, key_slot(keys.state.encode()), source, target)
    stream = await faulty.events(cid, auth, 0)
    posted = await faulty.post(cid, auth, "after the move", node=1)
    got = await read_events(stream, within=20, until=lambda e: e.type == "done")
    assert got.text(posted["response_id"]) == "after the move", [(e.type, e.data[:80]) for e in got.events]
    _, subscribers = client(target).execute_command("PUBSUB", "SHARDNUMSUB", keys.channel)  # type: ignore[no-untyped-call]
    assert subscribers == 1


def migrate_slot(slot: int, source: RedisServer, target: RedisServer) -> None:
    """Move one slot, keys and all, the way ``redis-cli --cluster reshard`` does."""
    src, dst = client(source), client(target)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)  # type: ignore[no-untyped-call]
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)  # type: ignore[no-untyped-call]
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
    for member in (dst, src):  # the others learn it from the cluster bus
        member.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # type: ignore[no-untyped-call]


async def test_the_publish_path_has_a_pipe_per_primary_and_follows_ask_and_moved(
    fresh_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster pipeline cost the producer 74-80 µs of its own CPU per token on 3 primaries
    against 24-26 on one Redis (``scripts/producer_alone.py 300 2 20 cluster``); the publish path
    now takes a ``CommandPipe`` per primary (43-52). A slot migrating (its keys moved: ``ASK``) and migrated (the map
    stale: ``MOVED``) are followed without the caller seeing either."""
    monkeypatch.setattr(RedisCluster, "pipeline", lambda *_, **__: pytest.fail("redis-py's cluster pipeline"))
    cluster = connect(fresh_cluster.url, max_connections=8, timeout_seconds=5, cluster=True)
    assert isinstance(cluster, RedisCluster)
    await cluster.initialize()
    calls = script_calls_for(cluster)
    count = Script("return redis.call('INCR', KEYS[1])")
    keys = ConversationKeys("conversation-cluster-pipe")
    try:
        assert await calls.script(count, [keys.state], []) == 1
        slot = key_slot(keys.state.encode())
        source = primary_of(fresh_cluster, keys.state)
        target = next(m for m in fresh_cluster.members if m.port in fresh_cluster.primary_ports() and m is not source)
        src, dst = client(source), client(target)
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)  # type: ignore[no-untyped-call]
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)  # type: ignore[no-untyped-call]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, keys.state, 0, 5000)  # type: ignore[no-untyped-call]
        assert await calls.script(count, [keys.state], []) == 2  # ASK: sent to the importing node
        for member in (dst, src):
            member.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # type: ignore[no-untyped-call]
        assert await calls.script(count, [keys.state], []) == 3  # MOVED: the map follows
        assert await calls.script(count, [keys.state], []) == 4  # straight to the new owner now
        assert cluster.nodes_manager.get_node_from_slot(slot).port == target.port
        assert client(target).get(keys.state) == "4"
    finally:
        await calls.aclose()
        await cluster.aclose()
