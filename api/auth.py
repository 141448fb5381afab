"""Who is calling: the server-to-server admin, a signed-in user vouched for by the host app, or anyone.

- `Authorization: Bearer <ROOMSCRIBE_API_KEY>`: admin (compared in constant time).
- `Authorization: Bearer <JWT>`: a user; HS256 signed with USER_JWT_SECRET, claims `sub` (user id),
  `name` and `exp` required.
- No Authorization header: anonymous. A header that is present but not valid is a 401, never anonymous.

The session slug is a capability (like a meeting link): reading a session, its participants and
transcript, and joining it as a guest need only the slug. Management needs the credentials above.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

import jwt
from aiohttp import web

from api.errors import ApiError
from api.state import SETTINGS
from api.validation import has_control_characters

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="roomscribe"'}


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["admin", "user", "anonymous"]
    user_id: str | None = None
    name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


ANONYMOUS = Principal("anonymous")
_PRINCIPAL = web.RequestKey("principal", Principal)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers=_CHALLENGE)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def verify_user_jwt(token: str, secret: str) -> Principal:
    """A user's identity from a host-app JWT; raises ApiError 401 when it is not valid."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"], "verify_aud": False},
            leeway=30,
        )
    except jwt.PyJWTError as error:
        raise unauthorized(f"invalid user token: {error}") from None
    sub, name = claims.get("sub"), claims.get("name")
    if not isinstance(sub, str) or not sub or len(sub) > 256 or "\x00" in sub:
        raise unauthorized("invalid user token: sub must be a non-empty string")
    if not isinstance(name, str):
        raise unauthorized("invalid user token: name is required")
    name = "".join(ch for ch in name if not has_control_characters(ch)).strip()[:64].strip()
    if not name:
        raise unauthorized("invalid user token: name is required")
    return Principal("user", user_id=sub, name=name)


def principal(request: web.Request) -> Principal:
    """The caller of this request (computed once per request)."""
    cached: Principal | None = request.get(_PRINCIPAL)
    if cached is not None:
        return cached
    found = _authenticate(request)
    request[_PRINCIPAL] = found
    return found


def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization")
    if header is None:
        return ANONYMOUS
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise unauthorized("Authorization must be 'Bearer <token>'")
    settings = request.app[SETTINGS]
    if settings.roomscribe_api_key is not None:
        expected = settings.roomscribe_api_key.get_secret_value().encode("utf-8")
        if expected and hmac.compare_digest(credential.encode("utf-8"), expected):
            return Principal("admin")
    if settings.user_jwt_secret is not None and credential.count(".") == 2:
        return verify_user_jwt(credential, settings.user_jwt_secret.get_secret_value())
    raise unauthorized("invalid credentials")


def require_admin(request: web.Request) -> Principal:
    caller = principal(request)
    if caller.kind == "anonymous":
        raise unauthorized("this route needs the API key")
    if not caller.is_admin:
        raise forbidden("this route needs the API key")
    return caller
