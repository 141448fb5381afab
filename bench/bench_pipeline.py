"""Agent pipeline benchmark with an instant engine.

N tracks of real speech (frames of the 48 kHz fixture as the pipeline asks LiveKit for them, 20 ms,
paced in real time) run through the real
TrackPipeline: resampler → engine stream → transcript events → publisher/store. The engine answers
instantly (a partial every 100 ms of audio, a final every 2 s), so what is measured is roomscribe's
own pipeline: CPU per speaking track, how many tracks one core carries, and the added latency from the
frame that completes a hypothesis to its caption being handed to the room publisher (the LiveKit FFI
publish itself is not included). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_pipeline.py [--tracks 50 100 200 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from livekit import rtc

from agent.engines.base import EngineEvent, EngineStream, Hypothesis, SpeechEngine, StreamOptions
from agent.publisher import RoomPublisher
from agent.store import TranscriptStore
from agent.track_pipeline import FRAME_MS, TrackPipeline
from agent.transcript import Speaker, TranscriptEvent

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "two_cities_48k.wav"
FRAME = 48 * FRAME_MS  # samples per frame at 48 kHz


class FrameClock:
    """When the newest frame of one track was handed to the pipeline."""

    def __init__(self) -> None:
        self.last_frame_at = 0.0


class RealTimeFrames:
    """Frames of the fixture, yielded on a real-time schedule."""

    def __init__(self, samples: np.ndarray, seconds: float, clock: FrameClock, offset: int) -> None:
        self._frames = [
            rtc.AudioFrame(samples[i : i + FRAME].tobytes(), 48_000, 1, FRAME)
            for i in range(0, int(seconds * 48_000) - FRAME + 1, FRAME)
        ]
        self._clock = clock
        self._offset = offset
        self.late_frames = 0

    def __aiter__(self) -> AsyncIterator[rtc.AudioFrameEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[rtc.AudioFrameEvent]:
        start = time.perf_counter() + (self._offset % 100) / 100 * FRAME_MS / 1000  # spread over a frame
        for index, frame in enumerate(self._frames):
            due = start + index * FRAME_MS / 1000
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                self.late_frames += 1
            self._clock.last_frame_at = time.perf_counter()
            yield rtc.AudioFrameEvent(frame)

    async def aclose(self) -> None:
        return None


class InstantStream(EngineStream):
    def __init__(self, track: int, clock: FrameClock, emitted_at: dict[str, float]) -> None:
        self._track = track
        self._queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue(maxsize=64)
        self._clock = clock
        self._emitted_at = emitted_at
        self._bytes = 0
        self._utterance = 0

    async def push(self, pcm: bytes) -> None:
        before = self._bytes // 3200
        self._bytes += len(pcm)
        position = self._bytes / 32_000
        if self._bytes // 3200 == before:
            return
        final = self._bytes // 64_000 > (self._bytes - len(pcm)) // 64_000
        utterance_id = f"u{self._utterance}"
        key = f"{self._track}:{utterance_id}:{position:.2f}"
        self._emitted_at[key] = self._clock.last_frame_at
        await self._queue.put(
            Hypothesis(utterance_id, f"words {key}", final, self._utterance * 2.0, position, "en", 0.9)
        )
        if final:
            self._utterance += 1

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._queue.put(None)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._queue.get()) is not None:
            yield event


class InstantEngine(SpeechEngine):
    name = "instant"

    def __init__(self) -> None:
        self.clocks: list[FrameClock] = []
        self.emitted_at: dict[str, float] = {}

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return InstantStream(len(self.clocks) - 1, self.clocks[-1], self.emitted_at)


class LatencyPublisher(RoomPublisher):
    def __init__(self, emitted_at: dict[str, float]) -> None:
        self._emitted_at = emitted_at
        self.latencies: list[float] = []

    async def publish(self, event: TranscriptEvent) -> bool:
        key = event.text.removeprefix("words ")
        self.latencies.append(time.perf_counter() - self._emitted_at.pop(key))
        return True


class CountingStore(TranscriptStore):
    def __init__(self) -> None:
        self.finals = 0

    def add_final(self, event: TranscriptEvent) -> None:
        self.finals += 1


async def run(tracks: int, seconds: float, samples: np.ndarray) -> dict[str, float]:
    engine = InstantEngine()
    publisher = LatencyPublisher(engine.emitted_at)
    store = CountingStore()
    sources: list[RealTimeFrames] = []
    pipelines: list[TrackPipeline] = []
    for index in range(tracks):
        clock = FrameClock()
        engine.clocks.append(clock)
        source = RealTimeFrames(samples, seconds, clock, index)
        sources.append(source)
        speaker = Speaker(room="bench", identity=f"p{index}", name=f"P{index}", track_sid=f"TR_{index}")
        pipelines.append(
            TrackPipeline(
                speaker=speaker,
                audio=source,
                engine=engine,
                options=StreamOptions(),
                publisher=publisher,
                store=store,
            )
        )
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for pipeline in pipelines:
        pipeline.start()
    await asyncio.sleep(seconds + 0.2)
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    await asyncio.gather(*(pipeline.stop(1.0) for pipeline in pipelines))
    latencies = np.array(publisher.latencies) * 1000
    return {
        "tracks": tracks,
        "cpu_share": cpu / wall,
        "cpu_ms_per_track_s": cpu * 1000 / (tracks * seconds),
        "late_frames": sum(source.late_frames for source in sources),
        "captions": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "finals": store.finals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # one core
    with wave.open(str(FIXTURE), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    print(f"pipeline with an instant engine, one core, {args.seconds:.0f} s of real-time speech per track")
    print(
        f"{'tracks':>6} {'core used':>9} {'CPU ms per track-s':>18} {'tracks/core':>11} "
        f"{'late frames':>11} {'captions':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    )
    for tracks in args.tracks:
        row = asyncio.run(run(tracks, args.seconds, samples))
        per_core = 1000 / row["cpu_ms_per_track_s"]
        print(
            f"{tracks:>6} {row['cpu_share']:>9.0%} {row['cpu_ms_per_track_s']:>18.2f} {per_core:>11.0f} "
            f"{row['late_frames']:>11.0f} {row['captions']:>8.0f} "
            f"{row['p50_ms']:>7.2f} {row['p95_ms']:>7.2f} {row['p99_ms']:>7.2f}"
        )
    print(
        "tracks/core = 1000 / CPU ms per track-second; "
        "late frames = frames yielded > 50 ms after their due time"
    )


if __name__ == "__main__":
    main()
