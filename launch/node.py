"""``python -m server --host H --port P [--workers N]``: run a relay node (embedded broker without REDIS_URL)."""

import argparse
import asyncio
import errno
import logging
import os
import resource
import sys

import uvloop
from aiohttp import web
from redis.exceptions import RedisError

from launch.gc_tuning import tune_gc
from launch.redis_client import connect_from_env
from support.env import SettingsError


def _raise_open_files_limit() -> None:
    """Thousands of SSE clients need thousands of descriptors: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port with SO_REUSEPORT, each with its own Redis subscription; "
        "0 means one per CPU (default: 1; needs REDIS_URL when above 1)",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from server.errors import QuietBadRequests

    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())

    from producer.settings import ProducerSettings
    from server.app import create_app
    from server.settings import Settings

    try:
        settings = Settings.from_env()
        producer_settings = ProducerSettings.from_env() if settings.embedded else None
        tune_gc()
    except SettingsError as exc:
        sys.exit(f"server: {exc}")
    _raise_open_files_limit()
    workers = args.workers or os.cpu_count() or 1
    if workers > 1:
        if settings.embedded:
            sys.exit("server: --workers above 1 needs REDIS_URL (each embedded broker would be its own world)")
        from launch.workers import supervise

        child = [sys.executable, "-m", "server", "--host", args.host, "--port", str(args.port)]
        child += ["--log-level", args.log_level, "--reuse-port"]
        sys.exit(supervise(child, workers))

    if settings.redis_url is None:
        from launch.embedded import create_embedded_app
        from launch.embedded_broker import embedded_broker_from_env

        assert producer_settings is not None
        try:
            broker = embedded_broker_from_env(os.environ)
        except SettingsError as exc:
            sys.exit(f"server: {exc}")
        app = create_embedded_app(settings, producer_settings, broker)
        logging.getLogger("server").info(
            "no REDIS_URL: running the embedded broker (%s) and producer in this process", broker.kind
        )
    else:
        # A blocking pool: a burst of replays waits for a connection instead of failing. Whether
        # REDIS_URL is a cluster is asked here, before the event loop runs.
        try:
            redis = connect_from_env(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout_seconds=settings.redis_timeout_seconds,
            )
        except (RedisError, SettingsError) as exc:
            sys.exit(f"server: {exc}")
        app = create_app(settings, redis)
        app.on_cleanup.append(lambda _app: redis.aclose())

    loop = uvloop.new_event_loop()
    try:
        _serve(app, args, loop, settings.shutdown_seconds)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            sys.exit(f"server: port {args.port} on {args.host} is in use; choose another with --port N")
        raise


def _serve(app: web.Application, args: argparse.Namespace, loop: asyncio.AbstractEventLoop, shutdown: float) -> None:
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        loop=loop,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown,
        reuse_port=args.reuse_port or None,
        # aiohttp listens with a backlog of 128: thousands of tabs reconnecting at once (a node
        # restart) would overflow it and wait for SYN retries. The kernel caps it (somaxconn).
        backlog=4096,
        print=lambda text: logging.getLogger("server").info("%s", text.strip()),
    )


if __name__ == "__main__":
    main()
