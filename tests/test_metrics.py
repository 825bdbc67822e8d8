"""The Prometheus text format, and the node's counters moving with real traffic (fakeredis)."""

import re
from typing import Any

import pytest

from support.prometheus import Counter, Gauge, Histogram, Registry
from tests.sse_client import read_events


def test_exposition_format() -> None:
    registry = Registry()
    hits = registry.add(Counter("demo_hits_total", "Hits.\nSecond line."))
    jobs = registry.add(Counter("demo_jobs_total", "Jobs.", label_names=("reason",)))
    registry.add(Gauge("demo_open", "Open.", lambda: 3))
    latency = registry.add(Histogram("demo_seconds", "Latency.", (0.1, 1.0)))
    hits.inc()
    hits.inc(2)
    jobs.inc_labels('say "hi"')
    for value in (0.05, 0.1, 0.5, 7):
        latency.observe(value)
    assert registry.render().decode() == (
        "# HELP demo_hits_total Hits.\\nSecond line.\n"
        "# TYPE demo_hits_total counter\n"
        "demo_hits_total 3\n"
        "# HELP demo_jobs_total Jobs.\n"
        "# TYPE demo_jobs_total counter\n"
        'demo_jobs_total{reason="say \\"hi\\""} 1\n'
        "# HELP demo_open Open.\n"
        "# TYPE demo_open gauge\n"
        "demo_open 3\n"
        "# HELP demo_seconds Latency.\n"
        "# TYPE demo_seconds histogram\n"
        'demo_seconds_bucket{le="0.1"} 2\n'
        'demo_seconds_bucket{le="1"} 3\n'
        'demo_seconds_bucket{le="+Inf"} 4\n'
        "demo_seconds_sum 7.65\n"
        "demo_seconds_count 4\n"
    )


def test_names_follow_conventions() -> None:
    with pytest.raises(ValueError, match="_total"):
        Counter("demo_hits", "Hits.")
    registry = Registry()
    registry.add(Gauge("demo_open", "Open.", lambda: 0))
    with pytest.raises(ValueError, match="twice"):
        registry.add(Gauge("demo_open", "Open.", lambda: 0))


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def test_node_metrics_count_connections_deliveries_and_replays(client_factory: Any) -> None:
    client = await client_factory()
    created = await (await client.post("/api/conversations")).json()
    auth = {"Authorization": f"Bearer {created['token']}"}
    url = f"/api/conversations/{created['id']}/events"
    live = await client.get(url, headers=auth)
    await client.post(f"/api/conversations/{created['id']}/messages", json={"content": "a b c"}, headers=auth)
    first = await read_events(live)
    live.close()
    replay = await client.get(url, headers=auth)
    again = await read_events(replay)
    replay.close()
    assert again.ids == first.ids

    text = await (await client.get("/metrics")).text()
    assert sample(text, "streamfan_connections_total") == 2
    assert sample(text, "streamfan_events_delivered_total") == len(first.events)
    assert sample(text, "streamfan_bytes_written_total") > 0
    assert sample(text, "streamfan_replays_total") == 1
    assert sample(text, "streamfan_replay_events_count") == 1
    assert sample(text, "streamfan_replay_events_sum") == len(first.events)
    assert sample(text, "streamfan_publish_to_write_seconds_count") == len(first.events)
    assert sample(text, "streamfan_slow_client_disconnects_total") == 0
    assert sample(text, "streamfan_channels_subscribed") == 1
    # The embedded producer's metrics are served by its node.
    assert sample(text, "streamfan_producer_tokens_total") == 3
    assert 'streamfan_producer_jobs_total{reason="stop"} 1' in text
