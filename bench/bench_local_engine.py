"""Benchmark of the offline PocketSphinx engine: CPU per second of audio, speakers per core, loop lag.

    .venv/bin/python bench/bench_local_engine.py

Decoding runs in the engine's decoder processes (one core each at most: PocketSphinx holds its process's GIL
while it decodes); the benchmark's own process only runs the event loop. Decoders are built (and processes
started) before each measurement.

1. Real-time factor per core: one stream fed as fast as it goes, 1 process. Decoding CPU seconds (measured
   in the decoder process) per second of audio; => real-time speakers one core carries.
2. Throughput: 4 streams fed as fast as they go, with 1 and with 2 processes: seconds of audio decoded per
   wall second = how many concurrent real-time speakers the engine carries; and the event loop's lag meanwhile
   (a 10 ms ticker), with the most CPU this process spent within one tick (the loop's own work).
3. Streams fed in real time (100 ms every 100 ms), 1 and 2 processes, below and above the capacity from 2:
   the largest lag behind real time, the saturation count, and the loop lag.

Prints figures, asserts nothing. About two minutes on 2 cores; on a shared machine, run it twice.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.engines.base import BYTES_PER_SECOND, StreamOptions  # noqa: E402
from agent.engines.local import LocalEngine, LocalStream  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "two_cities_48k.wav"
CHUNK = BYTES_PER_SECOND // 10  # 100 ms


def load_pcm() -> bytes:
    with wave.open(str(FIXTURE)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        rate = wav.getframerate()
    resampled = resample_poly(samples.astype(np.float64), 1, rate // 16_000)
    pcm: bytes = np.clip(np.round(resampled), -32768, 32767).astype("<i2").tobytes()
    return pcm


@dataclass
class LoopProbe:
    """A 10 ms ticker on the event loop: how late each tick is, and this process's CPU within it."""

    gaps: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            before, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(0.01)
            self.gaps.append(time.perf_counter() - before - 0.01)
            self.cpu.append(time.process_time() - cpu)

    async def stop(self) -> str:
        self._stop.set()
        if self._task is not None:
            await self._task
        gaps = sorted(self.gaps)
        return (
            f"loop lag max {gaps[-1] * 1000:.0f} ms, p99 {gaps[int(len(gaps) * 0.99)] * 1000:.0f} ms, "
            f"median {gaps[len(gaps) // 2] * 1000:.1f} ms; "
            f"this process's CPU within one tick max {max(self.cpu) * 1000:.0f} ms"
        )


async def drain(stream: LocalStream) -> None:
    async for _ in stream.events():
        pass


async def warm_stream(engine: LocalEngine, name: str) -> tuple[LocalStream, asyncio.Task[None]]:
    """A stream whose process runs and whose decoder is built (~0.4 s of CPU, once per stream)."""
    stream = engine.open_stream(StreamOptions(log_context={"room": "bench", "track": name}))
    consumer = asyncio.create_task(drain(stream))
    await stream.push(bytes(CHUNK))
    await stream.flush()
    return stream, consumer


async def close_all(engine: LocalEngine, warm: list[tuple[LocalStream, asyncio.Task[None]]]) -> None:
    for stream, consumer in warm:
        await stream.aclose()
        await consumer
    await engine.aclose()


async def feed_fast(stream: LocalStream, pcm: bytes) -> None:
    for offset in range(0, len(pcm), CHUNK):
        await stream.push(pcm[offset : offset + CHUNK])
    await stream.flush()


async def feed_real_time(stream: LocalStream, pcm: bytes, lags: list[float]) -> None:
    started = time.monotonic()
    for index, offset in enumerate(range(0, len(pcm), CHUNK)):
        await stream.push(pcm[offset : offset + CHUNK])
        lags.append(stream.lag_s())
        delay = started + (index + 1) * 0.1 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await stream.flush()


async def single_stream_rtf(pcm: bytes) -> float:
    engine = LocalEngine(decoder_processes=1)
    warm = [await warm_stream(engine, "solo")]
    stream = warm[0][0]
    cpu_before, loop_before, wall_before = stream.cpu_s, time.process_time(), time.perf_counter()
    await feed_fast(stream, pcm)
    audio_s = len(pcm) / BYTES_PER_SECOND
    decode_rtf = (stream.cpu_s - cpu_before) / audio_s
    loop_rtf = (time.process_time() - loop_before) / audio_s
    wall_rtf = (time.perf_counter() - wall_before) / audio_s
    await close_all(engine, warm)
    print(f"1. one stream, {audio_s:.0f} s of speech, as fast as possible, 1 decoder process:")
    print(
        f"   real-time factor per core {decode_rtf:.3f} (decoding CPU s per audio s); "
        f"wall {wall_rtf:.3f}; the loop's process {loop_rtf:.3f}"
    )
    print(f"   => one core carries ~{1 / decode_rtf:.1f} real-time speakers")
    return decode_rtf


async def throughput(pcm: bytes, streams: int, processes: int) -> float:
    engine = LocalEngine(decoder_processes=processes)
    warm = [await warm_stream(engine, f"s{i}") for i in range(streams)]
    probe = LoopProbe()
    probe.start()
    cpu_before = engine.stats().cpu_s
    loop_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(feed_fast(stream, pcm) for stream, _ in warm))
    wall = time.perf_counter() - wall_before
    loop_cpu = time.process_time() - loop_before
    decode_cpu = engine.stats().cpu_s - cpu_before
    lag = await probe.stop()
    await close_all(engine, warm)
    audio_s = streams * len(pcm) / BYTES_PER_SECOND
    speakers = audio_s / wall
    print(
        f"   {processes} process{'es' if processes > 1 else ''}, {streams} streams x "
        f"{len(pcm) / BYTES_PER_SECOND:.0f} s: {audio_s:.0f} s of audio in {wall:.1f} s wall, decoding CPU "
        f"{decode_cpu:.1f} s ({decode_cpu / wall:.2f} cores busy, RTF per core {decode_cpu / audio_s:.3f}), "
        f"loop's process {loop_cpu / wall:.2f} cores => {speakers:.1f} concurrent real-time speakers"
    )
    print(f"      {lag}")
    return speakers


async def real_time(pcm: bytes, streams: int, processes: int) -> None:
    engine = LocalEngine(decoder_processes=processes)
    warm = [await warm_stream(engine, f"s{i}") for i in range(streams)]
    lags: list[float] = []

    async def staggered(index: int, stream: LocalStream) -> None:
        await asyncio.sleep(0.1 * index / streams)
        await feed_real_time(stream, pcm, lags)

    probe = LoopProbe()
    probe.start()
    wall_before = time.perf_counter()
    await asyncio.gather(*(staggered(i, stream) for i, (stream, _) in enumerate(warm)))
    wall = time.perf_counter() - wall_before
    stats = engine.stats()
    loop_lag = await probe.stop()
    await close_all(engine, warm)
    audio_s = len(pcm) / BYTES_PER_SECOND
    print(
        f"   {processes} process{'es' if processes > 1 else ''}, {streams} streams x {audio_s:.0f} s: "
        f"max lag {max(lags):.2f} s, saturation events {stats.saturation_events}, "
        f"took {wall:.1f} s for {audio_s:.0f} s of audio"
    )
    print(f"      {loop_lag}")


async def main() -> None:
    pcm = load_pcm()
    print(f"roomscribe local engine benchmark (pocketsphinx, en-us, {FIXTURE.name} at 16 kHz)\n")
    await single_stream_rtf(pcm)
    clip = pcm[: 12 * BYTES_PER_SECOND]
    print("\n2. throughput, 4 streams each fed as fast as possible (one core per process at most):")
    capacity = {processes: await throughput(clip, 4, processes) for processes in (1, 2)}
    print("\n3. streams fed in real time (100 ms every 100 ms):")
    for processes in (1, 2):
        below = max(1, math.floor(capacity[processes] * 0.75))
        for count in sorted({below, math.ceil(capacity[processes] * 1.3)}):
            await real_time(clip, count, processes)


if __name__ == "__main__":
    asyncio.run(main())
