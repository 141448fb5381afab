"""JSON errors: `{"error": {"code": "...", "message": "..."}}` for every failure, never an HTML page.

Handlers raise `ApiError` (or aiohttp's HTTPException); the middleware turns both into the JSON shape and
any unexpected exception into a logged 500 with the same shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

logger = logging.getLogger("roomscribe.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    502: "livekit_unavailable",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_found(what: str = "session") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# The database did not answer (down, restarting, unreachable): a 503 the client may retry, not a bug.
DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return json_error(error.status, error.code, error.message, error.headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {k: v for k, v in error.headers.items() if k.lower() in {"allow", "www-authenticate"}}
        message = (
            error.reason if error.text is None or error.text.startswith(f"{error.status}:") else error.text
        )
        return json_error(error.status, _CODES.get(error.status, "error"), message, headers)
    except DATABASE_UNAVAILABLE as error:
        logger.error(
            "database unavailable",
            extra={"method": request.method, "path": request.path, "error": type(error).__name__},
        )
        return json_error(503, "database_unavailable", "the database is not answering; retry shortly")
    except Exception:
        logger.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return json_error(500, "internal_error", "internal error")
