"""One room's transcription: keeps one `TrackPipeline` per subscribed audio track, and participant rows.

Room events arrive as synchronous callbacks; the async work they start is owned by this object (kept in
`_tasks`) and cancelled and awaited in `drain()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from livekit import rtc
from livekit.agents import AutoSubscribe, JobContext

from agent.engines.base import SpeechEngine, StreamOptions
from agent.engines.factory import create_engine
from agent.publisher import RoomPublisher
from agent.store import TranscriptStore
from agent.track_pipeline import TrackPipeline, open_track_audio
from agent.transcript import Speaker
from common.settings import Settings

logger = logging.getLogger("roomscribe.room")


def stream_options_for(job_metadata: str, settings: Settings) -> StreamOptions:
    """Recognition settings: the session's own (sent by the API as dispatch metadata), else the defaults."""
    session: dict[str, Any] = {}
    if job_metadata:
        try:
            loaded = json.loads(job_metadata)
            session = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            logger.warning("job metadata is not JSON, using default recognition settings")
    return StreamOptions(
        languages=tuple(session.get("languages") or settings.stt_languages),
        code_switching=bool(session.get("code_switching", settings.stt_code_switching)),
        endpointing=settings.stt_endpointing,
        custom_vocabulary=tuple(session.get("custom_vocabulary") or settings.stt_custom_vocabulary),
    )


class RoomTranscriber:
    def __init__(self, ctx: JobContext, settings: Settings) -> None:
        self._ctx = ctx
        self._settings = settings
        self._room_name = ctx.job.room.name
        self._options = stream_options_for(ctx.job.metadata, settings)
        self._engine: SpeechEngine = create_engine(settings)
        self._publisher = RoomPublisher(ctx.room)
        self._store = TranscriptStore(settings.database_url, self._room_name)
        # By track sid: the pipeline and the track object it reads (a new object after a reconnect).
        self._pipelines: dict[str, tuple[rtc.Track, TrackPipeline]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False

    async def start(self) -> None:
        room = self._ctx.room
        self._store.start()
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unsubscribed", self._on_track_unsubscribed)
        room.on(
            "reconnecting",
            lambda: logger.warning("connection to LiveKit lost, reconnecting", extra=self._log),
        )
        room.on("reconnected", lambda: logger.info("reconnected to LiveKit", extra=self._log))
        await self._ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        logger.info("transcriber joined", extra={**self._log, "engine": self._engine.name})
        for participant in room.remote_participants.values():
            self._on_participant_connected(participant)
            for publication in participant.track_publications.values():
                if publication.track is not None and publication.subscribed:
                    self._on_track_subscribed(publication.track, publication, participant)

    async def drain(self) -> None:
        """End every open utterance (bounded), publish and store the finals, then release everything."""
        self._draining = True
        flush_within = self._settings.agent_flush_timeout
        pipelines = [pipeline for _, pipeline in self._pipelines.values()]
        self._pipelines.clear()
        await asyncio.gather(*(pipeline.stop(flush_within) for pipeline in pipelines))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._store.aclose(flush_timeout=flush_within)
        await self._engine.aclose()
        logger.info("transcriber drained", extra={**self._log, "tracks": len(pipelines)})

    def people_remain(self) -> bool:
        """The room is still connected and has participants other than agents."""
        room = self._ctx.room
        return room.isconnected() and any(
            p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT for p in room.remote_participants.values()
        )

    @property
    def _log(self) -> dict[str, str]:
        return {"room": self._room_name}

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        self._store.participant_joined(participant.identity, participant.name or None, datetime.now(UTC))
        logger.info("participant joined", extra={**self._log, "participant": participant.identity})

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        self._store.participant_left(participant.identity, datetime.now(UTC))
        for sid, (_, pipeline) in list(self._pipelines.items()):
            if pipeline.speaker.identity == participant.identity:
                self._stop_pipeline(sid)
        logger.info("participant left", extra={**self._log, "participant": participant.identity})

    def _on_track_subscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or self._draining:
            return
        existing = self._pipelines.get(publication.sid)
        if existing is not None:
            if existing[0] is track:
                return
            self._stop_pipeline(publication.sid)  # resubscribed after a reconnect: a new track object
        speaker = Speaker(
            room=self._room_name,
            identity=participant.identity,
            name=participant.name or participant.identity,
            track_sid=publication.sid,
        )
        options = replace(
            self._options,
            log_context={"room": speaker.room, "participant": speaker.identity, "track": speaker.track_sid},
        )
        pipeline = TrackPipeline(
            speaker=speaker,
            audio=open_track_audio(track),
            engine=self._engine,
            options=options,
            publisher=self._publisher,
            store=self._store,
        )
        self._pipelines[publication.sid] = (track, pipeline)
        pipeline.start()

    def _on_track_unsubscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        existing = self._pipelines.get(publication.sid)
        if existing is not None and existing[0] is track:
            self._stop_pipeline(publication.sid)

    def _stop_pipeline(self, track_sid: str) -> None:
        existing = self._pipelines.pop(track_sid, None)
        if existing is not None:
            self._spawn(existing[1].stop(self._settings.agent_flush_timeout), name=f"stop:{track_sid}")
