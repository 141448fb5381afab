"""The agent under faults, end to end on the real LiveKit server, Postgres, the API and the Gladia fake."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from livekit import api as lkapi

from agent.worker import TRANSCRIBER_IDENTITY
from common.dispatch import UNASSIGNED_GRACE_S
from tests.conftest import AgentWorker, LiveKitServer
from tests.livekit_helpers import (
    Participant,
    create_session,
    join,
    publish_speech,
    read_wav,
    stored_segments,
    unpublish_all,
)
from tests.tcp_proxy import TcpProxy


async def _stored_keys(database_url: str, slug: str) -> Counter[str]:
    return Counter(row.segment_key for row in await stored_segments(database_url, slug))


async def _transcribers(livekit_server: LiveKitServer, slug: str) -> list[str]:
    """Identities of roomscribe's agents in the room, as the server lists them (hidden ones included)."""
    async with livekit_server.api() as livekit:
        participants = await livekit.room.list_participants(lkapi.ListParticipantsRequest(room=slug))
    return [p.identity for p in participants.participants if p.identity.startswith("roomscribe")]


async def _speaker_and_listener(
    http: aiohttp.ClientSession, api_url: str, slug: str
) -> tuple[Participant, Participant]:
    speaker = await join(http, api_url, slug, "Speaker", listen=False)
    listener = await join(http, api_url, slug, "Listener")
    await listener.wait_for(lambda: speaker.identity in listener.room.remote_participants, 10, "the speaker")
    return speaker, listener


async def test_captions_continue_while_the_database_is_unreachable_and_every_final_is_stored_once(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    database_proxy: TcpProxy,
    database_url: str,
) -> None:
    slug = await create_session(http, api_url, "Database outage", admin_headers)
    speaker, listener = await _speaker_and_listener(http, api_url, slug)
    samples, rate = read_wav("two_cities_48k.wav")
    database_proxy.cut()
    speaking = asyncio.create_task(publish_speech(speaker, samples[: 24 * rate], rate))
    await asyncio.sleep(20)
    finals_during_outage = len(listener.finals("data", speaker.identity))
    database_proxy.restore()
    await speaking
    await unpublish_all(speaker)
    await listener.wait_for(
        lambda: len(listener.finals("data", speaker.identity)) > finals_during_outage, 15, "the last finals"
    )
    await asyncio.sleep(1)
    published = [caption.segment_id for caption in listener.finals("data", speaker.identity)]

    assert finals_during_outage >= 3, "captions stopped while the database was unreachable"
    stored: Counter[str] = Counter()
    for _ in range(100):
        stored = await _stored_keys(database_url, slug)
        if set(stored) >= set(published):
            break
        await asyncio.sleep(0.2)
    assert set(stored) == set(published)
    assert max(stored.values()) == 1
    assert "database unreachable, holding transcript rows" in agent_worker.log_text()
    assert "database reachable again" in agent_worker.log_text()
    await speaker.leave()
    await listener.leave()


async def test_a_room_dispatched_twice_gets_exactly_one_hidden_transcriber(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    livekit_server: LiveKitServer,
) -> None:
    slug = await create_session(http, api_url, "Dispatched twice", admin_headers)
    async with livekit_server.api() as livekit:
        await livekit.agent_dispatch.create_dispatch(
            lkapi.CreateAgentDispatchRequest(agent_name="roomscribe-transcriber", room=slug)
        )
        dispatches = await livekit.agent_dispatch.list_dispatch(room_name=slug)
    assert len(dispatches) == 2
    for _ in range(50):
        if await _transcribers(livekit_server, slug) and "job declined" in agent_worker.log_text():
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a second transcriber, if any, would have joined by now
    assert await _transcribers(livekit_server, slug) == [TRANSCRIBER_IDENTITY]
    assert "job declined" in agent_worker.log_text()
    # Hidden: a participant who joins does not see it.
    listener = await join(http, api_url, slug, "Listener")
    await asyncio.sleep(1)
    assert TRANSCRIBER_IDENTITY not in listener.room.remote_participants
    await listener.leave()


async def test_sigterm_mid_sentence_publishes_and_stores_that_utterance_before_exit(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    database_url: str,
) -> None:
    slug = await create_session(http, api_url, "Deploy mid-sentence", admin_headers)
    speaker, listener = await _speaker_and_listener(http, api_url, slug)
    samples, rate = read_wav("two_cities_48k.wav")
    speaking = asyncio.create_task(publish_speech(speaker, samples[: 20 * rate], rate))
    try:
        # Mid-sentence: a partial of an utterance that has no final yet.
        def open_utterance() -> str | None:
            finals = {c.segment_id for c in listener.finals("data", speaker.identity)}
            partials = [c for c in listener.partials("data", speaker.identity) if c.segment_id not in finals]
            return partials[-1].segment_id if partials and listener.finals("data") else None

        await listener.wait_for(lambda: open_utterance() is not None, 20, "an utterance in progress")
        in_progress = open_utterance()
        exit_code = await agent_worker.stop()
        assert exit_code == 0, agent_worker.log_text()[-3000:]
        assert in_progress in {c.segment_id for c in listener.finals("data", speaker.identity)}
        assert in_progress in {c.segment_id for c in listener.finals("stream", speaker.identity)}
        stored = await _stored_keys(database_url, slug)
        assert stored[in_progress] == 1
    finally:
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await speaker.leave()
        await listener.leave()
        await agent_worker.start()


async def test_a_room_whose_dispatch_found_no_worker_gets_a_transcriber_when_someone_joins(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    livekit_server: LiveKitServer,
) -> None:
    assert await agent_worker.stop() == 0
    try:
        slug = await create_session(http, api_url, "No worker at creation", admin_headers)
        await asyncio.sleep(UNASSIGNED_GRACE_S + 1)  # the dispatch's one offer found no worker
    finally:
        await agent_worker.start()
    await asyncio.sleep(3)
    assert await _transcribers(livekit_server, slug) == [], (
        "LiveKit re-offered the dispatch by itself; this test shows nothing"
    )
    listener = await join(http, api_url, slug, "Listener")
    try:
        for _ in range(100):
            if await _transcribers(livekit_server, slug):
                break
            await asyncio.sleep(0.2)
        assert await _transcribers(livekit_server, slug) == [TRANSCRIBER_IDENTITY]
    finally:
        await listener.leave()


async def test_a_rolling_deploy_hands_the_room_to_another_worker_and_captions_go_on(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    agent_worker: AgentWorker,
    artifacts: Path,
) -> None:
    second = AgentWorker(env=agent_worker.env, log=artifacts / f"agent-worker-second-{id(agent_worker)}.log")
    await second.start()
    slug = await create_session(http, api_url, "Rolling deploy", admin_headers)
    speaker, listener = await _speaker_and_listener(http, api_url, slug)
    samples, rate = read_wav("two_cities_48k.wav")
    speaking = asyncio.create_task(publish_speech(speaker, samples[: 28 * rate], rate))
    try:
        await listener.wait_for(lambda: bool(listener.finals("data", speaker.identity)), 20, "first finals")

        def accepted(worker: AgentWorker) -> bool:
            return any("job accepted" in line and slug in line for line in worker.log_text().splitlines())

        serving, other = (agent_worker, second) if accepted(agent_worker) else (second, agent_worker)
        assert accepted(serving) and not accepted(other)
        assert await serving.stop() == 0
        stopped_at = datetime.now(UTC).isoformat()
        assert "room handed over to another worker" in serving.log_text()

        def spoken_after_stop() -> int:
            return sum(
                1 for c in listener.finals("data", speaker.identity) if c.start and c.start > stopped_at
            )

        await listener.wait_for(lambda: spoken_after_stop() >= 2, 30, "captions from the other worker")
        assert accepted(other)
    finally:
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await speaker.leave()
        await listener.leave()
        await second.stop()
        if agent_worker.process is None:
            await agent_worker.start()
