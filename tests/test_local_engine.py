"""The offline PocketSphinx engine on real speech: accuracy, streaming, the decoder processes, limits.

Decoding runs ~0.2 s of CPU per second of audio, so each recording is decoded once per way of feeding it
(whole, 10 ms pushes, 100 ms pushes) and the results are shared by the tests below.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import logging
import os
import re
import signal
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pocketsphinx
import pytest
from scipy.signal import resample_poly

from agent.engines.base import BYTES_PER_SECOND, EngineError, EngineEvent, Hypothesis, StreamOptions
from agent.engines.local import DecoderSettings, LocalEngine, LocalStream, _is_word, _word_text
from common.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"

#: The first 20.8 s of two_cities: the cut falls in the pause after "despair" (which ends at ~20.45 s,
#: found by decoding the whole 30 s with word times). The reference is the book's text, not a decoder's.
TWO_CITIES_SECONDS = 20.8
TWO_CITIES_TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair"
)
BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."

#: Word error rates: bounds set from measurement (printed by the tests) with a margin. PocketSphinx's
#: generic en-us model does well on the slow, clear two_cities reading and badly on the beckett one.
#: Measured (pocketsphinx 5.1.1, bundled en-us): two_cities whole 0.17, streamed 0.15; beckett whole 1.00,
#: streamed 0.75 (the VAD cuts help it: "fail again" comes out right).
WHOLE_WER_BOUND = {"two_cities": 0.25, "beckett": 1.15}
STREAM_WER_BOUND = {"two_cities": 0.25, "beckett": 0.90}
#: Streaming (VAD-cut utterances) against decoding the whole recording as one utterance. Measured: 0.017
#: (two_cities: one word), 0.40 (beckett: the decoder's guesses on unclear speech move with the context).
STREAM_VS_WHOLE_BOUND = {"two_cities": 0.10, "beckett": 0.55}

OPTIONS = StreamOptions(log_context={"room": "test-room", "participant": "reader", "track": "TR_test"})


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance (substitutions, insertions, deletions) / reference."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1] / max(1, len(ref))


def test_wer_helper() -> None:
    assert wer("it was the best", "It was the BEST!") == 0
    assert wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert wer("a b", "a b c d") == 1.0  # two insertions


def load_pcm(name: str, seconds: float | None = None) -> bytes:
    with wave.open(str(FIXTURES / name)) as wav:
        rate = wav.getframerate()
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if rate != 16_000:
        g = np.gcd(rate, 16_000)
        resampled = resample_poly(samples.astype(np.float64), 16_000 // g, rate // g)
        samples = np.clip(np.round(resampled), -32768, 32767).astype("<i2")
    if seconds is not None:
        samples = samples[: int(seconds * 16_000)]
    return samples.tobytes()


AUDIO = {
    "two_cities": ("two_cities_48k.wav", TWO_CITIES_SECONDS, TWO_CITIES_TEXT),
    "beckett": ("beckett_16k.wav", None, BECKETT_TEXT),
}


@dataclass
class WholeWord:
    text: str
    start: float
    end: float


def decode_whole(pcm: bytes) -> list[WholeWord]:
    """The baseline: one decoder (same settings as the engine's), the whole recording as one utterance."""
    decoder = pocketsphinx.Decoder(**DecoderSettings().decoder_kwargs())
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [
        WholeWord(_word_text(s.word), s.start_frame / 100, (s.end_frame + 1) / 100)
        for s in decoder.seg()
        if _is_word(s.word)
    ]


@dataclass
class StreamRun:
    events: list[EngineEvent] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def finals(self) -> list[Hypothesis]:
        return [e for e in self.events if isinstance(e, Hypothesis) and e.is_final]

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals)


async def stream_through(engine: LocalEngine, pcm: bytes, step_s: float) -> StreamRun:
    """Push `pcm` in `step_s` pieces as fast as the engine takes them, flush, collect every event."""
    stream = engine.open_stream(OPTIONS)
    run = StreamRun(audio_s=len(pcm) / BYTES_PER_SECOND)

    async def consume() -> None:
        async for event in stream.events():
            run.events.append(event)

    consumer = asyncio.create_task(consume())
    started = time.perf_counter()
    step = int(step_s * BYTES_PER_SECOND)
    for offset in range(0, len(pcm), step):
        await stream.push(pcm[offset : offset + step])
    await stream.flush()
    run.wall_s = time.perf_counter() - started
    run.cpu_s = stream.stats().cpu_s
    await stream.aclose()
    await asyncio.wait_for(consumer, 5)
    return run


_whole: dict[str, list[WholeWord]] = {}
_streamed: dict[tuple[str, float], StreamRun] = {}


def whole(name: str) -> list[WholeWord]:
    if name not in _whole:
        file, seconds, _ = AUDIO[name]
        _whole[name] = decode_whole(load_pcm(file, seconds))
    return _whole[name]


async def streamed(name: str, step_s: float) -> StreamRun:
    if (name, step_s) not in _streamed:
        file, seconds, _ = AUDIO[name]
        engine = LocalEngine(decoder_processes=2)
        try:
            _streamed[name, step_s] = await stream_through(engine, load_pcm(file, seconds), step_s)
        finally:
            await engine.aclose()
    return _streamed[name, step_s]


@pytest.mark.parametrize("name", ["two_cities", "beckett"])
async def test_word_error_rate_whole_and_streaming(name: str) -> None:
    reference = AUDIO[name][2]
    whole_text = " ".join(w.text for w in whole(name))
    whole_wer = wer(reference, whole_text)
    print(f"\n{name} whole:  WER {whole_wer:.3f}  {whole_text!r}")
    for step_s in (0.01, 0.1):
        run = await streamed(name, step_s)
        stream_wer = wer(reference, run.text)
        against_whole = wer(whole_text, run.text)
        print(
            f"{name} stream {step_s * 1000:.0f} ms: WER {stream_wer:.3f}, vs whole {against_whole:.3f}, "
            f"{len(run.finals)} finals, RTF {run.cpu_s / run.audio_s:.3f}  {run.text!r}"
        )
        assert stream_wer <= STREAM_WER_BOUND[name]
        assert against_whole <= STREAM_VS_WHOLE_BOUND[name]
    assert whole_wer <= WHOLE_WER_BOUND[name]


async def test_push_size_does_not_change_the_finals() -> None:
    small, large = await streamed("two_cities", 0.01), await streamed("two_cities", 0.1)
    assert [f.text for f in small.finals] == [f.text for f in large.finals]
    assert [(f.start, f.end) for f in small.finals] == [(f.start, f.end) for f in large.finals]


async def test_partials_come_before_their_final_and_grow() -> None:
    run = await streamed("two_cities", 0.1)
    assert len(run.finals) >= 5  # the reader pauses between clauses: one utterance each
    finalised: set[str] = set()
    partials: dict[str, list[Hypothesis]] = {}
    for event in run.events:
        assert isinstance(event, Hypothesis)
        assert event.utterance_id not in finalised, "nothing for an utterance after its final"
        if event.is_final:
            finalised.add(event.utterance_id)
        else:
            partials.setdefault(event.utterance_id, []).append(event)
    with_partials = [f for f in run.finals if partials.get(f.utterance_id)]
    assert len(with_partials) >= len(run.finals) - 1, "every utterance over ~0.5 s shows partials"
    last_partial_wers = []
    for final in with_partials:
        texts = [p.text for p in partials[final.utterance_id]]
        lengths = [len(t.split()) for t in texts]
        # Prefix-ish: the text grows (a word may be revised, so a length may dip now and then).
        assert lengths[-1] >= lengths[0]
        assert sum(b < a for a, b in itertools.pairwise(lengths)) <= len(lengths) // 3
        last_partial_wers.append(wer(final.text, texts[-1]))
        for partial in partials[final.utterance_id]:
            assert partial.start == final.start and partial.end <= final.end
            assert all(w.confidence is None for w in partial.words)
    # The last partial is close to the final; the end-of-utterance pass may still rewrite a word or two
    # (measured: "it was seized non-stop nuts" -> "it was seized mcdonalds").
    print(f"\nlast partial vs final WER per utterance: {[round(w, 2) for w in last_partial_wers]}")
    assert float(np.median(last_partial_wers)) <= 0.2
    assert max(last_partial_wers) <= 0.8


async def test_final_word_times_are_on_the_stream_clock() -> None:
    run = await streamed("two_cities", 0.1)
    previous_end = 0.0
    for final in run.finals:
        assert previous_end <= final.start < final.end <= run.audio_s + 1e-6
        previous_end = final.end
        assert final.words and final.text == " ".join(w.text for w in final.words)
        assert final.language == "en-us"
        assert final.confidence is not None and 0 <= final.confidence <= 1
        last = final.start
        for word in final.words:
            assert final.start <= word.start < word.end <= final.end + 1e-6
            assert word.start >= last - 1e-6
            last = word.end
            assert word.confidence is not None and 0 <= word.confidence <= 1
    # The same words, decoded whole, are at the same times: the utterance offsets are right.
    streamed_words = [w for f in run.finals for w in f.words]
    reference = whole("two_cities")
    matcher = difflib.SequenceMatcher(
        a=[w.text for w in streamed_words], b=[w.text for w in reference], autojunk=False
    )
    shifts = [
        abs(streamed_words[block.a + k].start - reference[block.b + k].start)
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]
    assert len(shifts) >= 40
    print(f"\nword start shift vs whole decode: median {np.median(shifts):.3f} s, max {max(shifts):.3f} s")
    assert float(np.median(shifts)) <= 0.05
    assert max(shifts) <= 0.3


async def test_flush_emits_the_final_of_the_utterance_in_progress() -> None:
    engine = LocalEngine(decoder_processes=1)
    stream = engine.open_stream(OPTIONS)
    events = stream.events()
    pcm = load_pcm("two_cities_48k.wav", TWO_CITIES_SECONDS)
    try:
        await stream.flush()  # nothing pushed: returns at once, emits nothing
        # 1.0-3.6 s: "it was the best of times it was the wor-": cut while the reader is speaking.
        first = pcm[: int(3.6 * BYTES_PER_SECOND)]
        await stream.push(first)
        await stream.flush()
        got: list[Hypothesis] = []
        while not got or not got[-1].is_final:
            event = await asyncio.wait_for(anext(events), 1)
            assert isinstance(event, Hypothesis)
            got.append(event)
        final = got[-1]
        assert "best of times" in final.text
        assert final.end == pytest.approx(3.6, abs=0.01)  # all the pushed speech is in it
        # After a flush the clock goes on: the rest of "worst of times" (to 4.6 s) is a new utterance, then
        # "it was the age of wisdom" (5.0-6.2 s).
        await stream.push(pcm[len(first) : int(6.5 * BYTES_PER_SECOND)])
        await stream.flush()
        finals: list[Hypothesis] = []
        while not finals or "wisdom" not in finals[-1].text:
            event = await asyncio.wait_for(anext(events), 1)
            assert isinstance(event, Hypothesis)
            if event.is_final:
                finals.append(event)
        assert final.utterance_id not in {f.utterance_id for f in finals}
        assert all(3.6 - 1e-6 <= f.start < f.end <= 6.5 + 1e-6 for f in finals)
        assert 4.5 <= finals[-1].start and finals[-1].words[-1].text == "wisdom"
    finally:
        await stream.aclose()
        await engine.aclose()


async def test_decoding_never_blocks_the_event_loop() -> None:
    """A 10 ms ticker sees no long gap while two streams start and decode at full speed.

    Everything slow happens in the decoder processes: starting them (spawn, imports), building each stream's
    decoder (~0.4 s of CPU) and decoding; the loop only queues requests and takes replies. So the probe runs
    from before the first push, decoder creation included. With decoding in pool threads of the agent's own
    process (PocketSphinx holds the GIL), the same probe saw 80-190 ms gaps after warm-up and ~0.4 s at
    decoder creation.
    """
    engine = LocalEngine(decoder_processes=2)
    pcm = load_pcm("two_cities_48k.wav", 10.0)
    gaps: list[tuple[float, float, float]] = []  # (time since the first push, gap, process CPU in it)
    stop = asyncio.Event()
    began = time.perf_counter()

    async def probe() -> None:
        while not stop.is_set():
            before, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(0.01)
            gap = time.perf_counter() - before - 0.01
            gaps.append((before - began, gap, time.process_time() - cpu))

    async def feed(stream: LocalStream) -> None:
        drain = asyncio.create_task(_drain(stream))
        for offset in range(0, len(pcm), 3200):
            await stream.push(pcm[offset : offset + 3200])
        await stream.flush()
        await stream.aclose()
        await drain

    ticker = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    try:
        began = time.perf_counter()
        streams = [engine.open_stream(OPTIONS) for _ in range(2)]
        await asyncio.gather(*(feed(s) for s in streams))
        assert len({s.decoder_process.pid for s in streams}) == 2  # one process each
    finally:
        stop.set()
        await ticker
        await engine.aclose()
    startup = [gap for at, gap, _ in gaps if 0 <= at < 2.0]  # spawning the processes, building the decoders
    lags = sorted(gap for _, gap, _ in gaps)
    busy = max(cpu for _, _, cpu in gaps)  # CPU this process (the loop and our threads) spent within a tick
    print(
        f"\nloop lag while starting and decoding: max {lags[-1] * 1000:.1f} ms (first 2 s: "
        f"{max(startup) * 1000:.1f} ms), p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms, "
        f"median {lags[len(lags) // 2] * 1000:.1f} ms over {len(lags)} ticks; "
        f"most CPU of this process within one tick {busy * 1000:.1f} ms"
    )
    assert len(gaps) > 100 and len(startup) > 50
    # Measured on a shared 2-core machine (two decoder processes at full speed, other work besides): max gap
    # 6-32 ms in most runs, median 0.2-1.2 ms, at most 5-8 ms of this process's CPU within one tick. Now and
    # then a gap of 60-800 ms, with under 1 ms of this process's CPU in it: the OS ran other processes (more
    # runnable than cores); nothing of ours held the loop. The same probe on decoding in threads: max gaps
    # 470-500 ms (decoder creation) and p99 120-140 ms, each one CPU of ours (a decoder call holding the GIL).
    # So: bound the CPU we spend within a tick, and every gap in which this process was mostly running.
    assert busy < 0.03
    assert lags[len(lags) // 2] < 0.005
    held = [(at, gap, cpu) for at, gap, cpu in gaps if gap > 0.03 and cpu > gap / 2]
    assert not held, f"gaps of our own making: {held}"


async def _drain(stream: LocalStream) -> None:
    async for _ in stream.events():
        pass


async def test_backlog_is_bounded_and_saturation_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    engine = LocalEngine(decoder_processes=1, max_pending_seconds=0.5, lag_warning_seconds=0.3)
    pcm = load_pcm("two_cities_48k.wav", 6.0)
    streams = [engine.open_stream(OPTIONS) for _ in range(2)]
    drains = [asyncio.create_task(_drain(s)) for s in streams]
    backlogs: list[float] = []

    async def feed(index: int) -> None:
        stream = streams[index]
        for offset in range(0, len(pcm), 1600):
            await stream.push(pcm[offset : offset + 1600])
            backlogs.append(max(s.backlog_s for s in engine.stats().streams))
        await stream.flush()

    with caplog.at_level(logging.WARNING, logger="agent.engines.local"):
        await asyncio.gather(feed(0), feed(1))
    stats = engine.stats()
    print(f"\nmax backlog {max(backlogs):.2f} s, saturation events {stats.saturation_events}")
    # Push waited instead of queueing more: at most max_pending_seconds waiting + the chunk being decoded.
    assert max(backlogs) <= 0.5 + engine.chunk_seconds + 1e-6
    assert stats.workers == 1 and len(stats.streams) == 2
    assert stats.saturation_events >= 1 and stats.cpu_s > 0
    assert all(s.backlog_s == 0 and s.decoded_s == pytest.approx(6.0) for s in stats.streams)
    warnings = [r for r in caplog.records if r.getMessage() == "local speech engine behind real time"]
    assert warnings and all(getattr(r, "room", None) == "test-room" for r in warnings)
    assert getattr(warnings[0], "track", None) == "TR_test"
    for stream in streams:
        await stream.aclose()
    await asyncio.gather(*drains)
    await engine.aclose()
    assert engine.stats().saturation_events == stats.saturation_events  # kept after the streams close


async def test_aclose_stops_everything_without_flushing() -> None:
    engine = LocalEngine(decoder_processes=1)
    stream = engine.open_stream(OPTIONS)
    events: list[EngineEvent] = []

    async def consume() -> None:
        async for event in stream.events():
            events.append(event)

    consumer = asyncio.create_task(consume())
    pcm = load_pcm("beckett_16k.wav")
    await stream.push(pcm[: 2 * BYTES_PER_SECOND])
    worker = stream._worker
    assert worker is not None and not worker.done()
    await stream.aclose()
    await asyncio.wait_for(consumer, 2)  # events() ended
    assert worker.done()
    assert stream._in_flight is None or stream._in_flight.done()  # no decoder call left running
    assert not any(isinstance(e, Hypothesis) and e.is_final for e in events)  # aclose does not flush
    with pytest.raises(EngineError):
        await stream.push(pcm[:3200])
    assert engine.stats().streams == ()
    await engine.aclose()
    with pytest.raises(EngineError):
        engine.open_stream(OPTIONS)


async def test_built_from_settings_and_checks_the_model_path(tmp_path: Path) -> None:
    engine = LocalEngine.from_settings(Settings(local_language="en-gb", local_decoder_processes=3))
    assert engine.language == "en-gb" and engine.decoder_processes == 3
    assert engine.decoder_settings.model_path is None  # pocketsphinx's bundled en-us model
    await engine.aclose()
    with pytest.raises(EngineError):
        LocalEngine(model_path=str(tmp_path))
    bundled = Path(pocketsphinx.get_model_path()) / "en-us"
    engine = LocalEngine(model_path=str(bundled))
    kwargs = engine.decoder_settings.decoder_kwargs()
    assert Path(kwargs["hmm"]).name == "en-us" and kwargs["lm"].endswith(".lm.bin")
    await engine.aclose()


async def _started(stream: LocalStream) -> int:
    """The pid of the stream's decoder process, once its first push has started it."""
    for _ in range(500):
        if stream.decoder_process.pid is not None:
            return stream.decoder_process.pid
        await asyncio.sleep(0.02)
    raise AssertionError("the decoder process did not start")


async def test_a_dead_decoder_process_fails_its_streams_only(caplog: pytest.LogCaptureFixture) -> None:
    engine = LocalEngine(decoder_processes=2)
    pcm = load_pcm("two_cities_48k.wav", 5.0)
    doomed, survivor = engine.open_stream(OPTIONS), engine.open_stream(OPTIONS)
    assert doomed.decoder_process is not survivor.decoder_process  # one process each
    survivor_events: list[EngineEvent] = []

    async def consume() -> None:
        async for event in survivor.events():
            survivor_events.append(event)

    consumer = asyncio.create_task(consume())
    try:
        with caplog.at_level(logging.WARNING, logger="agent.engines.local"):
            await doomed.push(pcm[:BYTES_PER_SECOND])
            await survivor.push(pcm[:BYTES_PER_SECOND])
            pid = await _started(doomed)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(EngineError, match=rf"decoder process {pid} .*died \(killed by SIGKILL\)"):
                async with asyncio.timeout(5):
                    async for _ in doomed.events():
                        pass
            with pytest.raises(EngineError):
                await doomed.push(pcm[:3200])
            # The other process goes on: the survivor's speech comes out ("it was the best of times ...").
            await survivor.push(pcm[BYTES_PER_SECOND:])
            await survivor.flush()
            # A new stream gets a fresh process in place of the dead one.
            newcomer = engine.open_stream(OPTIONS)
            assert newcomer.decoder_process is not doomed.decoder_process
            drain = asyncio.create_task(_drain(newcomer))
            await newcomer.push(pcm[: 2 * BYTES_PER_SECOND])
            await newcomer.flush()
            assert newcomer.stats().decoded_s == pytest.approx(2.0)
            assert await _started(newcomer) != pid
            await newcomer.aclose()
            await drain
        finals = [e for e in survivor_events if isinstance(e, Hypothesis) and e.is_final]
        assert any("best of times" in f.text for f in finals)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # one line, for the doomed stream
        assert "died" in errors[0].getMessage() and getattr(errors[0], "room", None) == "test-room"
        assert getattr(errors[0], "stream", None) == str(doomed.stream_id)
    finally:
        await doomed.aclose()
        await survivor.aclose()
        await consumer
        await engine.aclose()


async def test_engine_aclose_stops_its_processes_and_kills_a_stuck_one() -> None:
    engine = LocalEngine(decoder_processes=2, stop_timeout=0.5)
    streams = [engine.open_stream(OPTIONS) for _ in range(2)]
    drains = [asyncio.create_task(_drain(s)) for s in streams]
    for stream in streams:
        await stream.push(bytes(3200))
        await stream.flush()
    pids = [await _started(s) for s in streams]
    assert sorted(pids) == sorted(p for p in engine.process_ids if p is not None)
    os.kill(pids[1], signal.SIGSTOP)  # stuck: it cannot read its stop request
    started = time.perf_counter()
    await engine.aclose()  # closes the streams; the stuck process is killed after stop_timeout
    took = time.perf_counter() - started
    await asyncio.gather(*drains)
    print(f"\nengine aclose with one stuck process took {took:.2f} s")
    assert took < 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # exited (or killed) and reaped
