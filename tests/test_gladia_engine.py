"""GladiaEngine against the local Gladia fake (tests/fakes/gladia_fake.py), with real speech."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from agent.engines.base import (
    BYTES_PER_SECOND,
    AudioGap,
    EngineError,
    EngineEvent,
    EngineStream,
    Hypothesis,
    StreamOptions,
)
from agent.engines.gladia import GladiaEngine, GladiaTuning
from tests.fakes.gladia_fake import FakeSession, GladiaFake

KEY = "test-gladia-key"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "beckett_16k.wav"
CHUNK = 3200  # 100 ms
LOG_CONTEXT = {"room": "r-gladia", "participant": "alice", "track": "TR_1"}


def speech() -> bytes:
    with wave.open(str(FIXTURE), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


def tuning(**overrides: Any) -> GladiaTuning:
    knobs: dict[str, Any] = {
        "backoff_base": 0.02,
        "backoff_cap": 0.2,
        "stop_timeout": 5.0,
        "flush_timeout": 8.0,
        "connect_timeout": 3.0,
        "http_timeout": 3.0,
    }
    knobs.update(overrides)
    return GladiaTuning(**knobs)


class Collector:
    """Reads a stream's events in the background."""

    def __init__(self, stream: EngineStream) -> None:
        self.items: list[EngineEvent] = []
        self.error: EngineError | None = None
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: EngineStream) -> None:
        try:
            async for event in stream.events():
                self.items.append(event)
        except EngineError as exc:
            self.error = exc

    @property
    def finals(self) -> list[Hypothesis]:
        return [e for e in self.items if isinstance(e, Hypothesis) and e.is_final]

    @property
    def partials(self) -> list[Hypothesis]:
        return [e for e in self.items if isinstance(e, Hypothesis) and not e.is_final]

    @property
    def gaps(self) -> list[AudioGap]:
        return [e for e in self.items if isinstance(e, AudioGap)]

    async def finished(self) -> None:
        await asyncio.wait_for(self.task, 10.0)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def push_paced(stream: EngineStream, pcm: bytes, pause: float = 0.002, chunk: int = CHUNK) -> None:
    for i in range(0, len(pcm), chunk):
        await stream.push(pcm[i : i + chunk])
        await asyncio.sleep(pause)


@pytest.fixture
async def fake() -> AsyncIterator[GladiaFake]:
    server = GladiaFake(api_key=KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engines() -> AsyncIterator[list[GladiaEngine]]:
    made: list[GladiaEngine] = []
    yield made
    for engine in made:
        await engine.aclose()


def open_stream(
    fake: GladiaFake, engines: list[GladiaEngine], key: str = KEY, **knobs: Any
) -> tuple[EngineStream, Collector]:
    engine = GladiaEngine(key, fake.base_url, tuning=tuning(**knobs))
    engines.append(engine)
    stream = engine.open_stream(StreamOptions(languages=("en",), endpointing=0.3, log_context=LOG_CONTEXT))
    return stream, Collector(stream)


def only_session(fake: GladiaFake) -> FakeSession:
    assert len(fake.sessions) == 1, fake.sessions.keys()
    return next(iter(fake.sessions.values()))


def remove_resend_overlaps(
    received: bytes, pushed: bytes, max_overlap: int
) -> tuple[bytes, list[tuple[int, int]]]:
    """Walk ``received`` against ``pushed``; where it jumps back (a resend after a drop) by at most
    ``max_overlap`` bytes, skip the repeated bytes. Returns the de-duplicated bytes and the overlaps found
    as ``(position in received, length)``."""
    rec = np.frombuffer(received, dtype=np.uint8)
    ref = np.frombuffer(pushed, dtype=np.uint8)
    out = bytearray()
    i = j = 0  # i in pushed, j in received
    overlaps: list[tuple[int, int]] = []
    while j < len(rec):
        n = min(len(rec) - j, len(ref) - i)
        mismatch = np.flatnonzero(rec[j : j + n] != ref[i : i + n])
        run = int(mismatch[0]) if len(mismatch) else n
        out += received[j : j + run]
        i += run
        j += run
        if j >= len(rec):
            break
        # a jump back: find the resend start b in [i - max_overlap, i) with received[j:] == pushed[b:]
        for back in range(2, max_overlap + 1, 2):
            b = i - back
            if b < 0:
                break
            m = min(back, len(rec) - j)
            if np.array_equal(rec[j : j + m], ref[b : b + m]):
                overlaps.append((j, back))
                j += back  # the repeated bytes pushed[b:i]
                break
        else:
            raise AssertionError(f"received diverges from pushed at pushed byte {i}, received byte {j}")
    return bytes(out), overlaps


# -- init failures ------------------------------------------------------------------------------------------


async def test_bad_key_stops_with_one_error_and_no_retry(
    fake: GladiaFake, engines: list[GladiaEngine], caplog: pytest.LogCaptureFixture
) -> None:
    stream, events = open_stream(fake, engines, key="wrong-key")
    with caplog.at_level(logging.WARNING, logger="agent.engines.gladia"):
        with contextlib.suppress(EngineError):
            await stream.push(speech()[: 2 * BYTES_PER_SECOND])
        await events.finished()
        await asyncio.sleep(0.3)  # any retry would show now
    assert isinstance(events.error, EngineError)
    assert "401" in str(events.error)
    assert fake.init_requests == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "wrong-key" not in caplog.text
    with pytest.raises(EngineError):
        await stream.push(b"\0" * CHUNK)


@pytest.mark.parametrize("status", [400, 422])
async def test_invalid_settings_stop_with_engine_error(
    fake: GladiaFake, engines: list[GladiaEngine], status: int
) -> None:
    fake.fail_next_inits(status)
    stream, events = open_stream(fake, engines)
    with contextlib.suppress(EngineError):
        await stream.push(speech()[: 2 * BYTES_PER_SECOND])
    await events.finished()
    assert isinstance(events.error, EngineError)
    assert str(status) in str(events.error)
    if status == 400:
        assert "injected failure" in str(events.error)  # the validation_errors are in the message
    assert fake.init_requests == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_transient_init_failures_are_retried(
    fake: GladiaFake, engines: list[GladiaEngine], status: int
) -> None:
    fake.fail_next_inits(status, 2)
    stream, events = open_stream(fake, engines)
    pcm = speech()[: 4 * BYTES_PER_SECOND]
    await push_paced(stream, pcm)
    await stream.flush()
    assert events.error is None
    assert fake.init_requests == 3
    session = only_session(fake)
    assert bytes(session.received) == pcm  # audio was buffered through the failures
    await until(lambda: len(events.finals) >= 1)


# -- parsing ------------------------------------------------------------------------------------------------


async def test_partials_and_finals_on_the_stream_clock(fake: GladiaFake, engines: list[GladiaEngine]) -> None:
    stream, events = open_stream(fake, engines)
    pcm = speech()
    await push_paced(stream, pcm, pause=0, chunk=320)  # 10 ms frames, as the pipeline pushes them
    await stream.flush()
    first = only_session(fake)
    assert first.ended
    assert first.config["messages_config"]["receive_partial_transcripts"] is True
    assert first.config["maximum_duration_without_endpointing"] == 15
    assert first.config["language_config"] == {"languages": ["en"], "code_switching": False}
    await until(lambda: len(events.finals) == len(first.finals))
    assert events.partials, "partials are enabled"
    fake_finals = [m["data"]["utterance"] for m in first.finals]
    for hyp, utt in zip(events.finals, fake_finals, strict=True):
        assert hyp.text == utt["text"].strip() and not hyp.text.startswith(" ")
        assert hyp.start == pytest.approx(utt["start"], abs=1e-3)
        assert hyp.end == pytest.approx(utt["end"], abs=1e-3)
        assert hyp.language == "en" and hyp.confidence == pytest.approx(0.9)
        assert [w.text for w in hyp.words] == hyp.text.split()
        assert hyp.words[0].start == pytest.approx(utt["start"], abs=1e-3)
    final_ids = {h.utterance_id for h in events.finals}
    assert {h.utterance_id for h in events.partials} <= final_ids

    # after a flush, the next push opens a new session whose clock starts at 0: times must continue
    await push_paced(stream, pcm)
    await stream.flush()
    assert len(fake.sessions) == 2
    second = next(s for s in fake.sessions.values() if s is not first)
    assert bytes(second.received) == pcm
    await until(lambda: len(events.finals) == len(first.finals) + len(second.finals))
    later = events.finals[len(first.finals) :]
    offset = len(pcm) / BYTES_PER_SECOND
    for hyp, msg in zip(later, second.finals, strict=True):
        assert hyp.start == pytest.approx(msg["data"]["utterance"]["start"] + offset, abs=1e-3)
    assert len({h.utterance_id for h in events.finals}) == len(events.finals)


async def test_init_body_carries_custom_vocabulary(fake: GladiaFake, engines: list[GladiaEngine]) -> None:
    engine = GladiaEngine(KEY, fake.base_url, region="eu-west", tuning=tuning())
    engines.append(engine)
    options = StreamOptions(
        languages=("en", "fr"),
        code_switching=True,
        endpointing=0.5,
        custom_vocabulary=("Gladia", "Beckett"),
        log_context=LOG_CONTEXT,
    )
    stream = engine.open_stream(options)
    await push_paced(stream, speech()[: 2 * BYTES_PER_SECOND])
    await stream.flush()
    config = only_session(fake).config
    assert config["realtime_processing"] == {
        "custom_vocabulary": True,
        "custom_vocabulary_config": {"vocabulary": ["Gladia", "Beckett"]},
    }
    assert config["language_config"] == {"languages": ["en", "fr"], "code_switching": True}
    assert config["endpointing"] == 0.5
    assert config["custom_metadata"] == LOG_CONTEXT
    assert (config["encoding"], config["bit_depth"], config["sample_rate"], config["channels"]) == (
        "wav/pcm",
        16,
        16000,
        1,
    )
    flags = config["messages_config"]
    assert all(flags[k] for k in ("receive_partial_transcripts", "receive_final_transcripts"))
    assert all(flags[k] for k in ("receive_acknowledgments", "receive_speech_events"))
    await stream.aclose()


async def test_malformed_frames_are_logged_and_skipped(
    fake: GladiaFake, engines: list[GladiaEngine], caplog: pytest.LogCaptureFixture
) -> None:
    stream, events = open_stream(fake, engines)
    pcm = speech()
    with caplog.at_level(logging.DEBUG, logger="agent.engines.gladia"):
        await push_paced(stream, pcm[: 3 * BYTES_PER_SECOND])
        await until(lambda: len(fake.sessions) == 1 and only_session(fake).connected)
        await fake.send_malformed(only_session(fake).id)
        await push_paced(stream, pcm[3 * BYTES_PER_SECOND :])
        await stream.flush()
    assert events.error is None
    assert bytes(only_session(fake).received) == pcm
    await until(lambda: len(events.finals) == len(only_session(fake).finals))
    malformed = [r for r in caplog.records if r.getMessage() == "gladia malformed message skipped"]
    assert len(malformed) == 1
    assert getattr(malformed[0], "room", None) == "r-gladia"
    assert getattr(malformed[0], "track", None) == "TR_1"
    unknown = [r for r in caplog.records if r.getMessage() == "gladia message of unknown type"]
    assert unknown and unknown[0].levelno == logging.DEBUG


# -- drops and resume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_drops_mid_utterance_lose_no_audio(
    fake: GladiaFake, engines: list[GladiaEngine], how: str
) -> None:
    stream, events = open_stream(fake, engines)
    pcm = speech()
    marks = [int(s * BYTES_PER_SECOND) for s in (1.5, 3.7, 6.2)]  # inside utterances
    fake.drop_after_bytes(None, marks[0], how=how, code=1011)  # type: ignore[arg-type]
    pushed = 0
    for i in range(0, len(pcm), CHUNK):
        await stream.push(pcm[i : i + CHUNK])
        pushed += CHUNK
        await asyncio.sleep(0.002)
        if fake.sessions:
            session = only_session(fake)
            while marks and len(session.received) >= marks[0]:
                marks.pop(0)
                if marks:  # arm the next drop once the previous one fired
                    fake.drop_after_bytes(session.id, marks[0], how=how, code=1011)  # type: ignore[arg-type]
    await stream.flush()
    session = only_session(fake)
    assert not marks, "every drop fired"
    assert session.connections == 4
    if how == "close":
        assert session.client_close_codes.count(1000) <= 1  # we never ended the session to resume it
    deduped, overlaps = remove_resend_overlaps(bytes(session.received), pcm, max_overlap=2 * CHUNK)
    assert deduped == pcm
    assert len(overlaps) == 3  # each drop repeated the frame in flight, and only that
    assert events.error is None
    await until(lambda: len(events.finals) >= 3)
    ids = [h.utterance_id for h in events.finals]
    assert len(ids) == len(set(ids))

    def to_stream_clock(session_seconds: float) -> float:
        """The fake's session clock counts the repeated bytes; the stream clock does not."""
        at = session_seconds * BYTES_PER_SECOND
        return (at - sum(n for pos, n in overlaps if pos + n <= at)) / BYTES_PER_SECOND

    by_id = {m["data"]["id"]: m["data"]["utterance"] for m in session.finals}
    for hyp in events.finals:
        utt = by_id[hyp.utterance_id.split(":", 1)[1]]
        assert hyp.start == pytest.approx(to_stream_clock(utt["start"]), abs=2e-3)
        assert hyp.end == pytest.approx(to_stream_clock(utt["end"]), abs=2e-3)


async def test_a_long_backlog_is_resent_in_frames_of_at_most_512_kib(
    fake: GladiaFake, engines: list[GladiaEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    original = aiohttp.ClientWebSocketResponse.send_bytes

    async def recording(
        self: aiohttp.ClientWebSocketResponse, data: bytes, *args: Any, **kwargs: Any
    ) -> None:
        sizes.append(len(data))
        await original(self, data, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientWebSocketResponse, "send_bytes", recording)
    stream, events = open_stream(fake, engines)
    pcm = speech()
    long = (pcm * 3)[: 25 * BYTES_PER_SECOND]  # 800 kB
    await push_paced(stream, long[:BYTES_PER_SECOND])
    await until(lambda: len(fake.sessions) == 1 and only_session(fake).connected)
    session = only_session(fake)
    fake.stall(session.id, True)  # nothing more is read or acked
    await push_paced(stream, long[BYTES_PER_SECOND:], pause=0)
    await fake.drop(session.id, how="abort")
    fake.stall(session.id, False)
    await stream.flush()
    assert max(sizes) <= 512 * 1024
    assert max(sizes) > 100 * CHUNK  # the resend went out in big frames, not 100 ms chunks
    assert session.connections >= 2
    deduped, _ = remove_resend_overlaps(bytes(session.received), long, max_overlap=len(long))
    assert deduped == long
    assert events.error is None


@pytest.mark.parametrize("how", ["close-4401", "close-1000", "refused"])
async def test_session_gone_opens_a_new_session_with_the_unacked_audio(
    fake: GladiaFake, engines: list[GladiaEngine], how: str
) -> None:
    """4400-4499 or an unrequested 1000 close, or a handshake refused (403): a new session gets the
    un-acked audio, and its times continue the stream clock."""
    knobs: dict[str, Any] = {}
    if how == "refused":
        fake.resumable_seconds = 0.0  # the fake ends a session as soon as its socket is gone
        knobs["backoff_base"] = 0.4  # reconnect only after the fake has ended it
    stream, events = open_stream(fake, engines, **knobs)
    pcm = speech()
    half = 4 * BYTES_PER_SECOND
    await push_paced(stream, pcm[:half])
    await until(lambda: len(fake.sessions) == 1 and len(only_session(fake).received) == half)
    first = only_session(fake)
    fake.stall(first.id, True)  # what is sent now is never acked
    await push_paced(stream, pcm[half : half + 2 * BYTES_PER_SECOND])
    if how == "refused":
        await fake.drop(first.id, how="abort")
    else:
        await fake.drop(first.id, how="close", code=int(how.split("-")[1]))
    fake.stall(first.id, False)
    await push_paced(stream, pcm[half + 2 * BYTES_PER_SECOND :])
    await stream.flush()
    assert len(fake.sessions) == 2
    second = next(s for s in fake.sessions.values() if s is not first)
    assert first.connections == 1  # not resumed
    assert bytes(first.received) + bytes(second.received) == pcm
    await until(lambda: len(events.finals) >= len(second.finals) and bool(second.finals))
    offset = len(first.received) / BYTES_PER_SECOND
    expected = [m["data"]["utterance"]["start"] + offset for m in second.finals]
    got = [h.start for h in events.finals if h.start >= offset - 0.5][-len(expected) :]
    assert got == pytest.approx(expected, abs=1e-3)
    ids = [h.utterance_id for h in events.finals]
    assert len(ids) == len(set(ids))


async def test_rotates_to_a_new_session_at_a_pause(fake: GladiaFake, engines: list[GladiaEngine]) -> None:
    stream, events = open_stream(fake, engines, rotate_after=1.0, pause_seconds=0.2)
    pcm = speech()
    await push_paced(stream, pcm, pause=0.03)  # ~3 s of wall time
    await stream.flush()
    sessions = sorted(fake.sessions.values(), key=lambda s: s.created_monotonic)
    assert len(sessions) >= 2
    assert all(s.ended for s in sessions)
    assert b"".join(bytes(s.received) for s in sessions) == pcm  # nothing lost or repeated at the switch
    await until(lambda: len(events.finals) == sum(len(s.finals) for s in sessions))
    offset = 0
    expected: list[float] = []
    for s in sessions:
        expected += [m["data"]["utterance"]["start"] + offset / BYTES_PER_SECOND for m in s.finals]
        offset += len(s.received)
    assert [h.start for h in events.finals] == pytest.approx(expected, abs=1e-3)


async def test_aclose_ends_the_gladia_session(fake: GladiaFake, engines: list[GladiaEngine]) -> None:
    stream, events = open_stream(fake, engines)
    await push_paced(stream, speech()[: 2 * BYTES_PER_SECOND])
    await until(lambda: len(fake.sessions) == 1 and only_session(fake).connected)
    await stream.aclose()
    await events.finished()
    session = only_session(fake)
    await until(lambda: session.ended)
    assert session.stopped  # stop_recording, not a resumable close that would hold the session
    assert all(code == 1000 for code in session.client_close_codes)
    assert fake.open_sessions() == 0


async def test_buffer_overflow_emits_an_audio_gap(
    fake: GladiaFake, engines: list[GladiaEngine], caplog: pytest.LogCaptureFixture
) -> None:
    stream, events = open_stream(fake, engines, max_buffer_seconds=1.0, push_timeout=0.05)
    pcm = speech()
    with caplog.at_level(logging.WARNING, logger="agent.engines.gladia"):
        await push_paced(stream, pcm[:BYTES_PER_SECOND])
        await until(lambda: len(fake.sessions) == 1 and only_session(fake).connected)
        fake.stall(None, True)
        await push_paced(stream, pcm[BYTES_PER_SECOND : 4 * BYTES_PER_SECOND])
        fake.stall(None, False)
        await push_paced(stream, pcm[4 * BYTES_PER_SECOND :])
        await stream.flush()
    await until(lambda: bool(events.gaps))
    gaps = events.gaps
    assert all(g.reason == "gladia buffer overflow" for g in gaps)
    assert all(0.0 <= g.start < g.end <= 4.0 for g in gaps)
    assert sum(g.end - g.start for g in gaps) >= 1.0  # 3 s pushed into a 1 s buffer
    assert any(r.getMessage() == "gladia audio dropped: buffer full" for r in caplog.records)
    assert events.error is None
    await until(lambda: bool(events.finals))


# -- silence ------------------------------------------------------------------------------------------------


async def test_silence_closes_the_session_and_speech_reopens_it_with_pre_roll(
    fake: GladiaFake, engines: list[GladiaEngine]
) -> None:
    stream, events = open_stream(fake, engines, silence_close_after=0.5, pre_roll_seconds=0.5)
    pcm = speech()
    words = pcm[: int(2.7 * BYTES_PER_SECOND)]  # ends inside a pause
    silence = b"\0" * (2 * BYTES_PER_SECOND)
    await push_paced(stream, words + silence)
    await until(lambda: len(fake.sessions) == 1 and only_session(fake).ended)
    assert fake.open_sessions() == 0  # the silent participant holds no Gladia session
    first = only_session(fake)
    await push_paced(stream, words)
    await stream.flush()
    assert len(fake.sessions) == 2
    second = next(s for s in fake.sessions.values() if s is not first)
    everything = words + silence + words
    received = bytes(second.received)
    assert everything.endswith(received)
    # the whole of the words (whose first 0.34 s are quiet) and, before them, the rest of the 0.5 s pre-roll
    pre = int(0.1 * BYTES_PER_SECOND)
    assert len(received) >= len(words) + pre
    assert received[:pre] == b"\0" * pre
    await until(lambda: len(events.finals) == len(first.finals) + len(second.finals))
    offset = (len(everything) - len(received)) / BYTES_PER_SECOND
    later = events.finals[len(first.finals) :]
    assert later[0].start == pytest.approx(second.finals[0]["data"]["utterance"]["start"] + offset, abs=1e-3)
    assert later[0].start >= len(words + silence) / BYTES_PER_SECOND


async def test_keepalive_then_idle_close_when_no_audio_is_pushed(
    fake: GladiaFake, engines: list[GladiaEngine]
) -> None:
    stream, events = open_stream(fake, engines, keepalive_interval=0.2, silence_close_after=1.5)
    await push_paced(stream, speech()[: 2 * BYTES_PER_SECOND])
    await until(lambda: len(fake.sessions) == 1 and only_session(fake).keepalives >= 2)
    session = only_session(fake)
    assert not session.ended
    await until(lambda: session.ended)
    assert fake.open_sessions() == 0
    assert events.error is None


# -- flush --------------------------------------------------------------------------------------------------


async def test_flush_emits_the_finals_before_returning(fake: GladiaFake, engines: list[GladiaEngine]) -> None:
    engine = GladiaEngine(KEY, fake.base_url, tuning=tuning())
    engines.append(engine)
    stream = engine.open_stream(StreamOptions(log_context=LOG_CONTEXT))
    pcm = speech()[: int(2.0 * BYTES_PER_SECOND)]  # cut mid-utterance: only the stop closes it
    await push_paced(stream, pcm)
    await stream.flush()
    session = only_session(fake)
    assert session.ended and session.stopped
    await stream.aclose()
    items = [event async for event in stream.events()]  # everything already queued when flush returned
    finals = [e for e in items if isinstance(e, Hypothesis) and e.is_final]
    assert len(finals) == len(session.finals) >= 2
    assert finals[-1].end == pytest.approx(session.finals[-1]["data"]["utterance"]["end"], abs=1e-3)
