"""Benchmark of the offline PocketSphinx engine: CPU per second of audio, and speakers per core.

    .venv/bin/python bench/bench_local_engine.py

1. Real-time factor of one stream fed as fast as it goes (decoder built beforehand): decoding CPU seconds
   (thread CPU inside the pool calls) and whole-process CPU seconds per second of audio.
2. Throughput of N streams fed as fast as they go, pool of 1 and of 2 workers: seconds of audio decoded per
   wall second = how many real-time speakers the engine carries. PocketSphinx holds the GIL while it
   decodes, so a second worker adds nothing: one process decodes on about one core whatever the pool size.
3. N streams fed in real time (100 ms every 100 ms), pool of 1: the largest lag and the saturation count,
   below and above the capacity from 2.

Prints figures, asserts nothing. About a minute and a half on 2 cores; on a shared machine, run it twice.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import wave
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


async def drain(stream: LocalStream) -> None:
    async for _ in stream.events():
        pass


async def warm_stream(engine: LocalEngine, name: str) -> tuple[LocalStream, asyncio.Task[None]]:
    """A stream whose decoder is already built (building one costs ~0.4 s of CPU, once per stream)."""
    stream = engine.open_stream(StreamOptions(log_context={"room": "bench", "track": name}))
    consumer = asyncio.create_task(drain(stream))
    await stream.push(bytes(CHUNK))
    await stream.flush()
    return stream, consumer


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
    engine = LocalEngine(decoder_threads=1)
    stream, consumer = await warm_stream(engine, "solo")
    cpu_before, process_before, wall_before = stream.cpu_s, time.process_time(), time.perf_counter()
    await feed_fast(stream, pcm)
    audio_s = len(pcm) / BYTES_PER_SECOND
    decode_rtf = (stream.cpu_s - cpu_before) / audio_s
    process_rtf = (time.process_time() - process_before) / audio_s
    wall_rtf = (time.perf_counter() - wall_before) / audio_s
    await stream.aclose()
    await consumer
    await engine.aclose()
    print(f"1. one stream, {audio_s:.0f} s of speech, as fast as possible, pool of 1:")
    print(
        f"   decoding CPU {decode_rtf:.3f} s per audio s; process CPU {process_rtf:.3f}; wall {wall_rtf:.3f}"
    )
    print(f"   => one core carries ~{1 / decode_rtf:.1f} real-time speakers by decoding CPU alone")
    return decode_rtf


async def throughput(pcm: bytes, streams: int, workers: int) -> float:
    engine = LocalEngine(decoder_threads=workers)
    warm = [await warm_stream(engine, f"s{i}") for i in range(streams)]
    process_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(feed_fast(stream, pcm) for stream, _ in warm))
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - process_before
    audio_s = streams * len(pcm) / BYTES_PER_SECOND
    for stream, consumer in warm:
        await stream.aclose()
        await consumer
    await engine.aclose()
    speakers = audio_s / wall
    print(
        f"   {streams} streams x {len(pcm) / BYTES_PER_SECOND:.0f} s, pool of {workers}: "
        f"{audio_s:.0f} s of audio in {wall:.1f} s wall, process CPU {cpu:.1f} s "
        f"({cpu / wall:.2f} cores busy) => {speakers:.1f} real-time speakers"
    )
    return speakers


async def real_time(pcm: bytes, streams: int) -> None:
    engine = LocalEngine(decoder_threads=1)
    warm = [await warm_stream(engine, f"s{i}") for i in range(streams)]
    lags: list[float] = []

    async def staggered(index: int, stream: LocalStream) -> None:
        await asyncio.sleep(0.1 * index / streams)
        await feed_real_time(stream, pcm, lags)

    process_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(staggered(i, stream) for i, (stream, _) in enumerate(warm)))
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - process_before
    stats = engine.stats()
    for stream, consumer in warm:
        await stream.aclose()
        await consumer
    await engine.aclose()
    audio_s = len(pcm) / BYTES_PER_SECOND
    print(
        f"   {streams} real-time streams x {audio_s:.0f} s, pool of 1: max lag {max(lags):.2f} s, "
        f"saturation events {stats.saturation_events}, took {wall:.1f} s for {audio_s:.0f} s of audio, "
        f"process CPU {cpu / wall:.2f} cores"
    )


async def main() -> None:
    pcm = load_pcm()
    print(f"roomscribe local engine benchmark (pocketsphinx, en-us, {FIXTURE.name} at 16 kHz)\n")
    rtf = await single_stream_rtf(pcm)
    clip = pcm[: 12 * BYTES_PER_SECOND]
    streams = max(2, min(5, round(1 / rtf)))
    print("\n2. throughput, every stream fed as fast as possible:")
    capacity = await throughput(clip, streams, 1)
    await throughput(clip, streams, 2)
    print("\n3. streams fed in real time (100 ms every 100 ms), pool of 1:")
    below = max(1, math.floor(capacity * 0.75))
    for count in sorted({below, math.ceil(capacity * 1.3)}):
        await real_time(clip, count)


if __name__ == "__main__":
    asyncio.run(main())
