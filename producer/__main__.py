"""``python -m producer``: run one producer process against ``REDIS_URL`` (an entry point: composition)."""

import asyncio
import logging
import signal
import sys

import uvloop
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from launch.gc_tuning import tune_gc
from launch.redis_client import connect_from_env
from producer.generator import close_generator, load_generator
from producer.metrics import serve_metrics
from producer.settings import ProducerSettings
from producer.worker import Worker
from support.env import SettingsError

log = logging.getLogger("producer")


async def _main(settings: ProducerSettings, redis: "Redis | RedisCluster") -> None:
    generator = load_generator(settings.generator, settings.pacing)
    worker = Worker(redis, settings, generator)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.shutdown)
    log.info("producer %s consuming jobs (concurrency %d)", settings.name, settings.concurrency)
    try:
        async with serve_metrics(worker.metrics, settings.metrics_host, settings.metrics_port):
            await worker.run()
    finally:
        await close_generator(generator)
        await redis.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ProducerSettings.from_env()
        tune_gc()
    except SettingsError as exc:
        sys.exit(f"producer: {exc}")
    if settings.redis_url is None:
        sys.exit("producer: REDIS_URL must be set (without Redis, `python -m server` runs its own producer)")
    try:  # standalone or cluster: asked before the event loop runs
        redis = connect_from_env(settings.redis_url, max_connections=settings.redis_max_connections, timeout_seconds=10)
    except (RedisError, SettingsError) as exc:
        sys.exit(f"producer: {exc}")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(settings, redis))


if __name__ == "__main__":
    main()
