"""`GET /api/sessions/{slug}/transcript?format=json|txt|srt|vtt`: every speaker, in spoken order."""

from __future__ import annotations

from aiohttp import web

from api import exports
from api.errors import ApiError
from api.sessions import dumps, load_session
from api.state import POOL
from db import queries

FORMATS = ("json", "txt", "srt", "vtt")
_CONTENT_TYPES = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


async def get_transcript(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_format", f"format must be one of {', '.join(FORMATS)}")
    session = await load_session(request)
    segments = await queries.list_transcript(request.app[POOL], session.id)
    if fmt == "json":
        return web.json_response(exports.to_json(session, segments), dumps=dumps)
    if fmt == "txt":
        text = exports.to_txt(session, segments)
    elif fmt == "srt":
        text = exports.to_srt(segments)
    else:
        text = exports.to_vtt(segments)
    return web.Response(
        text=text,
        content_type=_CONTENT_TYPES[fmt],
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="transcript-{session.slug}.{fmt}"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{slug}/transcript", get_transcript)
