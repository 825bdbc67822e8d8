"""``--workers N``: N node processes on one port (``SO_REUSEPORT``), each a full node of its own.

Each worker holds its own pub/sub connection and serves ``/metrics`` for itself. The supervisor
turns SIGTERM/SIGINT into one SIGTERM per worker, restarts a worker that dies on its own (with
backoff), and exits once all have stopped.
"""

import logging
import signal
import subprocess
import time
from types import FrameType

from wire.backoff import Backoff

log = logging.getLogger("launch.workers")

_RESTART_BACKOFF_MAX = 10.0
_STOP_TIMEOUT = 15.0


def supervise(args: list[str], count: int) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Each worker in its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
    # then stops the workers once, with SIGTERM (a second signal mid-shutdown would cut it short).
    workers = [subprocess.Popen(args, process_group=0) for _ in range(count)]
    backoff = [Backoff(first=0.5, cap=_RESTART_BACKOFF_MAX) for _ in range(count)]
    log.info("started %d workers: %s", count, ", ".join(str(w.pid) for w in workers))
    while not stopping:
        time.sleep(0.2)
        for i, worker in enumerate(workers):
            if worker.poll() is not None and not stopping:
                delay = backoff[i].next_delay()
                log.warning("worker %d exited with %s; restarting in %.1fs", worker.pid, worker.returncode, delay)
                time.sleep(delay)
                workers[i] = subprocess.Popen(args, process_group=0)
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
