"""Typed keys for what the application holds: settings, the database pool, the LiveKit API client."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from livekit import api as lkapi

from api.join_batcher import JoinBatcher
from common.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
# asyncpg ships no type information: the pool is an asyncpg.Pool.
POOL: web.AppKey[Any] = web.AppKey("pool")
LIVEKIT = web.AppKey("livekit", lkapi.LiveKitAPI)
JOINS = web.AppKey("joins", JoinBatcher)
