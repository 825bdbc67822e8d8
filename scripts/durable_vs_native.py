"""Durable Streams against the native API, the same work on one embedded node each (issue 25).

A broadcast (one stream, or one conversation's answer, to 1,000 readers at 20 messages a second)
and many writers (50 streams at 100 appends a second, or 50 conversations answered at 100 tokens a
second), each driven by its load tester; prints what each delivered, its verdict, its latency and
the node process's CPU (``/proc/<pid>/stat``) per delivery. Loopback only; stops by itself; stops
only the nodes it started.

    .venv/bin/python scripts/durable_vs_native.py
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch.processes import free_port, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_cpu_of(node: "subprocess.Popen[bytes]", command: list[str], out: Path) -> float:
    """The node's CPU seconds while ``command`` ran (its stdout into ``out``)."""
    before = cpu_seconds(node.pid)
    with out.open("w") as stdout:
        subprocess.run(command, cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL, timeout=300)
    return cpu_seconds(node.pid) - before


def run(label: str, tokens_per_second: int, durable: list[str], native: list[str], work: Path) -> None:
    port = free_port()
    env = {**os.environ, "STREAMFAN_DURABLE_STREAMS": "open", "STREAMFAN_LIMITS_EXEMPT": "127.0.0.0/8"}
    env["STREAMFAN_SIM_TOKENS_PER_SECOND"] = str(tokens_per_second)
    with (work / f"node-{port}.log").open("wb") as log:
        node = subprocess.Popen(
            [PYTHON, "-m", "server", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_for_port(port, proc=node)
        time.sleep(2)
        url = f"http://127.0.0.1:{port}"
        ds_cpu = node_cpu_of(node, [PYTHON, "-m", "loadtest.durable", "--url", url, *durable], work / "ds.json")
        ds = json.loads((work / "ds.json").read_text())
        json_out = work / "native.json"
        native_cmd = [PYTHON, "-m", "loadtest", "--url", url, "--quiet", "--json", str(json_out), *native]
        native_cpu = node_cpu_of(node, native_cmd, work / "native.out")
        nv = json.loads(json_out.read_text())
    finally:
        stop_process(node)
    print(f"== {label}")
    ds_latency, nv_latency = ds["latency_ms"], nv["latency_ms"]
    print(
        f"durable streams: ok={ds['ok']} appended={ds['appended']} delivered={ds['delivered']} "
        f"({ds['deliveries_per_second']}/s) p50={ds_latency['p50']:.1f} p99={ds_latency['p99']:.1f} ms; "
        f"node CPU {ds_cpu:.1f} s = {1e6 * ds_cpu / max(1, ds['delivered']):.0f} us per delivery"
    )
    print(
        f"native:          ok={nv['ok']} delivered={nv['chunks']} ({nv['chunks_per_second']}/s) "
        f"p50={nv_latency['p50']:.1f} p99={nv_latency['p99']:.1f} ms; "
        f"node CPU {native_cpu:.1f} s = {1e6 * native_cpu / max(1, nv['chunks']):.0f} us per delivery"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        run(
            "broadcast: 1,000 readers, 20 messages/s",
            20,
            ["--streams", "1", "--readers", "1000", "--live", "sse", "--rate", "20", "--duration", "15"],
            [
                "--scenario",
                "broadcast",
                "--clients",
                "1000",
                "--duration",
                "15",
                "--max-tokens",
                "300",
                "--workers",
                "2",
            ],
            work,
        )
        run(
            "writers: 50 streams at 100 appends/s, one reader each",
            100,
            ["--streams", "50", "--readers", "1", "--live", "sse", "--rate", "100", "--duration", "15"],
            [
                "--scenario",
                "steady",
                "--clients",
                "50",
                "--conversations",
                "50",
                "--duration",
                "15",
                "--max-tokens",
                "300",
            ],
            work,
        )


if __name__ == "__main__":
    main()
