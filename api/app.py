"""The aiohttp application: routes, the JSON error middleware, and the resources it holds.

At start it applies the database migrations, opens one asyncpg pool and one LiveKitAPI client; at cleanup
it closes both.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from livekit import api as lkapi

from api import health, openapi, participants, sessions, static, tokens, transcripts, webhooks
from api.errors import error_middleware
from api.join_batcher import JoinBatcher
from api.state import JOINS, LIVEKIT, POOL, SETTINGS
from common.settings import Settings
from db.migrate import migrate

logger = logging.getLogger("roomscribe.api")


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset hook. asyncpg still rolls back any open transaction on release; the API sets no session
    state (no SET, LISTEN, advisory locks or cursors), so the default RESET ALL / UNLISTEN round trip
    after every query is skipped."""


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    applied = await migrate(settings.database_url)
    logger.info("database migrated", extra={"applied": applied})
    pool = await asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=10, command_timeout=15, reset=_keep_session
    )
    livekit = lkapi.LiveKitAPI(
        settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret.get_secret_value()
    )
    joins = JoinBatcher(pool)
    app[POOL] = pool
    app[LIVEKIT] = livekit
    app[JOINS] = joins
    logger.info("api started", extra={"livekit_url": settings.livekit_url, "agent_name": settings.agent_name})
    try:
        yield
    finally:
        await joins.aclose()
        await livekit.aclose()
        await pool.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    for module in (sessions, tokens, participants, transcripts, webhooks, health, openapi, static):
        module.add_routes(app)
    return app
