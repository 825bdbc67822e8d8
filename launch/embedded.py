"""The embedded default: with no ``REDIS_URL``, one process holds a broker and a producer.

The broker (``launch.embedded_broker``) runs the same commands and Lua scripts as Redis, so the node
and the producer use exactly the code paths they use against a real Redis.
"""

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from launch.embedded_broker import EmbeddedBroker
from producer.generator import close_generator, load_generator
from producer.settings import ProducerSettings
from producer.worker import Worker
from server.app import create_app
from server.context import METRICS
from server.settings import Settings


def create_embedded_app(
    settings: Settings, producer_settings: ProducerSettings, broker: EmbeddedBroker
) -> web.Application:
    node_redis = broker.client()
    app = create_app(settings, node_redis)

    async def run_broker(app: web.Application) -> AsyncIterator[None]:
        async with broker.running():
            yield
            await node_redis.aclose()

    async def run_producer(app: web.Application) -> AsyncIterator[None]:
        redis = broker.client()
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

    # The broker starts before anything of the node's own reaches it, and stops after all of it.
    app.cleanup_ctx.insert(0, run_broker)
    app.cleanup_ctx.append(run_producer)
    return app
