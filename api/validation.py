"""Reading and checking request input: JSON bodies (bounded size), fields, slugs, identities."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from aiohttp import web

from api.errors import ApiError
from api.state import SETTINGS

SLUG_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
LANGUAGE_RE = re.compile(r"^[a-z]{2}$")
MAX_IDENTITY_BYTES = 256


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}")


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object: 413 over max_body_bytes, 400 when it is not JSON or not an object."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"request body is larger than {limit} bytes")
    try:
        raw = await request.read()  # the application's client_max_size is max_body_bytes
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"request body is larger than {limit} bytes") from None
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return value


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in text)


def text_field(
    body: dict[str, Any], field: str, *, max_length: int, required: bool, strip: bool = False
) -> str | None:
    """A string of 1..max_length characters (after trimming when `strip`), with no control characters.

    Stored unchanged otherwise (unicode as given)."""
    if field not in body or body[field] is None:
        if required:
            raise invalid(field, "is required")
        return None
    value = body[field]
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if strip:
        value = value.strip()
    if not value.strip():
        raise invalid(field, "must not be empty")
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    if has_control_characters(value):
        raise invalid(field, "must not contain control characters")
    return value


def bool_field(body: dict[str, Any], field: str, default: bool) -> bool:
    if field not in body or body[field] is None:
        return default
    value = body[field]
    if not isinstance(value, bool):
        raise invalid(field, "must be a boolean")
    return value


def string_list_field(
    body: dict[str, Any],
    field: str,
    default: list[str],
    *,
    max_items: int,
    max_length: int,
    pattern: re.Pattern[str] | None = None,
    pattern_text: str = "",
) -> list[str]:
    if field not in body or body[field] is None:
        return list(default)
    value = body[field]
    if not isinstance(value, list):
        raise invalid(field, "must be an array of strings")
    if len(value) > max_items:
        raise invalid(field, f"must have at most {max_items} items")
    result: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise invalid(field, "must be an array of strings")
        if not item.strip() or len(item) > max_length or has_control_characters(item):
            raise invalid(field, f"items must be 1-{max_length} characters, no control characters")
        if pattern is not None and not pattern.match(item):
            raise invalid(field, f"items must be {pattern_text}")
        if item not in result:
            result.append(item)
    return result


def slug_of(request: web.Request) -> str:
    """The slug in the path; one that cannot exist is a 404 like an unknown one."""
    slug = request.match_info["slug"]
    if not SLUG_RE.match(slug):
        raise ApiError(404, "not_found", "no such session")
    return slug


def identity_of(request: web.Request) -> str:
    """The participant identity in the path (percent-decoded by aiohttp; any characters LiveKit allows)."""
    identity = request.match_info["identity"]
    if not identity or len(identity.encode("utf-8")) > MAX_IDENTITY_BYTES or "\x00" in identity:
        raise ApiError(400, "invalid_identity", f"identity must be 1-{MAX_IDENTITY_BYTES} bytes, no NUL")
    return identity
