"""The garbage collector's thresholds for long-running processes that hold many live objects.

A node holding 10,000 streams holds about two million objects. With CPython's default thresholds
(700, 10, 10) a young collection runs every 700 allocations, and opening a stream allocates a few
hundred, so the collector took a third of a node's CPU; at (50,000, 50, 10) it costs nothing
measurable (docs/measurements.md, gc). Cyclic garbage waits a little longer to be freed (at most
some tens of thousands of young objects), which is the trade.
"""

import gc
import os
from collections.abc import Mapping

from support.env import env_int

DEFAULT_THRESHOLD = 50_000


def tune_gc(env: Mapping[str, str] | None = None) -> None:
    """Set the thresholds (``STREAMFAN_GC_THRESHOLD`` for the youngest generation; 0 keeps
    Python's own)."""
    env = os.environ if env is None else env
    young = env_int(env, "STREAMFAN_GC_THRESHOLD", DEFAULT_THRESHOLD, low=0, high=10_000_000)
    if young:
        gc.set_threshold(young, 50, 10)
