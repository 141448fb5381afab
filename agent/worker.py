"""The livekit-agents worker: one job per room, dispatched by agent name (see the API's room creation).

The transcriber joins as a hidden participant that subscribes to audio and publishes data only. Exactly
one transcriber serves a room: a job request is turned down when the room already has one, or when an
older live dispatch of this agent exists for the room (two requests racing each other agree on the
oldest; a dispatch whose job never started, see common/dispatch.py, does not count).
"""

from __future__ import annotations

import logging

from livekit import api
from livekit.agents import AgentServer, JobContext, JobRequest, WorkerPermissions

from agent.room_transcriber import RoomTranscriber
from common.dispatch import live_dispatches
from common.settings import Settings, get_settings

logger = logging.getLogger("roomscribe.worker")

TRANSCRIBER_IDENTITY = "roomscribe-transcriber"
TRANSCRIBER_NAME = "roomscribe"
_USERDATA_KEY = "roomscribe.transcriber"


def livekit_api() -> api.LiveKitAPI:
    settings = get_settings()
    return api.LiveKitAPI(
        settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret.get_secret_value()
    )


async def on_job_request(request: JobRequest) -> None:
    room = request.room.name
    async with livekit_api() as livekit:
        participants = await livekit.room.list_participants(api.ListParticipantsRequest(room=room))
        dispatches = await livekit.agent_dispatch.list_dispatch(room_name=room)
    if any(participant.identity == TRANSCRIBER_IDENTITY for participant in participants.participants):
        logger.info("job declined: room already has a transcriber", extra={"room": room, "job": request.id})
        await request.reject()
        return
    own = next((d for d in dispatches if d.id == request.job.dispatch_id), None)
    own_key = (own.state.created_at, own.id) if own is not None else None
    older = [
        d.id
        for d in live_dispatches(dispatches, request.agent_name)
        if d.id != request.job.dispatch_id and (own_key is None or (d.state.created_at, d.id) < own_key)
    ]
    if older:
        logger.info(
            "job declined: an older dispatch serves this room",
            extra={"room": room, "job": request.id, "dispatch": request.job.dispatch_id, "kept": older[0]},
        )
        await request.reject()
        return
    await request.accept(identity=TRANSCRIBER_IDENTITY, name=TRANSCRIBER_NAME)
    logger.info("job accepted", extra={"room": room, "job": request.id})


async def entrypoint(ctx: JobContext) -> None:
    transcriber = RoomTranscriber(ctx, get_settings())
    ctx.proc.userdata[_USERDATA_KEY] = transcriber
    await transcriber.start()


async def on_session_end(ctx: JobContext) -> None:
    """Runs on every job shutdown (worker stopping, room gone) while the room is still connected.

    When the worker is stopping (a deploy) and people are still in the room, the job hands the room
    over: it ends its open utterances, leaves, and replaces its dispatch with a new one, which LiveKit
    offers to a worker that is not draining.
    """
    transcriber = ctx.proc.userdata.pop(_USERDATA_KEY, None)
    if not isinstance(transcriber, RoomTranscriber):
        return
    await transcriber.drain()
    if transcriber.people_remain():
        await hand_over(ctx)


async def hand_over(ctx: JobContext) -> None:
    room = ctx.job.room.name
    await ctx.room.disconnect()  # first: the next transcriber must find the room without us
    try:
        async with livekit_api() as livekit:
            if ctx.job.dispatch_id:
                await livekit.agent_dispatch.delete_dispatch(ctx.job.dispatch_id, room)
            await livekit.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=ctx.job.agent_name, room=room, metadata=ctx.job.metadata
                )
            )
    except Exception as error:  # the API re-dispatches on the next join anyway
        logger.error("room not handed over", extra={"room": room, "job": ctx.job.id, "error": repr(error)})
        return
    logger.info("room handed over to another worker", extra={"room": room, "job": ctx.job.id})


def room_load(server: AgentServer) -> float:
    """The worker's load as LiveKit sees it: the share of its room budget in use.

    Not the machine's CPU (livekit-agents' default): LiveKit gives no room to a worker that reports a
    load of 1.0, and on a busy machine (other processes, a short burst) CPU says nothing of whether this
    mostly network-bound worker can take another room; a dispatch refused that way is not offered again.
    """
    return min(len(server.active_jobs) / get_settings().agent_max_rooms, 1.0)


def build_server(settings: Settings) -> AgentServer:
    server = AgentServer(
        permissions=WorkerPermissions(
            can_publish=False,
            can_subscribe=True,
            can_publish_data=True,
            can_update_metadata=False,
            hidden=True,
        ),
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
        port=settings.agent_http_port,
        load_fnc=room_load,
        load_threshold=1.0,  # full at AGENT_MAX_ROOMS
        # On SIGTERM, stop taking rooms and shut jobs down at once (each flushes its open utterances);
        # waiting for meetings to end could take hours.
        drain_timeout=1,
        # A job's drain: pipelines (2 x flush), then the store (flush), then the hand-over.
        shutdown_process_timeout=settings.agent_flush_timeout * 3 + 10,
    )
    server.rtc_session(
        entrypoint, agent_name=settings.agent_name, on_request=on_job_request, on_session_end=on_session_end
    )
    return server
