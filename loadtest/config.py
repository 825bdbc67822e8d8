"""What a load-test run is asked to do."""

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

SCENARIOS = ("steady", "broadcast", "idle", "ramp")


@dataclass(frozen=True)
class Config:
    urls: tuple[str, ...]
    clients: int
    conversations: int
    duration: float
    scenario: str = "steady"
    workers: int = 1
    ramp_up: float = 2.0
    think_time: float = 0.0
    max_tokens: int = 200
    prompt: str = "Explain how streaming answers reach many browser tabs"
    drain_timeout: float = 30.0
    allow_remote: bool = False
    answers: int | None = None
    """Stop posting after this many answers in all (and at ``duration`` in any case)."""
    warmup: float = 0.0
    """steady and broadcast: the conversations' first messages go out spread over this many seconds,
    and only what is published after it, for ``duration``, is timed (latency, gaps, chunks/s); the
    drain after is not either; everything is still verified. Without it every answer starts at once
    and the run measures their lockstep."""
    steps: int = 5
    """ramp: conversations start chatting in this many equal steps over the duration."""
    p99_bound_ms: float = 50.0
    """ramp: the p99 a step must stay under to count as sustained."""
    server_pids: tuple[int, ...] = ()
    """Local server processes whose memory is sampled before and after the tabs connect."""


def check_target(url: str, allow_remote: bool) -> None:
    host = urlsplit(url).hostname or ""
    if allow_remote:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"loadtest: {url} is not a loopback address; pass --allow-remote to target it")
