"""The LiveKit server restarts mid-meeting: every client reconnects, and captions resume for every track
in the same job (the old relay design lost transcription on every LiveKit reconnect)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial

import aiohttp
import pytest

from tests.conftest import AgentWorker, LiveKitServer
from tests.livekit_helpers import create_session, join, publish_speech, read_wav


@pytest.mark.restarts_livekit
async def test_captions_resume_for_every_track_after_the_livekit_server_restarts(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    livekit_server: LiveKitServer,
) -> None:
    slug = await create_session(http, api_url, "Reconnect", admin_headers)
    alice = await join(http, api_url, slug, "Alice", listen=False)
    bob = await join(http, api_url, slug, "Bob", listen=False)
    listener = await join(http, api_url, slug, "Listener")
    await listener.wait_for(
        lambda: {alice.identity, bob.identity} <= set(listener.room.remote_participants), 10, "the speakers"
    )
    two_cities, rate_a = read_wav("two_cities_48k.wav")
    endgame, rate_b = read_wav("endgame_dialogue_24k.wav")
    speaking = [
        asyncio.create_task(publish_speech(alice, two_cities[: 28 * rate_a], rate_a)),
        asyncio.create_task(publish_speech(bob, endgame[: 28 * rate_b], rate_b)),
    ]
    try:
        for speaker in (alice, bob):
            await listener.wait_for(
                partial(listener.has_finals, speaker.identity, "data"),
                30,
                f"first finals of {speaker.identity}",
            )
        jobs_before = agent_worker.log_text().count("job accepted")
        await livekit_server.restart()
        restarted_at = datetime.now(UTC).isoformat()

        def two_finals_spoken_after_restart(identity: str) -> bool:
            finals = listener.finals("data", identity)
            return sum(1 for c in finals if c.start is not None and c.start > restarted_at) >= 2

        for speaker in (alice, bob):
            await listener.wait_for(
                partial(two_finals_spoken_after_restart, speaker.identity),
                30,
                f"captions of speech {speaker.identity} spoke after the restart",
            )
        await listener.wait_for(
            lambda: "reconnected to LiveKit" in agent_worker.log_text(), 10, "the agent's log"
        )
        assert agent_worker.log_text().count("job accepted") == jobs_before, (
            "a new job instead of a reconnect"
        )
    finally:
        for task in speaking:
            task.cancel()
        await asyncio.gather(*speaking, return_exceptions=True)
        for participant in (alice, bob, listener):
            await participant.leave()
