"""The official Durable Streams clients (TypeScript ``@durable-streams/client``, Python
``durable-streams``) against two nodes behind the balancer, one of them killed mid-stream, with one
write's reply lost on the way back (a fault proxy in front of the balancer): the writers retry, the
readers (SSE and long-poll) resume from their last offsets, and every reader and a final catch-up
read get every item once, in order (issue 25)."""

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_streams import AsyncDurableStream, SeqConflictError, astream

from launch.cluster import LocalCluster
from tests.conftest import ROOT
from tests.faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "durable-clients-key-" + "k" * 16
WRITER: dict[str, str | Callable[[], str]] = {"Authorization": f"Bearer {KEY}"}
COUNT = 300


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalCluster]:
    env = {
        "STREAMFAN_DURABLE_STREAMS": "keys",
        "STREAMFAN_API_KEYS": KEY,
        "STREAMFAN_DURABLE_LONG_POLL_SECONDS": "2",
        "STREAMFAN_DURABLE_SSE_SECONDS": "5",
    }
    cluster = LocalCluster(nodes=2, producers=0, env=env, workdir=tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def proxy(deployment: LocalCluster) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(deployment.port)
    await proxy.start()
    yield proxy
    await proxy.close()


def kill_a_node(deployment: LocalCluster) -> None:
    deployment.node_members[0].popen.send_signal(signal.SIGKILL)


async def catch_up(url: str) -> list[Any]:
    """Every item of the stream, by plain catch-up reads."""
    items: list[Any] = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as client:
        offset = "-1"
        while True:
            response = await client.get(url, params={"offset": offset})
            response.raise_for_status()
            items += response.json()
            offset = response.headers["Stream-Next-Offset"]
            if response.headers.get("Stream-Up-To-Date") == "true":
                return items


async def test_the_typescript_client_loses_and_doubles_nothing_through_a_kill_and_a_lost_reply(
    deployment: LocalCluster, proxy: FaultProxy
) -> None:
    proxy.lose_reply_to(b"Producer-Seq: 7\r\n")  # the 8th batch is written, its answer never arrives
    env = {**os.environ, "DS_URL": f"http://127.0.0.1:{proxy.port}", "DS_PATH": "ts/answers"}
    env |= {"DS_COUNT": str(COUNT), "DS_KEY": KEY, "DS_PAUSE_MS": "5"}
    script = await asyncio.create_subprocess_exec(
        "node", "durable_clients.mjs", cwd=ROOT / "tests" / "node", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert script.stdout is not None
    seen: dict[str, list[int]] = {}
    errors = []
    async with asyncio.timeout(120):
        async for line in script.stdout:
            event = json.loads(line)
            if event.get("wrote") == 100:
                kill_a_node(deployment)  # mid-stream: its readers and writes fail over to the other node
            errors += [event["error"]] if "error" in event else []
            seen = event.get("seen", seen)
        assert await script.wait() == 0
    assert proxy.replies_lost == 1
    expected = list(range(COUNT))
    assert seen == {"sse": expected, "long-poll": expected}, errors
    assert [item["i"] for item in await catch_up(f"{deployment.url}/v1/stream/ts/answers")] == expected


async def python_reader(url: str, live: str) -> list[int]:
    """The stream's items as the Python client tails them, resuming from its last offset whenever
    the connection breaks (the protocol's resume)."""
    seen: list[int] = []
    offset = "-1"
    while not seen or seen[-1] != COUNT - 1:
        try:
            async with astream(url, offset=offset, live=live, headers=WRITER) as response:  # type: ignore[arg-type]
                async for event in response.iter_events(mode="json_batches"):
                    seen += [item["i"] for item in event.data]
                    offset = event.next_offset
                    if seen and seen[-1] == COUNT - 1:
                        break
        except Exception:  # a killed node: any transport error (CancelledError is not one)
            await asyncio.sleep(0.1)
    return seen


async def python_writer(url: str, deployment: LocalCluster) -> None:
    """Appends every item with its own Stream-Seq; a write whose answer was lost is sent again, and
    the 409 of a Stream-Seq already written says it landed the first time."""
    async with await AsyncDurableStream.create(url, content_type="application/json", headers=WRITER) as handle:
        for i in range(COUNT):
            if i == 100:
                kill_a_node(deployment)
            while True:
                try:
                    await handle.append({"i": i}, seq=f"{i:08d}")
                    break
                except SeqConflictError:
                    break  # already appended: the retry of a write whose answer was lost
                except Exception:  # a killed node or a lost reply: send it again
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)


async def test_the_python_client_loses_and_doubles_nothing_through_a_kill_and_a_lost_reply(
    deployment: LocalCluster, proxy: FaultProxy
) -> None:
    proxy.lose_reply_to(b"Stream-Seq: 00000042\r\n")
    url = f"http://127.0.0.1:{proxy.port}/v1/stream/py/answers"
    handle = await AsyncDurableStream.create(url, content_type="application/json", headers=WRITER)
    await handle.aclose()
    async with asyncio.timeout(120):
        readers = [asyncio.create_task(python_reader(url, live)) for live in ("sse", "long-poll")]
        await python_writer(url, deployment)
        sse, long_poll = await asyncio.gather(*readers)
    assert proxy.replies_lost == 1
    expected = list(range(COUNT))
    assert sse == expected and long_poll == expected
    assert [item["i"] for item in await catch_up(f"{deployment.url}/v1/stream/py/answers")] == expected
