"""``python -m launch.bench``: every scenario against one node and against two, on a real Redis
(and with ``--redis-cluster N`` on a Redis Cluster too).

Starts the topology itself for each run (``launch.cluster.LocalCluster``: a redis-server on a free
loopback port, one producer paced for the scenario, N nodes, no balancer so the nodes alone are
measured), runs ``python -m loadtest`` with its JSON and SVG outputs, stops everything, and writes a
Markdown table of the figures to ``OUT/summary.md``. Every run is bounded in clients and seconds.
"""

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.cluster import LocalCluster


@dataclass(frozen=True)
class Scenario:
    name: str
    """The load tester's --scenario."""
    clients: int
    conversations: int
    tokens_per_second: float
    duration: float
    extra: tuple[str, ...] = ()


SCENARIOS = {
    # The design targets: 1,000 streams over 500 conversations at 20 chunks/s; 2,000 tabs on one
    # conversation at 50 chunks/s (100k deliveries/s).
    # steady's first messages are spread over one answer's length (120 tokens at 20/s, and the time to
    # the first), which is not timed: posted at once, the answers ran in lockstep, every 6.1 s a burst
    # of ends and starts that S2's steady publisher never has (docs/benchmarks.md, session 15).
    "steady": Scenario("steady", 1000, 500, 20, 20, ("--max-tokens", "120", "--warmup", "7")),
    "broadcast": Scenario("broadcast", 2000, 1, 50, 20, ("--max-tokens", "400")),
    # A broadcast the Python load client can keep up with on a shared 2-core box.
    "broadcast-500": Scenario("broadcast", 500, 1, 50, 20, ("--max-tokens", "400")),
    "idle": Scenario("idle", 4000, 1000, 20, 10),
    "ramp": Scenario("ramp", 1000, 500, 20, 30, ("--steps", "5", "--p99-bound-ms", "50", "--max-tokens", "120")),
}


def run_one(
    key: str,
    scenario: Scenario,
    nodes: int,
    out: Path,
    workers: int,
    scale: float,
    duration: float | None,
    redis_cluster: int = 0,
) -> dict[str, Any]:
    env = {
        "STREAMFAN_SIM_TOKENS_PER_SECOND": str(scenario.tokens_per_second),
        "STREAMFAN_SIM_TTFT_MS": "100",
        "STREAMFAN_SIM_JITTER": "0.1",
    }
    cluster = LocalCluster(nodes=nodes, producers=1, env=env, balancer=False, redis_cluster=redis_cluster)
    cluster.start()
    stem = f"{key}-{nodes}node" + (f"-cluster{redis_cluster}" if redis_cluster else "")
    clients = max(1, int(scenario.clients * scale))
    conversations = max(1, int(scenario.conversations * scale))
    args = [sys.executable, "-m", "loadtest", "--scenario", scenario.name, "--quiet"]
    for member in cluster.node_members:
        args += ["--url", member.url, "--server-pid", str(member.popen.pid)]
    seconds = duration or scenario.duration
    args += ["--clients", str(clients), "--conversations", str(conversations), "--duration", str(seconds)]
    args += ["--workers", str(workers), "--ramp-up", "5", *scenario.extra]
    args += ["--json", str(out / f"{stem}.json"), "--plot", str(out / f"{stem}.svg")]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 180)
    finally:
        cluster.remove()
    (out / f"{stem}.txt").write_text(" ".join(args[1:]) + "\n\n" + done.stdout + done.stderr)
    result: dict[str, Any] = json.loads((out / f"{stem}.json").read_text())
    result["command"] = "python " + " ".join(args[1:]).replace(str(out), "OUT")
    result["redis"] = f"cluster of {redis_cluster}" if redis_cluster else "one"
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[tuple[str, int, dict[str, Any]]]) -> str:
    lines = [
        "| scenario | nodes | Redis | clients / conv. | chunks/s | p50 ms | p99 ms | max ms | lost/dup/reord. | "
        "client CPU | server KiB/conn | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, nodes, r in rows:
        lat = r["latency_ms"]
        note = ""
        if r.get("ramp_best"):
            note = (
                f"sustained {r['ramp_best']['chunks_per_second']} chunks/s at p99 ≤ {r['ramp_best']['p99_ms']:.1f} ms"
            )
        elif "ramp" in r:
            note = "no step under the bound"
        memory = r.get("server_memory", {}).get("kib_per_connection")
        lines.append(
            f"| {name} | {nodes} | {r.get('redis', 'one')} | "
            f"{r['config']['clients']} / {r['config']['conversations']} | "
            f"{r['chunks_per_second']} | {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} | "
            f"{r['lost']}/{r['duplicated']}/{r['reordered']} | {r['client_cpu_percent_of_one_core']}% | "
            f"{memory if memory is not None else '-'} | {'OK' if r['ok'] else 'FAILED'} {note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launch.bench", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="default: all")
    parser.add_argument("--nodes", type=int, action="append", help="node counts to compare (default: 1 and 2)")
    parser.add_argument("--out", default="bench-results", help="directory for JSON, SVG and summary.md")
    parser.add_argument("--workers", type=int, default=2, help="load-client processes (default: 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply clients and conversations (0.01..1)")
    parser.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="also run every row on a Redis Cluster of N primaries (each with a replica)",
    )
    parser.add_argument("--duration", type=float, help="seconds per run instead of each scenario's own (2..600)")
    args = parser.parse_args(argv)
    if not 0.01 <= args.scale <= 1:
        parser.error("--scale must be within 0.01..1")
    if args.duration is not None and not 2 <= args.duration <= 600:
        parser.error("--duration must be within 2..600 seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.redis_cluster and not 3 <= args.redis_cluster <= 16:
        parser.error("--redis-cluster needs 3 to 16 primaries")
    rows = []
    for name in args.scenario or list(SCENARIOS):
        for nodes in args.nodes or [1, 2]:
            for shards in sorted({0, args.redis_cluster}):
                print(f"==> {name} on {nodes} node(s), Redis: {shards or 'one'}", flush=True)
                result = run_one(name, SCENARIOS[name], nodes, out, args.workers, args.scale, args.duration, shards)
                rows.append((name, nodes, result))
                print(table([(name, nodes, result)]).splitlines()[-1], flush=True)
    summary = table(rows) + "\n\nCommands:\n\n" + "\n".join(f"    {r['command']}" for _, _, r in rows) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary)
    sys.exit(0 if all(r["ok"] for _, _, r in rows) else 1)


if __name__ == "__main__":
    main()
