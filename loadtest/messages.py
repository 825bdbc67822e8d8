"""What the load tester's processes tell each other: one typed definition per message.

Tabs live in worker processes; the driver (the main process) gives each worker its tabs and reads
back progress, first-chunk/done sightings and a final result. They cross the process boundary by
pickle, so they are plain frozen dataclasses.
"""

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TabAssignment:
    """One tab to hold: its conversation, token and node, and whether it reports the answers."""

    conversation_id: str
    token: str
    url: str
    reporter: bool


@dataclass(frozen=True, slots=True)
class Progress:
    """Sent by each worker every second: cumulative counters and the last interval's latencies."""

    worker: int
    connected: int
    chunks: int
    anomalies: int
    hist: list[int]
    """A ``LogHistogram``'s counts for the interval (mergeable)."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """A reporting tab saw an answer's first chunk or its end (wall-clock time ``at``)."""

    kind: Literal["first", "done"]
    response_id: str
    at: float


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """Sent once by each worker when told to stop."""

    tabs: list[dict[str, Any]]
    """``Tab.summary()`` of every tab."""
    latency: dict[str, Any]
    gaps: dict[str, Any]
    cpu_seconds: float
