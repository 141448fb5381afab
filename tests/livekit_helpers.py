"""Test helpers: real `livekit.rtc` participants that join through the API, publish speech fixtures as
their microphone, and collect the captions the transcriber publishes on both channels."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
from livekit import rtc

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_wav(name: str) -> tuple[np.ndarray, int]:
    """A mono 16-bit fixture as int16 samples and its sample rate."""
    with wave.open(str(FIXTURES / name), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16), wav.getframerate()


@dataclass
class Caption:
    channel: str  # "data" or "stream"
    sender: str  # identity of the participant LiveKit says sent it
    speaker: str
    segment_id: str
    track_sid: str
    text: str
    final: bool
    start: str | None = None
    end: str | None = None


@dataclass
class Participant:
    room: rtc.Room
    identity: str
    name: str
    captions: list[Caption] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def finals(self, channel: str, speaker: str | None = None) -> list[Caption]:
        return [
            c
            for c in self.captions
            if c.final and c.channel == channel and (speaker is None or c.speaker == speaker)
        ]

    def has_finals(self, speaker: str, *channels: str) -> bool:
        """This participant has received finals of `speaker` on every one of `channels`."""
        return all(self.finals(channel, speaker) for channel in channels)

    def partials(self, channel: str, speaker: str | None = None) -> list[Caption]:
        return [
            c
            for c in self.captions
            if not c.final and c.channel == channel and (speaker is None or c.speaker == speaker)
        ]

    async def wait_for(self, condition: Callable[[], bool], within: float, what: str) -> None:
        for _ in range(int(within / 0.1)):
            if condition():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.identity}: timed out after {within} s waiting for {what}")

    async def leave(self) -> None:
        await self.room.disconnect()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def create_session(
    http: aiohttp.ClientSession, api_url: str, title: str, headers: dict[str, str] | None = None
) -> str:
    """Create a session through the API; its slug (the LiveKit room's name)."""
    async with http.post(f"{api_url}/api/sessions", json={"title": title}, headers=headers or {}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["slug"])


@dataclass(frozen=True)
class StoredSegment:
    segment_key: str
    identity: str
    text: str


async def stored_segments(database_url: str, slug: str) -> list[StoredSegment]:
    """The session's transcript rows, as Postgres has them."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """SELECT s.segment_key, p.identity, s.text FROM transcript_segments s
               JOIN participants p ON p.id = s.participant_id
               JOIN sessions ses ON ses.id = s.session_id WHERE ses.slug = $1""",
            slug,
        )
    finally:
        await connection.close()
    return [StoredSegment(row["segment_key"], row["identity"], row["text"]) for row in rows]


async def stored_segments_once_settled(
    database_url: str, slug: str, received_keys: Callable[[], set[str]], within: float = 10
) -> list[StoredSegment]:
    """The session's rows once they match the finals a listener received, by segment key (the agent's
    store writes, and the room delivers, in the background); as they are after `within` s otherwise."""
    rows: list[StoredSegment] = []
    for _ in range(int(within / 0.2)):
        rows = await stored_segments(database_url, slug)
        if {row.segment_key for row in rows} == received_keys():
            break
        await asyncio.sleep(0.2)
    return rows


async def join(
    http: aiohttp.ClientSession, api_url: str, slug: str, name: str, *, listen: bool = True
) -> Participant:
    """Join a session as a guest through the API's token endpoint, optionally collecting captions."""
    async with http.post(f"{api_url}/api/sessions/{slug}/token", json={"display_name": name}) as response:
        assert response.status == 200, await response.text()
        grant = await response.json()
    room = rtc.Room()
    participant = Participant(room=room, identity=grant["identity"], name=name)
    if listen:
        _collect_captions(participant)
    await room.connect(grant["url"], grant["token"])
    return participant


def _collect_captions(participant: Participant) -> None:
    room = participant.room

    @room.on("data_received")
    def _on_data(packet: rtc.DataPacket) -> None:
        if packet.topic != "roomscribe.transcript":
            return
        message = json.loads(packet.data)
        if message["type"] == "gap":
            participant.gaps.append(message)
            return
        participant.captions.append(
            Caption(
                channel="data",
                sender=packet.participant.identity if packet.participant else "",
                speaker=message["participant_identity"],
                segment_id=message["segment_id"],
                track_sid=message["track_sid"],
                text=message["text"],
                final=message["final"],
                start=message["start"],
                end=message["end"],
            )
        )

    async def _read_stream(reader: rtc.TextStreamReader, sender: str) -> None:
        text = await reader.read_all()
        attributes = reader.info.attributes or {}
        participant.captions.append(
            Caption(
                channel="stream",
                sender=sender,
                speaker=attributes.get("roomscribe.speaker_identity", ""),
                segment_id=attributes.get("lk.segment_id", ""),
                track_sid=attributes.get("lk.transcribed_track_id", ""),
                text=text,
                final=attributes.get("lk.transcription_final") == "true",
            )
        )

    def _on_stream(reader: rtc.TextStreamReader, sender: str) -> None:
        task = asyncio.create_task(_read_stream(reader, sender))
        participant._tasks.add(task)
        task.add_done_callback(participant._tasks.discard)

    room.register_text_stream_handler("lk.transcription", _on_stream)


async def publish_speech(participant: Participant, samples: np.ndarray, rate: int) -> str:
    """Publish samples as the participant's microphone, in real time; returns the track sid."""
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await participant.room.local_participant.publish_track(track, options)
    step = rate // 100  # 10 ms frames
    for offset in range(0, len(samples) - step + 1, step):
        frame = rtc.AudioFrame(samples[offset : offset + step].tobytes(), rate, 1, step)
        await source.capture_frame(frame)
    await source.wait_for_playout()
    return publication.sid


async def unpublish_all(participant: Participant) -> None:
    for publication in list(participant.room.local_participant.track_publications.values()):
        await participant.room.local_participant.unpublish_track(publication.sid)
