"""The Gladia fake follows Gladia's live v2 protocol (/work/shared/reference/gladia-live-v2.md).

Driven with a plain aiohttp client written here from the reference, not from any client code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.fakes.gladia_fake import MAX_FRAME_BYTES, GladiaFake

KEY = "test-gladia-key"
RATE = 16000
BPS = RATE * 2  # 16-bit mono
CHUNK = 3200  # 100 ms
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ERROR_KEYS = {"timestamp", "path", "request_id", "statusCode", "message"}


def silence(seconds: float) -> bytes:
    return bytes(round(seconds * RATE) * 2)


def tone(seconds: float, amplitude: float = 0.3) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()


def chunks(audio: bytes, size: int = CHUNK) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


@pytest.fixture
async def fake() -> AsyncIterator[GladiaFake]:
    server = GladiaFake(api_key=KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def init(
    http: aiohttp.ClientSession, fake: GladiaFake, body: dict[str, Any] | None = None, key: str | None = KEY
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Gladia-Key": key} if key is not None else {}
    async with http.post(f"{fake.base_url}/v2/live", json=body or {}, headers=headers) as response:
        return response.status, await response.json()


async def open_session(
    http: aiohttp.ClientSession, fake: GladiaFake, body: dict[str, Any] | None = None
) -> tuple[dict[str, Any], aiohttp.ClientWebSocketResponse]:
    status, created = await init(http, fake, body)
    assert status == 201, created
    return created, await http.ws_connect(created["url"])


async def recv(ws: aiohttp.ClientWebSocketResponse, within: float = 2.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=within)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
    message: dict[str, Any] = json.loads(msg.data)
    return message


async def read_until(
    ws: aiohttp.ClientWebSocketResponse, type_: str, within: float = 2.0
) -> list[dict[str, Any]]:
    """Every message up to and including the first of type ``type_``."""
    seen: list[dict[str, Any]] = []
    while True:
        seen.append(await recv(ws, within))
        if seen[-1]["type"] == type_:
            return seen


async def read_to_close(ws: aiohttp.ClientWebSocketResponse, within: float = 3.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                seen.append(json.loads(msg.data))
    return seen


async def send_and_ack(ws: aiohttp.ClientWebSocketResponse, audio: bytes) -> list[dict[str, Any]]:
    """Send ``audio`` in 100 ms binary frames; return every message up to the ack of the last frame."""
    seen: list[dict[str, Any]] = []
    frames = chunks(audio)
    for chunk in frames:
        await ws.send_bytes(chunk)
    while len(of(seen, "audio_chunk")) < len(frames):
        seen.append(await recv(ws))
    return seen


def of(messages: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == type_]


# ------------------------------------------------------------------ init


async def test_init_returns_id_created_at_and_ws_url(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    status, body = await init(http, fake, {"encoding": "wav/pcm", "sample_rate": 16000})
    assert status == 201
    assert set(body) == {"id", "created_at", "url"}
    assert body["url"].startswith(f"ws://127.0.0.1:{fake.port}/v2/live?token=")
    assert body["url"].split("token=")[1] != body["id"]
    assert body["created_at"].endswith("Z") and len(body["created_at"]) == 24
    assert fake.sessions[body["id"]].config == {"encoding": "wav/pcm", "sample_rate": 16000}
    # the key header name is case-insensitive
    async with http.post(f"{fake.base_url}/v2/live", json={}, headers={"x-gladia-key": KEY}) as response:
        assert response.status == 201


async def test_init_auth_errors(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    for key in (None, "wrong"):
        status, body = await init(http, fake, key=key)
        assert status == 401
        assert ERROR_KEYS <= set(body) and "validation_errors" not in body
        assert body["statusCode"] == 401 and body["path"] == "/v2/live"
        assert body["message"] == "gladia key not found" and body["request_id"].startswith("G-")
    assert fake.sessions == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"encoding": "mp3"},
        {"bit_depth": 12},
        {"sample_rate": 22050},
        {"channels": 0},
        {"channels": 9},
        {"endpointing": 0.001},
        {"endpointing": 11},
        {"maximum_duration_without_endpointing": 4},
        {"maximum_duration_without_endpointing": 61},
        {"language_config": {"languages": ["english"]}},
        {"language_config": {"languages": [1]}},
        {"messages_config": {"receive_partial_transcripts": "yes"}},
    ],
)
async def test_init_validation_400(
    fake: GladiaFake, http: aiohttp.ClientSession, bad: dict[str, Any]
) -> None:
    status, body = await init(http, fake, bad)
    assert status == 400
    assert ERROR_KEYS <= set(body) and body["statusCode"] == 400
    assert body["validation_errors"] and all(isinstance(e, str) for e in body["validation_errors"])
    assert next(iter(bad)) in body["validation_errors"][0]


async def test_init_accepts_our_documented_body(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    body = {
        "encoding": "wav/pcm", "bit_depth": 16, "sample_rate": 16000, "channels": 1,
        "endpointing": 0.3, "maximum_duration_without_endpointing": 15,
        "language_config": {"languages": ["en"], "code_switching": False},
        "messages_config": {"receive_partial_transcripts": True, "receive_final_transcripts": True,
                            "receive_acknowledgments": True, "receive_speech_events": True,
                            "receive_lifecycle_events": True},
        "custom_metadata": {"room": "r1", "participant": "alice"},
        "realtime_processing": {"words_accurate_timestamps": False},
    }  # fmt: skip
    status, _ = await init(http, fake, body)
    assert status == 201
    strict = GladiaFake(reject_unknown_fields=True)
    await strict.start()
    try:
        status, error = await init(http, strict, body, key="test-gladia-key")
        assert status == 400
        assert error["validation_errors"] == [
            "property realtime_processing.words_accurate_timestamps should not exist"
        ]
    finally:
        await strict.stop()


async def test_concurrency_429_until_a_session_ends(http: aiohttp.ClientSession) -> None:
    fake = GladiaFake(concurrency_limit=1)
    await fake.start()
    try:
        _, ws = await open_session(http, fake)
        status, body = await init(http, fake)
        assert status == 429 and body["statusCode"] == 429 and ERROR_KEYS <= set(body)
        assert fake.open_sessions() == 1
        await ws.send_str(json.dumps({"type": "stop_recording"}))
        await read_to_close(ws)
        assert ws.close_code == 1000
        assert fake.open_sessions() == 0
        status, _ = await init(http, fake)
        assert status == 201
    finally:
        await fake.stop()


async def test_fail_next_inits(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    fake.fail_next_inits(503, count=2)
    fake.fail_next_inits(422)
    fake.fail_next_inits(400)
    seen = [await init(http, fake) for _ in range(5)]
    assert [s for s, _ in seen] == [503, 503, 422, 400, 201]
    assert seen[2][1]["message"] == "Invalid parameter"
    assert "validation_errors" not in seen[0][1] and seen[3][1]["validation_errors"]
    assert len(fake.sessions) == 1 and fake.init_requests == 5


# ------------------------------------------------------------------ WebSocket


async def test_unknown_token_refused_403(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws://127.0.0.1:{fake.port}/v2/live?token=nope")
    assert refused.value.status == 403


async def test_acks_are_session_cumulative_across_a_reconnect(
    fake: GladiaFake, http: aiohttp.ClientSession
) -> None:
    created, ws = await open_session(http, fake)
    acks = of(await send_and_ack(ws, silence(0.3)), "audio_chunk")
    assert [a["data"]["byte_range"] for a in acks] == [[0, 3200], [3200, 6400], [6400, 9600]]
    assert acks[1]["data"]["time_range"] == [0.1, 0.2]
    assert all(a["acknowledged"] is True and a["error"] is None for a in acks)
    assert all(a["session_id"] == created["id"] and a["created_at"].endswith("Z") for a in acks)
    await fake.drop(created["id"], how="abort")
    msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert ws.close_code == 1006
    ws = await http.ws_connect(created["url"])  # resume: same URL
    acks = of(await send_and_ack(ws, silence(0.2)), "audio_chunk")
    assert [a["data"]["byte_range"] for a in acks] == [[9600, 12800], [12800, 16000]]
    assert acks[-1]["data"]["time_range"] == [0.4, 0.5]
    session = fake.sessions[created["id"]]
    assert session.connections == 2 and len(session.received) == 16000 and not session.ended
    await ws.close(code=4000)


async def test_base64_chunks_and_empty_keepalive(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake)
    audio = tone(0.1)
    await ws.send_str(json.dumps({"type": "audio_chunk", "data": {"chunk": ""}}))
    await ws.send_str(
        json.dumps({"type": "audio_chunk", "data": {"chunk": base64.b64encode(audio).decode()}})
    )
    await ws.send_bytes(audio)
    acks = [m for m in await read_until(ws, "audio_chunk") if m["type"] == "audio_chunk"]
    acks += of(await read_until(ws, "audio_chunk"), "audio_chunk")
    # the empty chunk is not acked: the first ack is the base64 chunk's
    assert [a["data"]["byte_range"] for a in acks] == [[0, 3200], [3200, 6400]]
    session = fake.sessions[created["id"]]
    assert session.keepalives == 1 and bytes(session.received) == audio + audio
    await ws.close(code=4000)


async def test_frame_over_1_mib_closes_1009(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake, {"messages_config": {"receive_acknowledgments": False}})
    await ws.send_bytes(bytes(MAX_FRAME_BYTES))  # exactly 1 MiB is fine
    await ws.send_bytes(bytes(MAX_FRAME_BYTES + 1))
    await read_to_close(ws)
    assert ws.close_code == 1009
    session = fake.sessions[created["id"]]
    assert len(session.received) == MAX_FRAME_BYTES and not session.ended
    ws = await http.ws_connect(created["url"])  # still resumable
    await ws.close(code=4000)


async def test_finals_on_the_session_clock_across_a_reconnect(
    fake: GladiaFake, http: aiohttp.ClientSession
) -> None:
    created, ws = await open_session(http, fake, {"endpointing": 0.2})
    seen = await send_and_ack(ws, silence(0.5) + tone(0.6) + silence(0.4))
    await fake.drop(created["id"], how="close", code=1011)
    seen += await read_to_close(ws)
    assert ws.close_code == 1011
    ws = await http.ws_connect(created["url"])
    seen += await send_and_ack(ws, tone(1.0) + silence(0.4))
    finals = [m["data"] for m in of(seen, "transcript")]
    assert [f["is_final"] for f in finals] == [True, True]  # partials are off by default
    assert [f["id"] for f in finals] == ["00_00000000", "00_00000001"]
    first, second = (f["utterance"] for f in finals)
    assert (first["start"], first["end"]) == (0.5, 1.1)
    assert (second["start"], second["end"]) == (1.5, 2.5)  # continues after the 1.5 s sent before the drop
    assert first["text"] == " utterance 0 0.50 to 1.10" and second["language"] == "en"
    assert second["channel"] == 0 and 0 < second["confidence"] <= 1
    words = second["words"]
    assert [w["word"] for w in words] == [" utterance", " 1", " 1.50", " to", " 2.50"]
    assert words[0]["start"] == 1.5 and words[-1]["end"] == 2.5
    events = [(m["type"], m["data"]["time"]) for m in seen if m["type"].startswith("speech_")]
    assert events == [("speech_start", 0.5), ("speech_end", 1.1), ("speech_start", 1.5), ("speech_end", 2.5)]
    await ws.close(code=4000)


async def test_partials_only_when_enabled(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    audio = tone(1.2) + silence(0.2)
    _, ws = await open_session(http, fake, {"messages_config": {"receive_partial_transcripts": True}})
    transcripts = of(await send_and_ack(ws, audio), "transcript")
    await ws.close(code=4000)
    assert [t["data"]["is_final"] for t in transcripts] == [False, False, True]
    assert {t["data"]["id"] for t in transcripts} == {"00_00000000"}
    assert [t["data"]["utterance"]["end"] for t in transcripts] == [0.5, 1.0, 1.2]
    _, ws = await open_session(http, fake)
    transcripts = of(await send_and_ack(ws, audio), "transcript")
    await ws.close(code=4000)
    assert [t["data"]["is_final"] for t in transcripts] == [True]


async def test_maximum_duration_cuts_an_utterance(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    _, ws = await open_session(http, fake, {"maximum_duration_without_endpointing": 5})
    finals = of(await send_and_ack(ws, tone(6.0) + silence(0.2)), "transcript")
    await ws.close(code=4000)
    spans = [(f["data"]["utterance"]["start"], f["data"]["utterance"]["end"]) for f in finals]
    assert spans == [(0.0, 5.0), (5.0, 6.0)]


# ------------------------------------------------------------------ ending


async def test_stop_flow_then_403(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(
        http, fake, {"endpointing": 0.5, "messages_config": {"receive_lifecycle_events": True}}
    )
    before = await send_and_ack(ws, silence(0.2) + tone(0.5))  # the utterance is still open
    await ws.send_str(json.dumps({"type": "stop_recording"}))
    after = await read_to_close(ws)
    assert ws.close_code == 1000
    assert before[0]["type"] == "start_recording"
    assert [m["type"] for m in after] == [
        "stop_recording", "speech_end", "transcript", "end_recording",
        "post_transcript", "post_final_transcript", "end_session",
    ]  # fmt: skip
    stop_ack = after[0]
    assert stop_ack["acknowledged"] is True and stop_ack["error"] is None
    assert stop_ack["data"] == {"recording_duration": 0.7, "recording_left_to_process": 0.5}
    final = after[2]["data"]
    assert final["is_final"] and (final["utterance"]["start"], final["utterance"]["end"]) == (0.2, 0.7)
    assert after[3]["data"] == {"recording_duration": 0.7}
    assert after[4]["data"]["full_transcript"] == "utterance 0 0.20 to 0.70"
    post_final = after[5]["data"]
    assert post_final["transcription"]["utterances"] == [final["utterance"]]
    assert post_final["metadata"]["audio_duration"] == 0.7
    assert "data" not in after[6]
    session = fake.sessions[created["id"]]
    assert session.ended and session.end_reason == "stop_recording" and fake.open_sessions() == 0
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(created["url"])
    assert refused.value.status == 403


async def test_default_flags_hide_lifecycle_events(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    _, ws = await open_session(http, fake)
    await send_and_ack(ws, tone(0.3))
    await ws.send_str(json.dumps({"type": "stop_recording"}))
    types = [m["type"] for m in await read_to_close(ws)]
    assert types == ["stop_recording", "speech_end", "transcript", "post_transcript", "post_final_transcript"]
    assert ws.close_code == 1000


async def test_audio_after_stop_is_refused(http: aiohttp.ClientSession) -> None:
    fake = GladiaFake(post_processing_delay=0.3)
    await fake.start()
    try:
        created, ws = await open_session(http, fake)
        await send_and_ack(ws, silence(0.1))
        await ws.send_str(json.dumps({"type": "stop_recording"}))
        await ws.send_bytes(silence(0.1))
        seen = await read_to_close(ws)
        refused = [m for m in of(seen, "audio_chunk")]
        assert len(refused) == 1
        assert refused[0]["acknowledged"] is False and refused[0]["data"] is None
        assert isinstance(refused[0]["error"]["message"], str)
        assert len(fake.sessions[created["id"]].received) == 3200 and ws.close_code == 1000
    finally:
        await fake.stop()


async def test_client_close_1000_ends_but_other_codes_resume(
    fake: GladiaFake, http: aiohttp.ClientSession
) -> None:
    created, ws = await open_session(http, fake)
    await send_and_ack(ws, tone(0.3))
    await ws.close(code=4000)
    session = fake.sessions[created["id"]]
    await fake.wait_until(lambda: not session.connected)
    assert not session.ended
    ws = await http.ws_connect(created["url"])
    await ws.close()  # 1000
    await fake.wait_until(lambda: session.ended)
    assert session.end_reason == "client_close" and session.client_close_codes == [4000, 1000]
    assert of(session.finals, "transcript")  # the open utterance was still finalised (for GET)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(created["url"])
    assert refused.value.status == 403


async def test_idle_timeout_and_session_cap(http: aiohttp.ClientSession) -> None:
    fake = GladiaFake(idle_timeout=0.3, max_session_seconds=1.2)
    await fake.start()
    try:
        created, ws = await open_session(http, fake)
        await read_to_close(ws)
        assert ws.close_code == 1001
        session = fake.sessions[created["id"]]
        assert not session.ended
        ws = await http.ws_connect(created["url"])

        async def keepalive() -> None:  # holds off the idle close
            with contextlib.suppress(ConnectionError):
                while not ws.closed:
                    await ws.send_str(json.dumps({"type": "audio_chunk", "data": {"chunk": ""}}))
                    await asyncio.sleep(0.1)

        sender = asyncio.create_task(keepalive())
        seen = await read_to_close(ws)
        await sender
        assert session.keepalives >= 5
        assert ws.close_code == 1000 and session.end_reason == "max_duration" and session.ended
        assert of(seen, "post_final_transcript")
    finally:
        await fake.stop()


# ------------------------------------------------------------------ faults


async def test_drop_modes(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake)
    await fake.drop(created["id"], how="close", code=4500)
    await read_to_close(ws)
    assert ws.close_code == 4500
    ws = await http.ws_connect(created["url"])
    await fake.drop(how="abort")  # every connected session
    msg = await ws.receive(timeout=2)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR) and ws.close_code == 1006
    assert fake.sessions[created["id"]].connections == 2


async def test_drop_after_bytes_leaves_the_crossing_frame_unacked(
    fake: GladiaFake, http: aiohttp.ClientSession
) -> None:
    created, ws = await open_session(http, fake)
    fake.drop_after_bytes(created["id"], 6400 + 1)
    for chunk in chunks(silence(0.4)):
        await ws.send_bytes(chunk)
    seen = await read_to_close(ws)
    assert ws.close_code == 1006
    assert [a["data"]["byte_range"][1] for a in of(seen, "audio_chunk")] == [3200, 6400]
    session = fake.sessions[created["id"]]
    assert len(session.received) == 9600 and session.acked == 6400  # the third frame arrived, its ack did not
    ws = await http.ws_connect(created["url"])
    seen = await send_and_ack(ws, silence(0.1))  # a resend is appended again
    assert of(seen, "audio_chunk")[0]["data"]["byte_range"] == [9600, 12800]
    await ws.close(code=4000)


async def test_stall_holds_acks(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake)
    fake.stall(created["id"], True)
    await ws.send_bytes(silence(0.1))
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)
    fake.stall(created["id"], False)
    ack = await recv(ws)
    assert ack["data"]["byte_range"] == [0, 3200]
    await ws.close(code=4000)


async def test_send_malformed(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake)
    await fake.send_malformed(created["id"])
    first = await ws.receive(timeout=2)
    assert first.type == aiohttp.WSMsgType.TEXT
    with pytest.raises(ValueError):
        json.loads(first.data)
    second = await recv(ws)
    assert second["type"] not in {"audio_chunk", "transcript"} and second["session_id"] == created["id"]
    await ws.close(code=4000)


# ------------------------------------------------------------------ more


async def test_multichannel_ids_and_channels(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    _, ws = await open_session(http, fake, {"channels": 2, "language_config": {"languages": ["fr"]}})
    voice = np.frombuffer(tone(0.4) + silence(0.2), dtype="<i2")
    stereo = np.stack([np.zeros_like(voice), voice], axis=1).astype("<i2").tobytes()
    seen = await send_and_ack(ws, stereo)
    await ws.close(code=4000)
    (final,) = of(seen, "transcript")
    assert final["data"]["id"] == "01_00000000"
    utterance = final["data"]["utterance"]
    assert utterance["channel"] == 1 and utterance["language"] == "fr" and utterance["end"] == 0.4


async def test_rest_get_and_delete(fake: GladiaFake, http: aiohttp.ClientSession) -> None:
    created, ws = await open_session(http, fake, {"custom_metadata": {"room": "r1"}})
    url = f"{fake.base_url}/v2/live/{created['id']}"
    headers = {"x-gladia-key": KEY}
    async with http.delete(url, headers=headers) as response:
        assert response.status == 403
    await send_and_ack(ws, tone(0.3))
    await ws.send_str(json.dumps({"type": "stop_recording"}))
    await read_to_close(ws)
    async with http.get(url, headers=headers) as response:
        job = await response.json()
    assert job["status"] == "done" and job["custom_metadata"] == {"room": "r1"}
    assert job["result"]["transcription"]["full_transcript"] == "utterance 0 0.00 to 0.30"
    assert any(json.loads(m)["type"] == "post_final_transcript" for m in job["result"]["messages"])
    async with http.get(f"{url}/file", headers=headers) as response:
        assert (await response.read())[:4] == b"RIFF"
    async with http.get(url) as response:
        assert response.status == 401
    async with http.delete(url, headers=headers) as response:
        assert response.status == 202
    async with http.get(url, headers=headers) as response:
        assert response.status == 404


async def test_real_speech_with_a_transcriber(http: aiohttp.ClientSession) -> None:
    heard: list[int] = []

    def transcriber(pcm: bytes) -> str:
        heard.append(len(pcm))
        return f"{len(pcm)} bytes"

    fake = GladiaFake(transcriber=transcriber)
    await fake.start()
    try:
        with wave.open(str(FIXTURES / "beckett_16k.wav"), "rb") as wav:
            speech = wav.readframes(wav.getnframes())
        created, ws = await open_session(http, fake, {"endpointing": 0.3})
        for chunk in chunks(speech, 16000):  # 0.5 s frames keep this fast
            await ws.send_bytes(chunk)
        await ws.send_str(json.dumps({"type": "stop_recording"}))
        seen = await read_to_close(ws, within=5)
        finals = [m["data"]["utterance"] for m in of(seen, "transcript")]
        assert 4 <= len(finals) <= 10  # "Ever tried. Ever failed. No matter. Try again. ..."
        assert all(u["text"] == f" {n} bytes" for u, n in zip(finals, heard, strict=True))
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(finals))
        assert bytes(fake.sessions[created["id"]].received) == speech
    finally:
        await fake.stop()


async def test_missed_messages_lost_or_replayed(http: aiohttp.ClientSession) -> None:
    audio = tone(0.3) + silence(0.1)  # the final is triggered by the last frame
    for replay in (False, True):
        fake = GladiaFake(replay_missed_messages=replay)
        await fake.start()
        try:
            created, ws = await open_session(http, fake)
            fake.drop_after_bytes(None, len(audio))
            seen: list[dict[str, Any]] = []
            for chunk in chunks(audio):
                await ws.send_bytes(chunk)
            seen += await read_to_close(ws)
            assert not of(seen, "transcript")
            assert of(fake.sessions[created["id"]].messages, "transcript")
            ws = await http.ws_connect(created["url"])
            with contextlib.suppress(TimeoutError):
                seen += await read_until(ws, "transcript", within=0.3)
            assert len(of(seen, "transcript")) == (1 if replay else 0)
            await ws.close(code=4000)
        finally:
            await fake.stop()


async def test_resumable_seconds_idle_ends_session_and_takeover(http: aiohttp.ClientSession) -> None:
    fake = GladiaFake(resumable_seconds=0.2, idle_timeout=0.3, idle_ends_session=True)
    await fake.start()
    try:
        created, ws = await open_session(http, fake)
        second = await http.ws_connect(created["url"])  # takes over; the first socket is cut
        msg = await ws.receive(timeout=2)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR) and ws.close_code == 1006
        await second.close(code=4000)
        session = fake.sessions[created["id"]]
        await fake.wait_until(lambda: session.ended)
        assert session.end_reason == "not_resumed" and fake.open_sessions() == 0
        created, ws = await open_session(http, fake)
        await read_to_close(ws)
        assert ws.close_code == 1001 and fake.sessions[created["id"]].end_reason == "idle"
        assert fake.sessions[created["id"]].ended
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("config", "loud", "quiet"),
    [
        ({"encoding": "wav/ulaw", "sample_rate": 8000}, b"\x80\x00", b"\xff\xff"),
        ({"encoding": "wav/alaw", "sample_rate": 8000}, b"\xaa\x2a", b"\xd5\xd5"),
        ({"bit_depth": 24, "sample_rate": 8000}, b"\x00\x00\x40\x00\x00\xc0", bytes(6)),
        ({"bit_depth": 8, "sample_rate": 8000}, b"\xf0\x10", b"\x80\x80"),
    ],
)
async def test_other_encodings_are_decoded(
    fake: GladiaFake, http: aiohttp.ClientSession, config: dict[str, Any], loud: bytes, quiet: bytes
) -> None:
    samples_per_pair = 2
    per_second = 8000 // samples_per_pair
    audio = loud * int(per_second * 0.3) + quiet * int(per_second * 0.2)
    _, ws = await open_session(http, fake, config)
    seen = await send_and_ack(ws, audio)
    await ws.close(code=4000)
    (final,) = of(seen, "transcript")
    assert (final["data"]["utterance"]["start"], final["data"]["utterance"]["end"]) == (0.0, 0.3)
    assert of(seen, "audio_chunk")[-1]["data"]["time_range"][1] == 0.5


async def test_stop_is_prompt_with_open_sockets_stalls_and_post_processing(
    http: aiohttp.ClientSession,
) -> None:
    fake = GladiaFake(post_processing_delay=30)
    await fake.start()
    _, stalled = await open_session(http, fake)
    created, stopping = await open_session(http, fake)
    _, idle = await open_session(http, fake)
    fake.stall(None, True)
    await stalled.send_bytes(silence(0.1))
    fake.stall(None, False)
    fake.stall(next(iter(fake.sessions)), True)
    await stopping.send_str(json.dumps({"type": "stop_recording"}))
    await read_until(stopping, "stop_recording")  # post-processing now waits 30 s
    started = asyncio.get_running_loop().time()
    await fake.stop()
    assert asyncio.get_running_loop().time() - started < 2
    for ws in (stalled, stopping, idle):
        await read_to_close(ws)
        assert ws.closed
    assert not fake.sessions[created["id"]].ended


async def test_messages_config_flags_gate_the_socket(http: aiohttp.ClientSession) -> None:
    fake = GladiaFake(send_start_session=True, ack_empty_chunks=True)
    await fake.start()
    try:
        flags = {
            "receive_acknowledgments": False,
            "receive_speech_events": False,
            "receive_final_transcripts": False,
            "receive_lifecycle_events": True,
        }
        _, ws = await open_session(http, fake, {"messages_config": flags})
        for chunk in chunks(tone(0.3) + silence(0.2)):
            await ws.send_bytes(chunk)
        await ws.send_str(json.dumps({"type": "stop_recording"}))
        types = [m["type"] for m in await read_to_close(ws)]
        assert types == [
            "start_session", "start_recording", "end_recording",
            "post_transcript", "post_final_transcript", "end_session",
        ]  # fmt: skip
        _, ws = await open_session(http, fake)
        await ws.send_str(json.dumps({"type": "audio_chunk", "data": {"chunk": ""}}))
        ack = await recv(ws)  # this fake was told to ack keepalives: an empty range
        assert ack["data"]["byte_range"] == [0, 0] and ack["acknowledged"] is True
        await ws.close(code=4000)
    finally:
        await fake.stop()


async def test_an_utterance_open_at_a_drop_continues_after_the_resume(
    fake: GladiaFake, http: aiohttp.ClientSession
) -> None:
    created, ws = await open_session(http, fake, {"messages_config": {"receive_lifecycle_events": True}})
    audio = tone(1.0) + silence(0.3)
    fake.drop_after_bytes(created["id"], 16000, how="close", code=4000)  # mid-utterance
    for chunk in chunks(audio)[:5]:
        await ws.send_bytes(chunk)
    seen = await read_to_close(ws)
    assert ws.close_code == 4000
    sent_acked = max(a["data"]["byte_range"][1] for a in of(seen, "audio_chunk"))
    assert sent_acked == 12800
    ws = await http.ws_connect(created["url"])
    seen += await send_and_ack(ws, audio[sent_acked:])  # the SDK way: resend everything not acked
    await ws.send_str(json.dumps({"type": "stop_recording"}))
    seen += await read_to_close(ws)
    (final,) = of(seen, "transcript")
    # the resent 0.1 s (3200 bytes) was appended again, so the utterance is 1.1 s long on the session clock
    assert (final["data"]["utterance"]["start"], final["data"]["utterance"]["end"]) == (0.0, 1.1)
    assert len(of(seen, "start_recording")) == 1 and of(seen, "end_session")
    assert len(fake.sessions[created["id"]].received) == len(audio) + 3200
