"""The producer's CPU per published chunk under the steady load (optionally with a py-spy profile).

Starts ``launch.cluster.LocalCluster`` (one redis-server, one producer, one node, no balancer), runs
the load tester's steady scenario (600 tabs over 300 conversations, 20 chunks/s each) for 12 s, and
divides the producer process's CPU time by the chunks it published (its own metrics).

    .venv/bin/python scripts/producer_cost.py          # the figure
    .venv/bin/python scripts/producer_cost.py spy      # and a py-spy profile in /tmp/producer.txt
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.cluster import LocalCluster

PACING = {"STREAMFAN_SIM_TOKENS_PER_SECOND": "20", "STREAMFAN_SIM_TTFT_MS": "100", "STREAMFAN_SIM_JITTER": "0.1"}
LOAD = ["--scenario", "steady", "--quiet", "--clients", "600", "--conversations", "300", "--duration", "12"]
LOAD += ["--workers", "2", "--ramp-up", "2", "--max-tokens", "120"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def published(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    match = re.search(r"^streamfan_producer_tokens_total (\S+)", text, re.M)
    assert match is not None, "the producer serves no streamfan_producer_tokens_total"
    return float(match.group(1))


def main() -> None:
    cluster = LocalCluster(nodes=1, producers=1, env=PACING, balancer=False)
    cluster.start()
    try:
        producer = cluster.producer_members[0]
        spy = None
        if sys.argv[1:] == ["spy"]:
            record = ["py-spy", "record", "-p", str(producer.popen.pid), "-d", "14", "-r", "200", "-f", "raw"]
            spy = subprocess.Popen([*record, "-o", "/tmp/producer.txt"], stdout=subprocess.DEVNULL)
        chunks, cpu = published(producer.url), cpu_seconds(producer.popen.pid)
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "load.json"
            args = [
                sys.executable,
                "-m",
                "loadtest",
                *LOAD,
                "--url",
                cluster.node_members[0].url,
                "--json",
                str(result),
            ]
            subprocess.run(args, capture_output=True, timeout=120, check=False)
            load = json.loads(result.read_text())
        chunks, cpu = published(producer.url) - chunks, cpu_seconds(producer.popen.pid) - cpu
        p99 = load["latency_ms"]["p99"]
        print(f"tabs received {load['chunks_per_second']} chunks/s, lost {load['lost']}, p99 {p99} ms")
        print(f"producer: {cpu:.2f} s of CPU for {chunks:.0f} chunks: {1e6 * cpu / chunks:.1f} µs per chunk")
        if spy is not None:
            spy.wait()
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
