"""``python -m loadtest``: drive a streamfan deployment with chat traffic; prove nothing was lost."""

import argparse
import asyncio
import json
import sys
from typing import Any

from loadtest.plot import write_plot
from loadtest.run import SCENARIOS, Config, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Open N SSE tabs over C conversations, post messages, measure publish-to-client latency, "
        "and verify every tab received every chunk exactly once, in order, matching the stored history. "
        "Exits 1 if anything was lost, doubled or reordered.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", action="append", required=True, help="a node or load balancer; repeat for several")
    p.add_argument("--clients", type=int, default=100, help="SSE connections (tabs) to hold")
    p.add_argument("--conversations", type=int, default=50, help="conversations the tabs are spread over")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of traffic after ramp-up")
    p.add_argument(
        "--answers", type=int, default=None, help="stop after this many answers in all (the duration still bounds it)"
    )
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="steady",
        help="steady: every conversation chats back to back; broadcast: one conversation, all tabs "
        "(forces --conversations 1); idle: connection capacity, hold the streams (heartbeats only) and post "
        "nothing; ramp: conversations start chatting in --steps equal steps, and the report gives the highest "
        "delivered chunks/s at which p99 stayed under --p99-bound-ms with nothing lost",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="steady, broadcast: spread the conversations' first messages over this many seconds before "
        "--duration and time only what is published in the --duration after it, not the warm-up nor the drain "
        "(every answer starting at once measures their lockstep); all of it is still verified",
    )
    p.add_argument("--steps", type=int, default=5, help="ramp: number of load steps over --duration")
    p.add_argument("--p99-bound-ms", type=float, default=50.0, help="ramp: the p99 a step must stay under")
    p.add_argument("--workers", type=int, default=1, help="client processes holding the tabs")
    p.add_argument("--ramp-up", type=float, default=2.0, help="seconds over which connections are opened")
    p.add_argument("--think-time", type=float, default=0.0, help="pause between an answer and the next message")
    p.add_argument("--max-tokens", type=int, default=200, help="max_tokens of each message")
    p.add_argument("--json", metavar="PATH", help="write the full result (with the per-second timeline) as JSON")
    p.add_argument("--plot", metavar="PATH.svg", help="draw latency percentiles over time and the histogram (SVG)")
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="a local server process to sample memory of (before and after the tabs connect); repeatable",
    )
    p.add_argument("--allow-remote", action="store_true", help="allow targets that are not loopback addresses")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    args = p.parse_args(argv)
    if args.scenario == "broadcast":
        args.conversations = 1
    if args.clients < 1 or args.conversations < 1 or args.workers < 1 or args.duration <= 0:
        p.error("--clients, --conversations, --workers must be >= 1 and --duration > 0")
    if args.scenario == "ramp" and (not 1 <= args.steps <= 100 or args.duration / args.steps < 2):
        p.error("--steps must be 1..100, with at least 2 seconds of --duration per step")
    if args.warmup and (args.scenario in ("idle", "ramp") or not 2 <= args.warmup <= 600):
        p.error("--warmup is for steady and broadcast, 2..600 seconds")
    if args.answers is not None and args.answers < 1:
        p.error("--answers must be >= 1")
    if args.clients > 100_000 or args.duration > 3600 or args.workers > 64:
        p.error("bounded by design: at most 100000 clients, 3600 s and 64 workers")
    if args.plot and not args.plot.endswith(".svg"):
        p.error("--plot writes SVG: give a path ending in .svg")
    args.conversations = min(args.conversations, args.clients)
    return args


def format_summary(result: dict[str, Any]) -> str:
    lat, ttft, gap = result["latency_ms"], result["ttft_ms"], result["inter_chunk_gap_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [
        ("verdict", "OK: nothing lost, doubled or reordered" if result["ok"] else "FAILED"),
        ("chunks delivered", f"{result['chunks']} ({result['chunks_per_second']}/s)"),
        ("bytes delivered", f"{result['bytes']} ({result['bytes_per_second']}/s)"),
        (
            "publish→client ms",
            f"p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  max {ms(lat['max'])}",
        ),
        ("time to first token ms", f"p50 {ms(ttft['p50'])}  p99 {ms(ttft['p99'])}"),
        (
            "gap between chunks ms",
            f"p50 {ms(gap['p50'])}  p90 {ms(gap['p90'])}  p99 {ms(gap['p99'])}  max {ms(gap['max'])}",
        ),
        (
            "answers",
            f"posted {result['answers_posted']}, done {result['answers_done']}, "
            f"verified {result['answers_verified']} tab-answers, mismatched {result['answers_mismatched']}, "
            f"missing {result['answers_missing']}",
        ),
        ("lost / doubled / reordered", f"{result['lost']} / {result['duplicated']} / {result['reordered']}"),
        (
            "resets / reconnects / connect errors",
            f"{result['resets']} / {result['reconnects']} / {result['connect_errors']}",
        ),
        ("connections held", str(result.get("connections_held", "-"))),
        ("client CPU", f"{result['client_cpu_seconds']} s ({result['client_cpu_percent_of_one_core']}% of a core)"),
    ]
    memory = result.get("server_memory")
    if memory:
        rows.append(("server memory", f"{memory['kib_per_connection']} KiB per connection (RSS growth)"))
    for step in result.get("ramp", []):
        p99 = "-" if step["p99_ms"] is None else f"{step['p99_ms']:.1f} ms"
        rows.append(
            (
                f"ramp step {step['step']}",
                f"{step['conversations']} conversations  {step['chunks_per_second']} chunks/s  p99 ≤ {p99}  "
                f"anomalies {step['anomalies']}{'  ✓' if step['sustained'] else ''}",
            )
        )
    if "ramp" in result:
        best = result.get("ramp_best")
        rows.append(
            (
                "ramp: sustained",
                f"{best['chunks_per_second']} chunks/s with p99 ≤ {best['p99_ms']:.1f} ms"
                if best
                else f"no step kept p99 under {result['config']['p99_bound_ms']} ms",
            )
        )
    warmup = result["config"].get("warmup")
    if warmup:
        rows.insert(1, ("warm-up", f"{warmup} s, not timed: {result['chunks'] - result['chunks_timed']} chunks"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = Config(
        urls=tuple(u.rstrip("/") for u in args.url),
        clients=args.clients,
        conversations=args.conversations,
        duration=args.duration,
        scenario=args.scenario,
        workers=args.workers,
        ramp_up=args.ramp_up,
        think_time=args.think_time,
        max_tokens=args.max_tokens,
        allow_remote=args.allow_remote,
        answers=args.answers,
        steps=args.steps,
        warmup=args.warmup,
        p99_bound_ms=args.p99_bound_ms,
        server_pids=tuple(args.server_pid),
    )
    result = asyncio.run(run(config, live=not args.quiet and sys.stderr.isatty()))
    print(file=sys.stderr)
    print(format_summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        write_plot(result, args.plot)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
