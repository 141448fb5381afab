"""End to end on the real LiveKit server, Postgres, the API, the agent worker and the Gladia fake."""

from __future__ import annotations

import asyncio
import itertools
import wave
from collections import Counter
from functools import partial
from pathlib import Path

import aiohttp
import numpy as np
from livekit import api as lkapi
from scipy.signal import resample_poly

from tests.conftest import AgentWorker, LiveKitServer
from tests.fakes.gladia_fake import GladiaFake
from tests.livekit_helpers import (
    create_session,
    join,
    publish_speech,
    read_wav,
    stored_segments_once_settled,
    unpublish_all,
)

SPEECH_SECONDS = 15.0


def _fake_sessions_for(fake: GladiaFake, room: str, track_sid: str) -> list[bytes]:
    return [
        bytes(session.received)
        for session in fake.sessions.values()
        if session.config.get("custom_metadata", {}).get("room") == room
        and session.config.get("custom_metadata", {}).get("track") == track_sid
    ]


def _envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS energy per 20 ms: the shape of the speech, which a lossy codec (Opus) keeps."""
    frame = rate // 50
    usable = len(samples) // frame * frame
    frames = samples[:usable].astype(np.float64).reshape(-1, frame)
    envelope: np.ndarray = np.sqrt((frames**2).mean(axis=1))
    return envelope


def _envelope_correlation(received: np.ndarray, reference: np.ndarray) -> float:
    """Median over 3 s windows of the reference of the best Pearson correlation of the 16 kHz signals'
    envelopes, each window at its own lag of up to ±1 s: robust to frames delivered unevenly by a
    loaded machine, and low (0.2-0.35 measured) when the audio is another speaker's."""
    got, want = _envelope(received, 16000), _envelope(reference, 16000)
    window, max_lag = 150, 50  # in 20 ms envelope frames
    scores = []
    for start in range(0, len(want) - window + 1, window):
        target = want[start : start + window]
        best = -1.0
        for lag in range(-max_lag, max_lag + 1):
            candidate = got[start + lag : start + lag + window]
            if start + lag >= 0 and len(candidate) == window and candidate.std() > 0 and target.std() > 0:
                best = max(best, float(np.corrcoef(candidate, target)[0, 1]))
        scores.append(best)
    return float(np.median(scores))


async def test_two_speakers_are_captioned_live_stored_once_and_exported_in_order(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    gladia_fake: GladiaFake,
    livekit_server: LiveKitServer,
    database_url: str,
    artifacts: Path,
) -> None:
    slug = await create_session(http, api_url, "Two speakers", admin_headers)
    alice = await join(http, api_url, slug, "Alice", listen=False)
    bob = await join(http, api_url, slug, "Bob", listen=False)
    carol = await join(http, api_url, slug, "Carol")
    await carol.wait_for(
        lambda: {alice.identity, bob.identity} <= set(carol.room.remote_participants), 10, "both speakers"
    )
    two_cities, two_cities_rate = read_wav("two_cities_48k.wav")
    endgame, endgame_rate = read_wav("endgame_dialogue_24k.wav")
    two_cities = two_cities[: int(SPEECH_SECONDS * two_cities_rate)]
    endgame = endgame[: int(SPEECH_SECONDS * endgame_rate)]

    alice_sid, bob_sid = await asyncio.gather(
        publish_speech(alice, two_cities, two_cities_rate), publish_speech(bob, endgame, endgame_rate)
    )
    await asyncio.gather(unpublish_all(alice), unpublish_all(bob))  # ends each track: the agent flushes
    await agent_worker.wait_for_log("pipeline stopped", slug, count=2)  # logged after the last publish
    for speaker in (alice, bob):
        await carol.wait_for(
            partial(carol.has_finals, speaker.identity, "data", "stream"), 5, f"finals of {speaker.identity}"
        )

    # Captions: partials and finals of both speakers, on both channels, attributed to the right identity.
    for speaker, sid in ((alice, alice_sid), (bob, bob_sid)):
        for channel in ("data", "stream"):
            finals = carol.finals(channel, speaker.identity)
            assert finals and carol.partials(channel, speaker.identity), (channel, speaker.identity)
            assert {c.track_sid for c in finals} == {sid}
        assert {c.sender for c in carol.finals("stream", speaker.identity)} == {speaker.identity}
    rows = await stored_segments_once_settled(
        database_url, slug, lambda: {c.segment_id for c in carol.finals("data")}
    )
    data_finals = [c.segment_id for c in carol.finals("data")]
    assert len(data_finals) == len(set(data_finals)), "a final was published twice"

    # The transcriber is hidden: the listener never sees it.
    assert set(carol.room.remote_participants) == {alice.identity, bob.identity}

    # The audio path: what the engine received per track is what was published, resampled.
    for sid, samples, rate in ((alice_sid, two_cities, two_cities_rate), (bob_sid, endgame, endgame_rate)):
        received = b"".join(_fake_sessions_for(gladia_fake, slug, sid))
        received_seconds = len(received) / 32000
        assert abs(received_seconds - SPEECH_SECONDS) <= 0.02 * SPEECH_SECONDS, (sid, received_seconds)
        with wave.open(str(artifacts / f"engine-received-{sid}.wav"), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes(received)
        reference = resample_poly(samples.astype(np.float64), 16000, rate)
        correlation = _envelope_correlation(np.frombuffer(received, dtype=np.int16), reference)
        assert correlation > 0.8, (sid, correlation)

    # Postgres: every final once.
    keys = Counter(row.segment_key for row in rows)
    assert keys and max(keys.values()) == 1
    assert set(keys) == set(data_finals)
    assert {row.identity for row in rows} == {alice.identity, bob.identity}

    # The export interleaves the two speakers in spoken order.
    async with http.get(f"{api_url}/api/sessions/{slug}/transcript", params={"format": "json"}) as response:
        assert response.status == 200
        transcript = await response.json()
    segments = transcript["segments"]
    starts = [segment["start"] for segment in segments]
    assert starts == sorted(starts)
    speakers = [segment["speaker"]["identity"] for segment in segments]
    assert set(speakers) == {alice.identity, bob.identity}
    switches = sum(1 for a, b in itertools.pairwise(speakers) if a != b)
    assert switches >= 2, speakers

    # The listener saw no agent, and the server has exactly one transcriber in the room.
    async with livekit_server.api() as livekit:
        participants = await livekit.room.list_participants(lkapi.ListParticipantsRequest(room=slug))
    assert [p.identity for p in participants.participants if p.identity.startswith("roomscribe")] == [
        "roomscribe-transcriber"
    ]
    for participant in (alice, bob, carol):
        await participant.leave()
