"""`POST /api/livekit/webhook`: LiveKit's signed webhooks.

The body is verified with livekit-api's WebhookReceiver (JWT signed with the LiveKit API secret, carrying
the body's sha256): unsigned, forged or tampered → 401. Then:
- participant_joined / participant_left (and participant_connection_aborted, a join that never
  completed): the participant's joined_at / left_at (row created if needed); participants of kind AGENT
  (the transcriber) are ignored.
- room_finished: the session ends (status ended, ended_at).
- a (non-agent) participant joins a room with no live dispatch of the transcriber (its job never started
  because every worker was full, or it failed): the agent is dispatched again, so no session is left
  without captions.
A room that is no session of ours is acknowledged (200) and logged, as is any other event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import web
from google.protobuf.json_format import ParseError
from livekit import api as lkapi

from api.errors import ApiError
from api.sessions import dispatch_metadata
from api.state import LIVEKIT, POOL, SETTINGS
from common.dispatch import live_dispatches
from db import queries

logger = logging.getLogger("roomscribe.api.webhooks")


def _receiver(app: web.Application) -> lkapi.WebhookReceiver:
    settings = app[SETTINGS]
    verifier = lkapi.TokenVerifier(settings.livekit_api_key, settings.livekit_api_secret.get_secret_value())
    return lkapi.WebhookReceiver(verifier)


def _event_time(event: lkapi.WebhookEvent) -> datetime:
    if event.created_at > 0:
        return datetime.fromtimestamp(event.created_at, UTC)
    return datetime.now(UTC)


def _joined_time(event: lkapi.WebhookEvent) -> datetime:
    participant = event.participant
    if participant.joined_at_ms > 0:
        return datetime.fromtimestamp(participant.joined_at_ms / 1000, UTC)
    if participant.joined_at > 0:
        return datetime.fromtimestamp(participant.joined_at, UTC)
    return _event_time(event)


async def dispatch_again_if_unserved(app: web.Application, room: str) -> None:
    """Dispatch the transcriber to `room` when none of its dispatches can still bring one."""
    settings, livekit = app[SETTINGS], app[LIVEKIT]
    try:
        dispatches = await livekit.agent_dispatch.list_dispatch(room_name=room)
        if not any(d.agent_name == settings.agent_name for d in dispatches):
            return  # not a room this API dispatched its agent to (another deployment's, or none)
        if live_dispatches(dispatches, settings.agent_name):
            return
        session = await queries.get_session_by_slug(app[POOL], room)
        if session is None or session.status != "active":
            return
        await livekit.agent_dispatch.create_dispatch(
            lkapi.CreateAgentDispatchRequest(
                agent_name=settings.agent_name, room=room, metadata=dispatch_metadata(session)
            )
        )
    except Exception as error:  # LiveKit unreachable: the next join tries again
        logger.error("could not check the room's transcriber", extra={"room": room, "error": repr(error)})
        return
    logger.warning("room had no transcriber, agent dispatched again", extra={"room": room})


async def receive_webhook(request: web.Request) -> web.Response:
    auth = request.headers.get("Authorization", "").strip()
    if auth.lower().startswith("bearer "):
        auth = auth[7:].strip()
    if not auth:
        raise ApiError(401, "unauthorized", "webhook is not signed")
    raw = await request.read()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(401, "unauthorized", "webhook signature does not match") from None
    try:
        event = _receiver(request.app).receive(body, auth)
    except ParseError:
        raise ApiError(400, "invalid_json", "webhook body is not a LiveKit event") from None
    except Exception as error:  # jwt errors, "hash mismatch", bad base64: all mean not from our server
        logger.warning("webhook rejected", extra={"reason": type(error).__name__})
        raise ApiError(401, "unauthorized", "webhook signature does not match") from None

    pool = request.app[POOL]
    room = event.room.name
    kind = event.event
    fields = {"webhook_event": kind, "room": room, "webhook_id": event.id}
    if kind in ("participant_joined", "participant_left", "participant_connection_aborted"):
        participant = event.participant
        fields["participant"] = participant.identity
        if participant.kind == lkapi.ParticipantInfo.Kind.AGENT:
            logger.info("webhook: agent participant ignored", extra=fields)
            return web.json_response({"ok": True})
        name = participant.name or None
        if kind == "participant_joined":
            known = await queries.ensure_participant(
                pool,
                room=room,
                identity=participant.identity,
                display_name=name,
                joined_at=_joined_time(event),
            )
        else:
            known = await queries.record_participant_left(
                pool, room=room, identity=participant.identity, display_name=name, left_at=_event_time(event)
            )
    elif kind == "room_finished":
        known = await queries.end_session(pool, slug=room, ended_at=_event_time(event))
    else:
        logger.debug("webhook: event not used", extra=fields)
        return web.json_response({"ok": True})
    if known and kind == "participant_joined":
        await dispatch_again_if_unserved(request.app, room)
    if known:
        logger.info("webhook applied", extra=fields)
    else:
        logger.info("webhook for a room that is no session, ignored", extra=fields)
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/livekit/webhook", receive_webhook)
