"""End to end with the offline engine, as on a machine with no Gladia key: real speech in, real words out."""

from __future__ import annotations

import aiohttp

from tests.conftest import AgentWorker
from tests.livekit_helpers import (
    create_session,
    join,
    publish_speech,
    read_wav,
    stored_segments_once_settled,
    unpublish_all,
)

FIXTURE_WORDS = {"best", "times", "worst", "age", "wisdom", "foolishness"}


async def test_offline_engine_captions_a_speaker_live_and_stores_the_finals(
    http: aiohttp.ClientSession, local_api_url: str, local_agent_worker: AgentWorker, database_url: str
) -> None:
    slug = await create_session(http, local_api_url, "Offline")
    speaker = await join(http, local_api_url, slug, "Speaker", listen=False)
    listener = await join(http, local_api_url, slug, "Listener")
    await listener.wait_for(lambda: speaker.identity in listener.room.remote_participants, 10, "the speaker")
    samples, rate = read_wav("two_cities_48k.wav")
    await publish_speech(speaker, samples[: 12 * rate], rate)
    await unpublish_all(speaker)
    # The pipeline logs "pipeline stopped" once the engine's last final is published and queued for storage.
    await local_agent_worker.wait_for_log("pipeline stopped", slug)
    await listener.wait_for(lambda: bool(listener.finals("data", speaker.identity)), 5, "a final")

    for channel in ("data", "stream"):
        assert listener.partials(channel, speaker.identity), channel
        assert listener.finals(channel, speaker.identity), channel
    final_text = " ".join(c.text for c in listener.finals("data", speaker.identity)).lower()
    heard = FIXTURE_WORDS & set(final_text.split())
    assert len(heard) >= 3, final_text

    rows = await stored_segments_once_settled(
        database_url, slug, lambda: {c.segment_id for c in listener.finals("data", speaker.identity)}
    )
    published = {c.segment_id: c.text for c in listener.finals("data", speaker.identity)}
    assert {row.segment_key: row.text for row in rows} == published
    await speaker.leave()
    await listener.leave()
