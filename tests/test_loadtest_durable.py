"""The load tester's Durable Streams mode (issue 25): its tally catches loss, doubling and
reordering; a short run against a node on real Redis (SSE and long-poll readers) is clean."""

import json
import subprocess
import sys
from collections.abc import Callable

from launch.processes import RedisServer
from loadtest.durable import Tally
from loadtest.stats import Series
from tests.conftest import ROOT, Proc


def test_the_tally_counts_lost_doubled_and_reordered_messages() -> None:
    tally, latency = Tally(), Series()
    for n in (0, 1, 3, 2, 2, 5):
        tally.see({"w": 0, "n": n, "t": 0}, latency)
    assert (tally.reordered, tally.duplicated) == (1, 1)
    assert tally.lost({0: 7}) == 2  # 4 skipped, 6 never came
    assert not tally.caught_up({0: 7}) and tally.caught_up({0: 6})
    clean = Tally()
    for n in range(3):
        clean.see({"w": 1, "n": n, "t": 0}, latency)
    assert clean.lost({1: 3}) == clean.duplicated == clean.reordered == 0


def test_a_short_run_is_clean(redis_process: RedisServer, spawn: Callable[..., Proc]) -> None:
    """Writers and readers of both live modes on one node of a real Redis; SSE responses last 1 s,
    so the SSE readers resume by offset several times."""
    env = {"REDIS_URL": redis_process.url, "STREAMFAN_DURABLE_STREAMS": "open", "STREAMFAN_DURABLE_SSE_SECONDS": "1"}
    node = spawn("server", env)
    arguments = ["--url", node.url, "--streams", "3", "--readers", "6", "--duration", "3", "--rate", "30"]
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.durable", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["stored_match"] and result["appended"] > 200
    assert result["delivered"] == result["appended"] * 6 and result["lost"] == result["duplicated"] == 0
