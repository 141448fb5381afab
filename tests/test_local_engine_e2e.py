"""End to end with the offline engine, as on a machine with no Gladia key: real speech in, real words out."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from tests.conftest import AgentWorker
from tests.livekit_helpers import join, publish_speech, read_wav, unpublish_all

FIXTURE_WORDS = {"best", "times", "worst", "age", "wisdom", "foolishness"}


async def test_offline_engine_captions_a_speaker_live_and_stores_the_finals(
    http: aiohttp.ClientSession, local_api_url: str, local_agent_worker: AgentWorker, database_url: str
) -> None:
    async with http.post(f"{local_api_url}/api/sessions", json={"title": "Offline"}) as response:
        assert response.status == 201, await response.text()
        slug = (await response.json())["slug"]
    speaker = await join(http, local_api_url, slug, "Speaker", listen=False)
    listener = await join(http, local_api_url, slug, "Listener")
    await listener.wait_for(lambda: speaker.identity in listener.room.remote_participants, 10, "the speaker")
    samples, rate = read_wav("two_cities_48k.wav")
    await publish_speech(speaker, samples[: 12 * rate], rate)
    await unpublish_all(speaker)
    await listener.wait_for(lambda: bool(listener.finals("data", speaker.identity)), 30, "a final")
    await asyncio.sleep(2)

    for channel in ("data", "stream"):
        assert listener.partials(channel, speaker.identity), channel
        assert listener.finals(channel, speaker.identity), channel
    final_text = " ".join(c.text for c in listener.finals("data", speaker.identity)).lower()
    heard = FIXTURE_WORDS & set(final_text.split())
    assert len(heard) >= 3, final_text

    published = {c.segment_id: c.text for c in listener.finals("data", speaker.identity)}
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """SELECT s.segment_key, s.text FROM transcript_segments s
               JOIN sessions ses ON ses.id = s.session_id WHERE ses.slug = $1""",
            slug,
        )
    finally:
        await connection.close()
    assert {row["segment_key"]: row["text"] for row in rows} == published
    await speaker.leave()
    await listener.leave()
