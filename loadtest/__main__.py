"""``python -m loadtest``: drive a streamfan deployment with chat traffic; prove nothing was lost."""

import argparse
import asyncio
import json
import sys
from typing import Any

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
        "--scenario",
        choices=SCENARIOS,
        default="steady",
        help="steady: every conversation chats back to back; broadcast: one conversation, all tabs "
        "(forces --conversations 1); idle: hold the streams, post nothing",
    )
    p.add_argument("--workers", type=int, default=1, help="client processes holding the tabs")
    p.add_argument("--ramp-up", type=float, default=2.0, help="seconds over which connections are opened")
    p.add_argument("--think-time", type=float, default=0.0, help="pause between an answer and the next message")
    p.add_argument("--max-tokens", type=int, default=200, help="max_tokens of each message")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON here")
    p.add_argument("--allow-remote", action="store_true", help="allow targets that are not loopback addresses")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    args = p.parse_args(argv)
    if args.scenario == "broadcast":
        args.conversations = 1
    if args.clients < 1 or args.conversations < 1 or args.workers < 1 or args.duration <= 0:
        p.error("--clients, --conversations, --workers must be >= 1 and --duration > 0")
    args.conversations = min(args.conversations, args.clients)
    return args


def format_summary(result: dict[str, Any]) -> str:
    lat, ttft = result["latency_ms"], result["ttft_ms"]

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
        ("client CPU", f"{result['client_cpu_seconds']} s ({result['client_cpu_percent_of_one_core']}% of a core)"),
    ]
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
    )
    result = asyncio.run(run(config, live=not args.quiet and sys.stderr.isatty()))
    print(file=sys.stderr)
    print(format_summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
