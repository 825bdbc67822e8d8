"""The load tester: its checker catches loss, doubling and reordering; a short real run is clean."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from loadtest.client import Tab
from loadtest.stats import Series, percentile
from server.cluster import RedisServer
from tests.conftest import ROOT, Proc


def delta(rid: str, index: int, text: str) -> str:
    return json.dumps({"response_id": rid, "index": index, "text": text, "ts": 0})


def feed(tab: Tab, events: list[tuple[str, str, str]]) -> None:
    latency = Series()
    for event_type, data, event_id in events:
        tab.on_event(event_type, data, event_id, latency)


def test_checker_counts_a_lost_and_a_doubled_chunk() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("delta", delta("r", 0, "a"), "1-0"),
            ("delta", delta("r", 2, "c"), "2-0"),  # index 1 never came: lost
            ("delta", delta("r", 2, "c"), "3-0"),  # index 2 again under a new id: doubled
            ("done", json.dumps({"response_id": "r", "finish_reason": "stop"}), "4-0"),
        ],
    )
    assert (tab.lost, tab.duplicated, tab.reordered) == (1, 1, 0)
    assert "".join(tab.texts["r"]) == "ac"


def test_checker_counts_reordered_and_replayed_ids() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("delta", delta("r", 0, "a"), "5-0"),
            ("delta", delta("r", 1, "b"), "4-0"),  # an older id after a newer one
            ("delta", delta("r", 1, "b"), "5-0"),  # the same id again
        ],
    )
    assert tab.reordered == 2 and tab.lost == 0 and tab.duplicated == 0


def test_clean_stream_has_no_anomalies_and_digests_the_answer() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("user_message", json.dumps({"message_id": "m", "content": "x", "response_id": "r"}), "1-0"),
            ("delta", delta("r", 0, "he"), "2-0"),
            ("delta", delta("r", 1, "llo"), "2-1"),
            ("done", json.dumps({"response_id": "r", "finish_reason": "stop"}), "3-0"),
        ],
    )
    assert (tab.lost, tab.duplicated, tab.reordered, tab.chunks) == (0, 0, 0, 2)
    import hashlib

    assert tab.digests() == {"r": hashlib.sha256(b"hello").hexdigest()}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 50) is None
    series = Series()
    for v in values:
        series.add(v)
    summary = series.summary()
    assert summary["count"] == 100 and summary["max"] == 100 and summary["p90"] == 90
    assert series.histogram([10, 50]) == [9, 40, 51]


def test_short_run_against_real_nodes_is_lossless_and_writes_the_report(
    redis_process: RedisServer, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_process.url}
    nodes = [spawn("server", env), spawn("server", env)]
    spawn("producer", {**env, "STREAMFAN_SIM_TTFT_MS": "50", "STREAMFAN_SIM_TOKENS_PER_SECOND": "100"})
    report = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            *(f"--url={n.url}" for n in nodes),
            "--clients",
            "30",
            "--conversations",
            "10",
            "--duration",
            "3",
            "--ramp-up",
            "0.5",
            "--max-tokens",
            "60",
            "--json",
            str(report),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["ok"] and result["lost"] == result["duplicated"] == result["reordered"] == 0
    assert result["answers_done"] >= 10 and result["answers_verified"] >= 30 and result["answers_mismatched"] == 0
    assert result["chunks"] > 0 and result["latency_ms"]["p99"] is not None
    assert "OK: nothing lost" in done.stdout


def test_refuses_non_loopback_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "--url", "http://10.1.2.3:8080", "--clients", "1", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "not a loopback address" in done.stderr
