"""The embedded default: with no ``REDIS_URL``, one process holds an in-memory Redis and a producer.

The in-memory broker is fakeredis, which runs the same commands and the same Lua scripts as Redis,
so the node and the producer use exactly the code paths they use against a real Redis.
"""

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from producer.generator import close_generator, load_generator
from producer.settings import ProducerSettings
from producer.worker import Worker
from server.app import create_app
from server.context import METRICS
from server.settings import Settings


def create_embedded_app(settings: Settings, producer_settings: ProducerSettings) -> web.Application:
    broker = FakeServer()
    app = create_app(settings, FakeRedis(server=broker))

    async def run_producer(app: web.Application) -> AsyncIterator[None]:
        redis = FakeRedis(server=broker)
        generator = load_generator(producer_settings.generator, producer_settings.pacing)
        worker = Worker(redis, producer_settings, generator)
        app[METRICS].registry.include(worker.metrics.registry)  # one process, one /metrics
        task = asyncio.create_task(worker.run(), name="embedded-producer")
        yield
        worker.shutdown()
        try:
            # A first look should stop promptly on Ctrl-C: answers get at most two seconds here.
            await asyncio.wait_for(asyncio.shield(task), min(producer_settings.drain_seconds, 2.0))
        except TimeoutError:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await close_generator(generator)
        await redis.aclose()

    app.cleanup_ctx.append(run_producer)
    return app
