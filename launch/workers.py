"""``--workers N``: N node processes on one port (``SO_REUSEPORT``), each a full node of its own.

Each worker holds its own pub/sub connection and serves ``/metrics`` for itself. The supervisor
turns SIGTERM/SIGINT into one SIGTERM per worker, restarts a worker that dies on its own (with
backoff), and exits once all have stopped. Workers die with their supervisor, however it ends
(the kernel sends each SIGTERM when it goes: ``PR_SET_PDEATHSIG``), so none keeps the port.
"""

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from support.backoff import Backoff

log = logging.getLogger("launch.workers")

_RESTART_BACKOFF_MAX = 10.0
_STOP_TIMEOUT = 15.0


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in the child before exec: the kernel SIGTERMs it when the supervisor dies (Linux)."""

    def arrange() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the call: nobody would tell us
            os._exit(0)

    return arrange


def _start(args: list[str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(args, process_group=0, preexec_fn=_die_with_parent(os.getpid()))


def supervise(args: list[str], count: int) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Each worker in its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
    # then stops the workers once, with SIGTERM (a second signal mid-shutdown would cut it short).
    workers = [_start(args) for _ in range(count)]
    backoff = [Backoff(first=0.5, cap=_RESTART_BACKOFF_MAX) for _ in range(count)]
    log.info("started %d workers: %s", count, ", ".join(str(w.pid) for w in workers))
    while not stopping:
        time.sleep(0.2)
        for i, worker in enumerate(workers):
            if worker.poll() is not None and not stopping:
                delay = backoff[i].next_delay()
                log.warning("worker %d exited with %s; restarting in %.1fs", worker.pid, worker.returncode, delay)
                time.sleep(delay)
                workers[i] = _start(args)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.wait()
    return 0
