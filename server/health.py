"""Liveness and readiness: ``/healthz`` (the process serves) and ``/readyz`` (it can relay)."""

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from server.context import HUB, SETTINGS, STORE


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """503 unless Redis answers and the hub's pub/sub connection is up."""
    checks = {"redis": False, "subscriber": request.app[HUB].ready}
    try:
        async with asyncio.timeout(request.app[SETTINGS].redis_timeout_seconds):
            await request.app[STORE].ping()
        checks["redis"] = True
    except (RedisError, OSError, TimeoutError):
        pass
    ready = all(checks.values())
    return web.json_response({"status": "ready" if ready else "unavailable", **checks}, status=200 if ready else 503)
