"""The official Durable Streams conformance suite (``@durable-streams/server-conformance-tests``
0.3.6, under vitest) passes in full, every test it does not skip itself (issue 25): against an
embedded node, against a node on a real Redis, and against two nodes on a real Redis Cluster behind
the balancer, where each request may land on either node."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launch.cluster import LocalCluster
from launch.processes import free_port
from tests.conftest import ROOT, EmbeddedNode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FOLDER = ROOT / "tests" / "node"
PASSING = 332
"""Every test but the 6 the suite itself skips (its reserved subscription APIs)."""
DURABLE = {"STREAMFAN_DURABLE_STREAMS": "open", "STREAMFAN_DURABLE_LONG_POLL_SECONDS": "2"}


def run_suite(url: str, report: Path) -> None:
    """The suite against ``url``: every test it runs passes."""
    vitest = FOLDER / "node_modules" / ".bin" / "vitest"
    assert shutil.which("node") and vitest.exists(), "Node.js or the suite is missing: ./scripts/test.sh installs them"
    subprocess.run(
        [str(vitest), "run", "durable_conformance.test.mjs", "--reporter=json", f"--outputFile={report}"],
        cwd=FOLDER,
        env={**os.environ, "DS_URL": url},
        capture_output=True,
        timeout=240,
    )
    results = json.loads(report.read_text())
    failed = [
        " > ".join([*test["ancestorTitles"][1:], test["title"]])
        for file in results["testResults"]
        for test in file["assertionResults"]
        if test["status"] == "failed"
    ]
    assert not failed
    assert results["numPassedTests"] == PASSING, results["numPassedTests"]


def test_the_official_suite_passes_against_an_embedded_node(tmp_path: Path) -> None:
    node = EmbeddedNode(free_port(), tmp_path / "node.log", env=DURABLE)
    node.start()
    try:
        run_suite(node.url, tmp_path / "report.json")
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("redis_cluster", "nodes", "balancer"),
    [(0, 1, False), (3, 2, True)],
    ids=["a node on a real Redis", "two nodes on a Redis Cluster behind the balancer"],
)
def test_the_official_suite_passes_on_real_redis(
    tmp_path: Path, redis_cluster: int, nodes: int, balancer: bool
) -> None:
    cluster = LocalCluster(
        nodes=nodes, producers=0, balancer=balancer, redis_cluster=redis_cluster, env=DURABLE, workdir=tmp_path
    )
    cluster.start()
    try:
        url = cluster.url if balancer else f"http://127.0.0.1:{cluster.node_members[0].port}"
        run_suite(url, tmp_path / "report.json")
    finally:
        cluster.stop()
