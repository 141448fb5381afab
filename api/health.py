"""`GET /healthz` (the process answers) and `GET /readyz` (the database answers too)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from api.state import POOL
from db import queries

logger = logging.getLogger("roomscribe.api.health")

READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await queries.ping(request.app[POOL])
    except Exception as error:  # any failure to answer means not ready: 503, never a 500
        logger.warning("not ready: database", extra={"error": type(error).__name__})
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ready", "database": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
