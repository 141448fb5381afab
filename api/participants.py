"""Participants of a session: `GET /api/sessions/{slug}/participants[/{identity}]`.

Any identity round-trips: clients percent-encode it in the path (`/` as %2F, `%` as %25, spaces, ':',
unicode), aiohttp matches on the still-encoded path and decodes the value once.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.errors import not_found
from api.sessions import dumps, iso, load_session
from api.state import POOL
from api.validation import identity_of
from db import queries


def participant_json(participant: queries.ParticipantRow) -> dict[str, Any]:
    return {
        "identity": participant.identity,
        "display_name": participant.display_name,
        "role": participant.role,
        "joined_at": iso(participant.joined_at),
        "left_at": iso(participant.left_at),
    }


async def list_participants(request: web.Request) -> web.Response:
    session = await load_session(request)
    rows = await queries.list_participants(request.app[POOL], session.id)
    return web.json_response({"participants": [participant_json(p) for p in rows]}, dumps=dumps)


async def get_participant(request: web.Request) -> web.Response:
    identity = identity_of(request)
    session = await load_session(request)
    row = await queries.get_participant(request.app[POOL], session_id=session.id, identity=identity)
    if row is None:
        raise not_found("participant")
    return web.json_response(participant_json(row), dumps=dumps)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{slug}/participants", list_participants)
    app.router.add_get("/api/sessions/{slug}/participants/{identity:.+}", get_participant)
