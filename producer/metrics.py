"""The producer's Prometheus metrics, served on ``STREAMFAN_PRODUCER_METRICS_PORT`` (off when 0).

Time to first token runs from the job's entry id (the Redis clock when the message was posted) to
the first chunk's publish, so it includes queueing: what the user waits for.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from support.prometheus import CONTENT_TYPE, LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry

log = logging.getLogger(__name__)


class ProducerMetrics:
    def __init__(self) -> None:
        registry = self.registry = Registry()
        self.jobs = registry.add(
            Counter("streamfan_producer_jobs_total", "Jobs ended, by finish reason.", label_names=("reason",))
        )
        self.tokens = registry.add(
            Counter("streamfan_producer_tokens_total", "The model's tokens published (a delta carries one or more).")
        )
        self.orphans = registry.add(
            Counter(
                "streamfan_producer_orphans_total",
                "Answers cancelled because nobody followed them any more (STREAMFAN_ORPHANS=cancel).",
            )
        )
        self.takeovers = registry.add(
            Counter(
                "streamfan_producer_takeovers_total",
                "Half-written answers taken over from a producer that stopped (continued or failed).",
            )
        )
        self.resent = registry.add(
            Counter(
                "streamfan_producer_resent_chunks_total",
                "The model's tokens appended again because Redis lost them after acknowledging them (a failover).",
            )
        )
        self.time_to_first_token = registry.add(
            Histogram(
                "streamfan_producer_time_to_first_token_seconds",
                "From the message's post to its answer's first published chunk.",
                (*LATENCY_BUCKETS, 30.0, 60.0),
            )
        )
        self.tokens_per_second = registry.add(
            Histogram(
                "streamfan_producer_tokens_per_second",
                "Chunks per second of each finished answer, first chunk to last.",
                (1, 5, 10, 20, 40, 80, 160, 320, 640, 1280),
            )
        )

    def bind(self, in_flight: Callable[[], float]) -> None:
        self.registry.add(Gauge("streamfan_producer_jobs_in_flight", "Answers being generated now.", in_flight))


@asynccontextmanager
async def serve_metrics(metrics: ProducerMetrics, host: str, port: int) -> AsyncIterator[None]:
    """``GET /metrics`` and ``GET /healthz`` on ``host:port`` while the block runs (nothing if port is 0)."""
    if port == 0:
        yield
        return

    async def scrape(request: web.Request) -> web.StreamResponse:
        return web.Response(body=metrics.registry.render(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port)
        yield
    finally:
        await runner.cleanup()
