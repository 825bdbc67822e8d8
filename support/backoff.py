"""Retry delays with jitter, for every reconnect and retry loop of every process.

After a Redis restart every node and producer retries at once; with fixed delays they would keep
retrying in lockstep. Each delay is drawn from [d/2, d] ("equal jitter": never zero, so no loop
spins), where d doubles per failure up to ``cap``.
"""

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    first: float = 0.05
    """Seconds: the upper bound of the first delay."""
    cap: float = 2.0
    """Seconds: the largest upper bound."""
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        bound = min(self.cap, self.first * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return random.uniform(bound / 2, bound)

    def reset(self) -> None:
        """The call succeeded: the next failure starts from ``first`` again."""
        self.failures = 0
