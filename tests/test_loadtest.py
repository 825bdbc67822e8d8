"""The load tester: its checker catches loss, doubling and reordering; a short real run is clean."""

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from launch.processes import RedisServer
from loadtest.client import Tab
from loadtest.stats import Series, percentile
from tests.conftest import ROOT, Proc, run_loadtest


def start(rid: str) -> str:
    return json.dumps({"message_id": "m", "content": "x", "response_id": rid})


def done(rid: str, chunks: int) -> str:
    return json.dumps({"response_id": rid, "finish_reason": "stop", "chunks": chunks})


def feed(tab: Tab, events: list[tuple[str, str, str]]) -> None:
    latency = Series()
    for event_type, data, event_id in events:
        tab.on_event(event_type, data, event_id, latency)


def test_checker_counts_lost_chunks_from_the_done_count() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("user_message", start("r"), "1-0"),
            ("delta", "a", "2-0"),
            ("delta", "c", "4-0"),  # the chunk between never came
            ("done", done("r", 3), "5-0"),
        ],
    )
    assert (tab.lost, tab.duplicated, tab.reordered) == (1, 0, 0)
    assert "".join(tab.texts["r"]) == "ac"


def test_checker_counts_a_chunk_doubled_under_a_new_id() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("user_message", start("r"), "1-0"),
            ("delta", "a", "2-0"),
            ("delta", "a", "3-0"),
            ("done", done("r", 1), "4-0"),
        ],
    )
    assert (tab.lost, tab.duplicated, tab.reordered) == (0, 1, 0)


def test_checker_counts_reordered_and_replayed_ids() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(
        tab,
        [
            ("user_message", start("r"), "1-0"),
            ("delta", "a", "5-0"),
            ("delta", "b", "4-0"),  # an older id after a newer one
            ("delta", "b", "5-0"),  # the same id again
        ],
    )
    assert tab.reordered == 2 and tab.lost == 0 and tab.duplicated == 0


def test_checker_counts_a_delta_whose_answer_never_started() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    feed(tab, [("delta", "orphan", "1-0")])
    assert tab.lost == 1 and tab.chunks == 0


def test_clean_stream_has_no_anomalies_and_digests_the_answer() -> None:
    tab = Tab("c", "t", "http://127.0.0.1")
    latency = Series()
    events = [
        ("user_message", start("r"), "1-0"),
        ("delta", "he", "2-0"),
        ("delta", "llo\n", "2-1"),
        ("done", done("r", 2), "3-0"),
        ("regenerate", json.dumps({"response_id": "r2", "replaces": "r", "message_id": "m"}), "4-0"),
        ("delta", "again", "5-0"),
        ("done", done("r2", 1), "6-0"),
    ]
    for event_type, data, event_id in events:
        tab.on_event(event_type, data, event_id, latency)
    assert (tab.lost, tab.duplicated, tab.reordered, tab.chunks) == (0, 0, 0, 3)
    import hashlib

    assert tab.digests() == {"r": hashlib.sha256(b"hello\n").hexdigest(), "r2": hashlib.sha256(b"again").hexdigest()}
    assert latency.summary()["count"] == 3  # each delta's latency, from its id's milliseconds


def test_deltas_published_during_the_warm_up_are_checked_but_not_timed() -> None:
    """Issue 26: the steady scenario started every answer at once, so its p99 measured their lockstep
    (a dip every answer's length). With a warm-up, what was published before it ends is still
    checked for loss and order, but is not a latency sample; nor is what the drain after the
    duration publishes."""
    tab = Tab("c", "t", "http://127.0.0.1")
    tab.timed_ms = (2000, 3000)
    latency = Series()
    for event_type, data, event_id in [
        ("user_message", start("r"), "1000-0"),
        ("delta", "warm ", "1500-0"),
        ("delta", "timed", "2000-0"),
        ("delta", " drained", "3000-0"),
        ("done", done("r", 3), "3500-0"),
    ]:
        tab.on_event(event_type, data, event_id, latency)
    assert (tab.lost, tab.duplicated, tab.reordered, tab.chunks) == (0, 0, 0, 3)
    assert tab.digests() == {"r": hashlib.sha256(b"warm timed drained").hexdigest()}
    assert latency.summary()["count"] == 1


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
    result, stdout = run_loadtest(
        tmp_path,
        *(f"--url={n.url}" for n in nodes),
        *("--clients", "30", "--conversations", "10", "--duration", "3", "--ramp-up", "0.5", "--max-tokens", "60"),
    )
    assert result["answers_done"] >= 10 and result["answers_verified"] >= 30 and result["answers_mismatched"] == 0
    assert result["chunks"] > 0 and result["latency_ms"]["p99"] is not None
    # 100 chunks/s per answer: consecutive chunks about 10 ms apart
    assert result["inter_chunk_gap_ms"]["count"] > 0 and 2 < result["inter_chunk_gap_ms"]["p50"] < 100
    assert "OK: nothing lost" in stdout


@pytest.mark.slow
def test_a_run_longer_than_a_history_page_verifies_every_answer(
    redis_process: RedisServer, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Issue 23: the tester verified against one page of the history (200 messages), so a long run
    that lost nothing reported every older answer as mismatched."""
    env = {"REDIS_URL": redis_process.url}
    node = spawn("server", env)
    spawn("producer", {**env, "STREAMFAN_SIM_TTFT_MS": "0", "STREAMFAN_SIM_TOKENS_PER_SECOND": "2000"})
    result, _ = run_loadtest(
        tmp_path,
        *(f"--url={node.url}", "--clients", "2", "--conversations", "1", "--answers", "110"),
        *("--duration", "60", "--ramp-up", "0.1", "--max-tokens", "3"),
    )
    assert result["answers_done"] == 110 and result["answers_verified"] == 220 and result["answers_mismatched"] == 0


def test_refuses_non_loopback_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "--url", "http://10.1.2.3:8080", "--clients", "1", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "not a loopback address" in done.stderr


def test_log_histogram_merges_and_never_reports_an_optimistic_percentile() -> None:
    from loadtest.stats import LogHistogram

    a, b = LogHistogram(), LogHistogram()
    for v in range(1, 101):
        (a if v % 2 else b).add(float(v))
    a.merge(b.take())
    assert a.total == 100 and b.total == 0
    p50, p99 = a.percentile(50), a.percentile(99)
    assert p50 is not None and p99 is not None
    assert 50 <= p50 <= 50 * 1.26 and 99 <= p99 <= 99 * 1.26  # the bucket's upper edge, 10 per decade
    assert LogHistogram().percentile(99) is None


def test_plot_is_an_svg_with_the_percentile_lines_and_the_histogram() -> None:
    import xml.etree.ElementTree as ET

    from loadtest.plot import render_svg

    result = {
        "config": {"scenario": "steady", "clients": 10, "conversations": 5},
        "ok": True,
        "chunks_per_second": 100.0,
        "latency_ms": {"p99": 4.2},
        "timeline": [
            {"t": float(t), "chunks_per_second": 100.0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 4.0 + t}
            for t in range(5)
        ],
        "latency_histogram_ms": {"edges": [1, 2, 5], "counts": [1, 5, 3, 1]},
    }
    root = ET.fromstring(render_svg(result))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 4  # chunks/s, p50, p90, p99
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert any("p99 4.2 ms" in t for t in texts) and "50.0%" in texts


@pytest.mark.slow
def test_ramp_against_a_real_node_reports_steps_and_draws_the_plot(
    redis_process: RedisServer, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_process.url}
    node = spawn("server", env)
    spawn("producer", {**env, "STREAMFAN_SIM_TTFT_MS": "20", "STREAMFAN_SIM_TOKENS_PER_SECOND": "100"})
    plot = tmp_path / "ramp.svg"
    result, stdout = run_loadtest(
        tmp_path,
        *("--url", node.url, "--scenario", "ramp", "--steps", "2", "--clients", "20", "--conversations", "10"),
        *("--duration", "5", "--ramp-up", "0.5", "--max-tokens", "30", "--p99-bound-ms", "1000"),
        *("--server-pid", str(node.popen.pid), "--plot", str(plot)),
    )
    assert [s["step"] for s in result["ramp"]] == [1, 2]
    assert result["ramp"][0]["conversations"] == 5 and result["ramp"][1]["conversations"] == 10
    assert result["ramp_best"] is not None and result["ramp_best"]["chunks_per_second"] > 0
    assert result["connections_held"] == 20 and result["server_memory"]["kib_per_connection"] is not None
    assert len(result["timeline"]) >= 4 and all("p99_ms" in p for p in result["timeline"])
    assert plot.read_text().startswith("<svg") and "ramp: sustained" in stdout


def test_help_explains_every_option_with_its_default() -> None:
    done = subprocess.run([sys.executable, "-m", "loadtest", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0
    for option in ("--url", "--clients", "--conversations", "--duration", "--warmup", "--json", "--scenario", "--plot"):
        assert option in done.stdout
    for scenario in ("steady", "broadcast", "idle", "ramp"):
        assert scenario in done.stdout
    assert "(default: 100)" in done.stdout and "(default: steady)" in done.stdout


@pytest.mark.slow
def test_a_run_can_be_bounded_by_a_number_of_answers(
    redis_process: RedisServer, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_process.url}
    node = spawn("server", env)
    spawn("producer", {**env, "STREAMFAN_SIM_TTFT_MS": "10", "STREAMFAN_SIM_TOKENS_PER_SECOND": "200"})
    result, _ = run_loadtest(
        tmp_path,
        *("--url", node.url, "--clients", "6", "--conversations", "3", "--answers", "5"),
        *("--duration", "60", "--ramp-up", "0.2", "--max-tokens", "20"),
    )
    assert result["answers_posted"] == result["answers_done"] == 5
    assert result["measured_seconds"] < 30  # it ended with the answers, not at the duration


@pytest.mark.slow
def test_a_warm_up_spreads_the_first_messages_and_is_not_measured(
    redis_process: RedisServer, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """The conversations' first messages go out over the warm-up, not at once; the timed window
    (latency, chunks/s) is the duration after it, and everything is still verified."""
    env = {"REDIS_URL": redis_process.url}
    node = spawn("server", env)
    spawn("producer", {**env, "STREAMFAN_SIM_TTFT_MS": "20", "STREAMFAN_SIM_TOKENS_PER_SECOND": "50"})
    result, stdout = run_loadtest(
        tmp_path,
        *("--url", node.url, "--clients", "8", "--conversations", "8", "--warmup", "2"),
        *("--duration", "2", "--ramp-up", "0.2", "--max-tokens", "30"),
    )
    assert result["ok"] and result["answers_mismatched"] == 0 and result["answers_verified"] >= 8
    first = result["first_post_seconds"]
    assert first["min"] < 0.3 and 1.2 < first["max"] < 2.0  # spread over the warm-up, 8 of them
    timed = result["latency_ms"]["count"]
    assert 0 < timed < result["chunks"]  # what came during the warm-up was delivered, not timed
    assert result["measured_seconds"] == 2 and result["chunks_per_second"] == pytest.approx(timed / 2, rel=0.01)
    assert "warm-up" in stdout
