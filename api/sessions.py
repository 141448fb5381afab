"""Sessions: create (with its LiveKit room and the transcriber dispatched to it), list, get, delete."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from datetime import datetime
from typing import Any

from aiohttp import web
from livekit import api as lkapi

from api.auth import forbidden, principal, require_admin, unauthorized
from api.errors import ApiError, not_found
from api.state import LIVEKIT, POOL, SETTINGS
from api.validation import (
    LANGUAGE_RE,
    bool_field,
    read_json_object,
    slug_of,
    string_list_field,
    text_field,
)
from db import queries

logger = logging.getLogger("roomscribe.api.sessions")

# How long LiveKit keeps a created room open when nobody has joined yet: a session link made ahead of a
# meeting must still work. (When everyone has left, LiveKit's departure timeout closes the room, its
# room_finished webhook ends the session.)
ROOM_EMPTY_TIMEOUT_S = 24 * 3600
DEFAULT_PAGE = 20
MAX_PAGE = 100


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def session_json(session: queries.SessionRow) -> dict[str, Any]:
    return {
        "slug": session.slug,
        "title": session.title,
        "languages": session.languages,
        "code_switching": session.code_switching,
        "custom_vocabulary": session.custom_vocabulary,
        "allow_guests": session.allow_guests,
        "status": session.status,
        "created_by": session.created_by,
        "created_at": iso(session.created_at),
        "ended_at": iso(session.ended_at),
        "join_path": f"/s/{session.slug}",
    }


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def dispatch_metadata(session: queries.SessionRow) -> str:
    """What the agent is told about the session when it is dispatched to its room."""
    return dumps(
        {
            "languages": list(session.languages),
            "code_switching": session.code_switching,
            "custom_vocabulary": list(session.custom_vocabulary),
        }
    )


async def load_session(request: web.Request) -> queries.SessionRow:
    """The session named by the path's slug, or a 404."""
    session = await queries.get_session_by_slug(request.app[POOL], slug_of(request))
    if session is None:
        raise not_found()
    return session


def new_slug() -> str:
    # 128 random bits, URL-safe (22 characters); also the LiveKit room name.
    return secrets.token_urlsafe(16)


async def create_session(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    caller = principal(request)
    if caller.kind == "anonymous" and not settings.public_session_creation:
        raise unauthorized("creating a session needs the API key or a user token")
    body = await read_json_object(request)
    title = text_field(body, "title", max_length=200, required=True)
    assert title is not None
    languages = string_list_field(
        body,
        "languages",
        settings.stt_languages,
        max_items=10,
        max_length=2,
        pattern=LANGUAGE_RE,
        pattern_text="2-letter lowercase language codes",
    )
    code_switching = bool_field(body, "code_switching", settings.stt_code_switching)
    vocabulary = string_list_field(
        body, "custom_vocabulary", settings.stt_custom_vocabulary, max_items=200, max_length=100
    )
    allow_guests = bool_field(body, "allow_guests", True)

    pool = request.app[POOL]
    session = await queries.create_session(
        pool,
        slug=new_slug(),
        title=title,
        languages=languages,
        code_switching=code_switching,
        custom_vocabulary=vocabulary,
        allow_guests=allow_guests,
        created_by=caller.user_id,
    )
    metadata = dispatch_metadata(session)
    try:
        await request.app[LIVEKIT].room.create_room(
            lkapi.CreateRoomRequest(
                name=session.slug,
                empty_timeout=ROOM_EMPTY_TIMEOUT_S,
                agents=[lkapi.RoomAgentDispatch(agent_name=settings.agent_name, metadata=metadata)],
            )
        )
    except Exception as error:  # the server's answer or the transport: either way no room, no row
        await queries.delete_session(pool, session.slug)
        logger.error(
            "livekit room creation failed", extra={"room": session.slug, "error": f"{type(error).__name__}"}
        )
        raise ApiError(502, "livekit_unavailable", "could not create the LiveKit room") from None
    logger.info(
        "session created",
        extra={"room": session.slug, "created_by": session.created_by, "agent_name": settings.agent_name},
    )
    return web.json_response(session_json(session), status=201, dumps=dumps)


def _encode_cursor(session: queries.SessionRow) -> str:
    raw = json.dumps([session.created_at.isoformat(), session.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, session_id = json.loads(raw)
        parsed = datetime.fromisoformat(created_at)
        if not isinstance(session_id, int) or isinstance(session_id, bool) or parsed.tzinfo is None:
            raise ValueError("bad cursor")
        return parsed, session_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from None


async def list_sessions(request: web.Request) -> web.Response:
    require_admin(request)
    limit_text = request.query.get("limit", str(DEFAULT_PAGE))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_PAGE}")
    limit = int(limit_text)
    cursor = request.query.get("cursor")
    before = _decode_cursor(cursor) if cursor else None
    rows = await queries.list_sessions(request.app[POOL], limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return web.json_response(
        {"sessions": [session_json(s) for s in page], "next_cursor": next_cursor}, dumps=dumps
    )


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(session_json(await load_session(request)), dumps=dumps)


async def delete_session(request: web.Request) -> web.Response:
    caller = principal(request)
    if caller.kind == "anonymous":
        raise unauthorized("deleting a session needs the API key or the creator's user token")
    session = await load_session(request)
    if not (caller.is_admin or (caller.is_user and caller.user_id == session.created_by)):
        raise forbidden("only the API key or the user who created the session can delete it")
    try:
        await request.app[LIVEKIT].room.delete_room(lkapi.DeleteRoomRequest(room=session.slug))
    except lkapi.TwirpError as error:
        if error.code != lkapi.TwirpErrorCode.NOT_FOUND and error.status != 404:
            logger.error("livekit room deletion failed", extra={"room": session.slug, "error": str(error)})
            raise ApiError(502, "livekit_unavailable", "could not delete the LiveKit room") from None
    except Exception as error:
        logger.error(
            "livekit room deletion failed", extra={"room": session.slug, "error": type(error).__name__}
        )
        raise ApiError(502, "livekit_unavailable", "could not delete the LiveKit room") from None
    # One statement: the session row and, by cascade, its participants and transcript segments.
    if not await queries.delete_session(request.app[POOL], session.slug):
        raise not_found()  # a concurrent delete won
    logger.info("session deleted", extra={"room": session.slug, "by": caller.kind})
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/sessions", create_session)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{slug}", get_session)
    app.router.add_delete("/api/sessions/{slug}", delete_session)
