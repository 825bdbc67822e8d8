"""Operations endpoints: ``/healthz`` (the process serves), ``/readyz`` (it can relay), ``/metrics``."""

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from server.context import HUB, METRICS, SETTINGS, STORE
from support.prometheus import CONTENT_TYPE


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


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus scrape target; the balancer keeps it private (see deploy/nginx)."""
    return web.Response(body=request.app[METRICS].registry.render(), headers={"Content-Type": CONTENT_TYPE})
