"""The OpenAPI 3 document, served at `GET /api/openapi.json` (a test checks it matches the routes)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_SLUG = {
    "name": "slug",
    "in": "path",
    "required": True,
    "description": "The session's unguessable slug (also its LiveKit room name). Knowing it is the "
    "capability to read the session and join it, like a meeting link.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,128}$"},
}
_IDENTITY = {
    "name": "identity",
    "in": "path",
    "required": True,
    "description": "A participant identity, percent-encoded (any characters, '/' as %2F, '%' as %25).",
    "schema": {"type": "string"},
}
_ADMIN: list[dict[str, list[str]]] = [{"apiKey": []}]
_ADMIN_OR_USER: list[dict[str, list[str]]] = [{"apiKey": []}, {"userJwt": []}]
_OPTIONAL_USER: list[dict[str, list[str]]] = [{}, {"userJwt": []}, {"apiKey": []}]
_NONE: list[dict[str, list[str]]] = [{}]

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "CreateSession": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "languages": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]{2}$"},
                "maxItems": 10,
                "description": "Defaults to STT_LANGUAGES.",
            },
            "code_switching": {"type": "boolean", "description": "Defaults to STT_CODE_SWITCHING."},
            "custom_vocabulary": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 100},
                "maxItems": 200,
            },
            "allow_guests": {"type": "boolean", "default": True},
        },
    },
    "Session": {
        "type": "object",
        "properties": {
            "slug": {"type": "string"},
            "title": {"type": "string"},
            "languages": {"type": "array", "items": {"type": "string"}},
            "code_switching": {"type": "boolean"},
            "custom_vocabulary": {"type": "array", "items": {"type": "string"}},
            "allow_guests": {"type": "boolean"},
            "status": {"type": "string", "enum": ["active", "ended"]},
            "created_by": {"type": "string", "nullable": True, "description": "The creating user's id."},
            "created_at": _TIME,
            "ended_at": _NULLABLE_TIME,
            "join_path": {"type": "string", "example": "/s/<slug>"},
        },
    },
    "SessionPage": {
        "type": "object",
        "properties": {
            "sessions": {"type": "array", "items": _ref("Session")},
            "next_cursor": {"type": "string", "nullable": True},
        },
    },
    "TokenRequest": {
        "type": "object",
        "properties": {
            "display_name": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "description": "Required for guests (trimmed; no control characters). A user's defaults "
                "to the JWT's name.",
            }
        },
    },
    "Token": {
        "type": "object",
        "properties": {
            "token": {"type": "string", "description": "LiveKit access token"},
            "url": {"type": "string", "description": "LiveKit URL for the browser"},
            "identity": {"type": "string"},
            "display_name": {"type": "string"},
            "role": {"type": "string", "enum": ["host", "guest"]},
        },
    },
    "Participant": {
        "type": "object",
        "properties": {
            "identity": {"type": "string"},
            "display_name": {"type": "string", "nullable": True},
            "role": {"type": "string", "enum": ["host", "guest"]},
            "joined_at": _NULLABLE_TIME,
            "left_at": _NULLABLE_TIME,
        },
    },
    "ParticipantList": {
        "type": "object",
        "properties": {"participants": {"type": "array", "items": _ref("Participant")}},
    },
    "Segment": {
        "type": "object",
        "properties": {
            "segment_key": {"type": "string"},
            "speaker": {
                "type": "object",
                "properties": {"identity": {"type": "string"}, "name": {"type": "string", "nullable": True}},
            },
            "track_sid": {"type": "string"},
            "text": {"type": "string"},
            "language": {"type": "string", "nullable": True},
            "start": _TIME,
            "end": _TIME,
            "start_offset": {"type": "number", "description": "Seconds from the first segment's start"},
            "end_offset": {"type": "number"},
            "confidence": {"type": "number", "nullable": True},
            "words": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Transcript": {
        "type": "object",
        "properties": {
            "session": {
                "type": "object",
                "properties": {
                    "slug": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "string"},
                },
            },
            "segments": {"type": "array", "items": _ref("Segment")},
        },
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
}

_HTML = {"description": "The join page (HTML)", "content": {"text/html": {"schema": {"type": "string"}}}}

PATHS: dict[str, Any] = {
    "/api/sessions": {
        "post": {
            "summary": "Create a session and its LiveKit room, with the transcriber dispatched to it",
            "description": "Admin API key, a user JWT, or anyone when PUBLIC_SESSION_CREATION is on.",
            "security": _ADMIN_OR_USER,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("CreateSession")}},
            },
            "responses": {
                "201": _json(_ref("Session"), "Created"),
                "400": _error("Malformed JSON"),
                "401": _error("No or bad credentials"),
                "413": _error("Body too large"),
                "422": _error("Invalid fields"),
                "502": _error("LiveKit failed; nothing was created"),
            },
        },
        "get": {
            "summary": "List sessions, newest first (keyset pagination)",
            "security": _ADMIN,
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json(_ref("SessionPage"), "A page"),
                "400": _error("Bad limit or cursor"),
                "401": _error("No or bad credentials"),
                "403": _error("Not the admin"),
            },
        },
    },
    "/api/sessions/{slug}": {
        "parameters": [_SLUG],
        "get": {
            "summary": "One session (anyone with the slug)",
            "security": _NONE,
            "responses": {"200": _json(_ref("Session"), "The session"), "404": _error("Unknown slug")},
        },
        "delete": {
            "summary": "Delete the LiveKit room (everyone is disconnected), then every row of the session",
            "security": _ADMIN_OR_USER,
            "description": "Admin API key, or the user JWT of the session's creator.",
            "responses": {
                "204": {"description": "Deleted"},
                "401": _error("No or bad credentials"),
                "403": _error("Not the admin or the creator"),
                "404": _error("Unknown slug (also: already deleted)"),
                "502": _error("LiveKit failed; nothing was deleted"),
            },
        },
    },
    "/api/sessions/{slug}/token": {
        "parameters": [_SLUG],
        "post": {
            "summary": "A LiveKit join token: host for a user JWT, otherwise a guest",
            "security": _OPTIONAL_USER,
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": _ref("TokenRequest")}},
            },
            "responses": {
                "200": _json(_ref("Token"), "The token; the participant row exists from now on"),
                "400": _error("Malformed JSON"),
                "401": _error("Bad credentials"),
                "403": _error("The session admits no guests"),
                "404": _error("Unknown slug"),
                "410": _error("The session has ended"),
                "422": _error("Invalid or missing display_name"),
            },
        },
    },
    "/api/sessions/{slug}/participants": {
        "parameters": [_SLUG],
        "get": {
            "summary": "Participants of the session (anyone with the slug)",
            "security": _NONE,
            "responses": {
                "200": _json(_ref("ParticipantList"), "Participants"),
                "404": _error("Unknown slug"),
            },
        },
    },
    "/api/sessions/{slug}/participants/{identity}": {
        "parameters": [_SLUG, _IDENTITY],
        "get": {
            "summary": "One participant (anyone with the slug)",
            "security": _NONE,
            "responses": {
                "200": _json(_ref("Participant"), "The participant"),
                "400": _error("Invalid identity"),
                "404": _error("Unknown slug or identity"),
            },
        },
    },
    "/api/sessions/{slug}/transcript": {
        "parameters": [_SLUG],
        "get": {
            "summary": "The transcript, all speakers in spoken order (anyone with the slug)",
            "security": _NONE,
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["json", "txt", "srt", "vtt"], "default": "json"},
                }
            ],
            "responses": {
                "200": {
                    "description": "The transcript",
                    "content": {
                        "application/json": {"schema": _ref("Transcript")},
                        "text/plain": {"schema": {"type": "string"}},
                        "application/x-subrip": {"schema": {"type": "string"}},
                        "text/vtt": {"schema": {"type": "string"}},
                    },
                },
                "400": _error("Unknown format"),
                "404": _error("Unknown slug"),
            },
        },
    },
    "/api/livekit/webhook": {
        "post": {
            "summary": "LiveKit webhooks (participant_joined/left, room_finished)",
            "description": "Signed by the LiveKit server (Authorization: JWT with the body's sha256).",
            "security": _NONE,
            "requestBody": {
                "required": True,
                "content": {"application/webhook+json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {"description": "Accepted (also for rooms that are no session, which are ignored)"},
                "401": _error("Unsigned, forged or tampered"),
            },
        },
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "security": _NONE,
            "responses": {"200": {"description": "OpenAPI 3 document"}},
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "security": _NONE,
            "responses": {"200": _json(_ref("Status"), "Up")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: the database answers",
            "security": _NONE,
            "responses": {"200": _json(_ref("Status"), "Ready"), "503": _json(_ref("Status"), "Not ready")},
        }
    },
    "/": {"get": {"summary": "The join page", "security": _NONE, "responses": {"200": _HTML}}},
    "/s/{slug}": {
        "parameters": [_SLUG],
        "get": {"summary": "The join page for one session", "security": _NONE, "responses": {"200": _HTML}},
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "roomscribe",
        "version": "0.1.0",
        "description": "Live transcription for LiveKit rooms. Errors are "
        '`{"error": {"code": "...", "message": "..."}}`. The session slug is a capability: anyone '
        "who has it can read the session, its participants and transcript, and join as a guest "
        "(if the session allows guests). Static files are also served under /static/ and /vendor/.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "ROOMSCRIBE_API_KEY: server-to-server admin",
            },
            "userJwt": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "HS256 with USER_JWT_SECRET; claims sub (user id), name, exp",
            },
        },
    },
}


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi)
