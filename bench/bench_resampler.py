"""Resampler benchmark: roomscribe's StreamingResampler side by side with the alternatives, in one process.

For 48 kHz and 44.1 kHz mono input to 16 kHz, in 10 ms frames as LiveKit delivers them:

* roomscribe ``agent.resampler.StreamingResampler``;
* livekit ``rtc.AudioResampler`` (libsoxr through the FFI), MEDIUM and HIGH quality;
* ``soxr.ResampleStream`` (the soxr package), HQ and VHQ;
* ``scipy.signal.resample_poly`` applied to each frame on its own (stateless, as often done naively) and
  to the whole signal at once (not streaming; a reference point);
* livekit ``rtc.AudioStream``'s own resampling (48 kHz only), measured without a server through a local
  track: AudioSource(48 kHz) → LocalAudioTrack → AudioStream(sample_rate=16000). Its cost is not timed: it
  runs on the FFI's threads together with the capture path, so there is no like-for-like figure.

Columns: CPU time per second of audio (µs, best of a few runs, on real speech), that time relative to ours,
the stopband attenuation measured the same way for everyone (full-scale sines at 8.2, 8.5 kHz, then from
9 kHz to the input Nyquist in 700 Hz steps, each streamed in 10 ms frames; the strongest spectral component
of the output, Kaiser-windowed FFT over its steady middle, is the alias, reported as dB below full scale for
the worst tone, over all tones and over the tones from 9 kHz), and the gain at 7 kHz (passband edge).
Prints figures; asserts nothing.

    .venv/bin/python bench/bench_resampler.py
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr
from livekit import rtc
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.resampler import OUTPUT_RATE, StreamingResampler

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "two_cities_48k.wav"
FULL_SCALE = 32767.0
TONE_SECONDS = 0.5
W = 46  # width of the name column

Int16 = npt.NDArray[np.int16]
#: A streaming run: takes 10 ms frames, returns the resampled output (for the attenuation measurement).
Run = Callable[[list[Int16]], Int16]
#: A timed run: takes frames prepared by ``prepare``, produces output it may discard.
Timed = Callable[[list[object]], None]


@dataclass
class Contender:
    name: str
    run: Run  # streaming, output returned
    prepare: Callable[[list[Int16]], list[object]]  # to the contender's native input type (not timed)
    timed: Timed  # the same streaming, as cheaply as its API allows
    timing_seconds: float = 10.0  # of audio per timed run
    repeats: int = 3


def speech(rate: int, seconds: float) -> Int16:
    with wave.open(str(FIXTURE), "rb") as wav:
        x = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)[: int(48000 * seconds)]
    if rate != 48000:
        g = math.gcd(rate, 48000)
        x = np.clip(np.rint(signal.resample_poly(x.astype(np.float64), rate // g, 48000 // g)), -32768, 32767)
    return x.astype(np.int16)


def frames_of(x: Int16, rate: int) -> list[Int16]:
    n = rate // 100
    return [x[i : i + n] for i in range(0, len(x), n)]


def worst_alias_dbfs(run: Run, rate: int) -> tuple[float, float]:
    """Worst alias (dBFS) over tones from 8.2 kHz, and over the tones from 9 kHz on only."""
    worst = worst_from_9k = -math.inf
    t = np.arange(int(rate * TONE_SECONDS)) / rate
    for freq in [8200.0, 8500.0, *np.arange(9000.0, rate / 2, 700.0)]:
        tone = np.rint(FULL_SCALE * np.sin(2 * np.pi * freq * t + 0.1)).astype(np.int16)
        level = peak_dbfs(run(frames_of(tone, rate)))
        worst = max(worst, level)
        if freq >= 9000:
            worst_from_9k = max(worst_from_9k, level)
    return worst, worst_from_9k


def gain_7k_db(run: Run, rate: int) -> float:
    """Passband edge: gain (dB) of a half-scale 7 kHz sine."""
    t = np.arange(int(rate * TONE_SECONDS)) / rate
    tone = np.rint(FULL_SCALE / 2 * np.sin(2 * np.pi * 7000.0 * t)).astype(np.int16)
    return peak_dbfs(run(frames_of(tone, rate))) + 20 * math.log10(2)


def peak_dbfs(y: Int16) -> float:
    mid = y[len(y) // 8 : 7 * len(y) // 8].astype(np.float64)
    window = np.kaiser(len(mid), 20.0)
    amplitude = np.abs(np.fft.rfft((mid - mid.mean()) * window)) * 2 / window.sum()
    return float(20 * np.log10(max(float(amplitude.max()), 1e-9) / FULL_SCALE))


# ---------------------------------------------------------------------------------------------- contenders


def ours(rate: int) -> Contender:
    def run(frames: list[Int16]) -> Int16:
        r = StreamingResampler(rate, 1)
        return np.concatenate([*(r.process(f) for f in frames), r.flush()])

    def timed(frames: list[object]) -> None:
        r = StreamingResampler(rate, 1)
        for f in frames:
            r.process(f)  # type: ignore[arg-type]
        r.flush()

    return Contender("roomscribe StreamingResampler", run, list, timed)


def livekit_resampler(rate: int, quality: rtc.AudioResamplerQuality) -> Contender:
    def to_frames(frames: list[Int16]) -> list[object]:
        return [rtc.AudioFrame(f.tobytes(), rate, 1, len(f)) for f in frames]

    def pcm(out: list[rtc.AudioFrame]) -> list[Int16]:
        return [np.frombuffer(o.data, dtype=np.int16) for o in out]

    def run(frames: list[Int16]) -> Int16:
        r = rtc.AudioResampler(rate, OUTPUT_RATE, num_channels=1, quality=quality)
        parts: list[Int16] = [np.zeros(0, dtype=np.int16)]
        for f in to_frames(frames):
            parts += pcm(r.push(f))  # type: ignore[arg-type]
        parts += pcm(r.flush())
        return np.concatenate(parts)

    def timed(frames: list[object]) -> None:
        r = rtc.AudioResampler(rate, OUTPUT_RATE, num_channels=1, quality=quality)
        for f in frames:
            r.push(f)  # type: ignore[arg-type]
        r.flush()

    return Contender(f"livekit rtc.AudioResampler {quality.name}", run, to_frames, timed)


def soxr_stream(rate: int, quality: str) -> Contender:
    def run(frames: list[Int16]) -> Int16:
        s = soxr.ResampleStream(rate, OUTPUT_RATE, 1, dtype="int16", quality=quality)
        parts = [s.resample_chunk(f) for f in frames]
        parts.append(s.resample_chunk(np.zeros(0, dtype=np.int16), last=True))
        return np.concatenate(parts).astype(np.int16)

    def timed(frames: list[object]) -> None:
        s = soxr.ResampleStream(rate, OUTPUT_RATE, 1, dtype="int16", quality=quality)
        for f in frames:
            s.resample_chunk(f)
        s.resample_chunk(np.zeros(0, dtype=np.int16), last=True)

    return Contender(f"soxr.ResampleStream {quality}", run, list, timed)


def to_int16(y: npt.NDArray[np.float64]) -> Int16:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def poly_per_frame(rate: int) -> Contender:
    g = math.gcd(rate, OUTPUT_RATE)
    up, down = OUTPUT_RATE // g, rate // g

    def run(frames: list[Int16]) -> Int16:
        return np.concatenate(
            [to_int16(signal.resample_poly(f.astype(np.float64), up, down)) for f in frames]
        )

    def timed(frames: list[object]) -> None:
        for f in frames:
            to_int16(signal.resample_poly(f.astype(np.float64), up, down))  # type: ignore[attr-defined]

    return Contender("scipy resample_poly per frame (stateless)", run, list, timed, 2.0, 1)


def poly_whole(rate: int) -> Contender:
    g = math.gcd(rate, OUTPUT_RATE)
    up, down = OUTPUT_RATE // g, rate // g

    def run(frames: list[Int16]) -> Int16:
        return to_int16(signal.resample_poly(np.concatenate(frames).astype(np.float64), up, down))

    def prepare(frames: list[Int16]) -> list[object]:
        return [np.concatenate(frames)]

    def timed(whole: list[object]) -> None:
        to_int16(signal.resample_poly(whole[0].astype(np.float64), up, down))  # type: ignore[attr-defined]

    return Contender("scipy resample_poly, whole (not streaming)", run, prepare, timed)


async def _through_audio_stream(frames: list[Int16], rate: int) -> Int16:
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("bench", source)
    stream = rtc.AudioStream(track, sample_rate=OUTPUT_RATE, num_channels=1)
    wanted = sum(len(f) for f in frames) * OUTPUT_RATE // rate
    got: list[Int16] = []

    async def feed() -> None:
        for f in frames:
            await source.capture_frame(rtc.AudioFrame(f.tobytes(), rate, 1, len(f)))

    async def read() -> None:
        n = 0
        async for event in stream:
            got.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())
            n += event.frame.samples_per_channel
            if n >= wanted:
                return

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.wait_for(read(), 5.0)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await stream.aclose()
        await source.aclose()
    return np.concatenate(got)[:wanted] if got else np.zeros(0, dtype=np.int16)


def audio_stream_figures(rate: int) -> str:
    try:
        loop = asyncio.new_event_loop()
        try:

            def run(frames: list[Int16]) -> Int16:
                return loop.run_until_complete(_through_audio_stream(frames, rate))

            worst, from_9k = worst_alias_dbfs(run, rate)
            gain = gain_7k_db(run, rate)
        finally:
            loop.close()
    except Exception as error:  # report whatever stops it; this is a benchmark
        return f"not measurable here ({type(error).__name__}: {error})"
    return f"{-worst:9.1f} {-from_9k:9.1f} {gain:+8.2f}"


# ---------------------------------------------------------------------------------------------- main


def time_per_second(c: Contender, rate: int) -> float:
    inputs = c.prepare(frames_of(speech(rate, c.timing_seconds), rate))
    best = math.inf
    for _ in range(c.repeats):
        started = time.process_time()
        c.timed(inputs)
        best = min(best, time.process_time() - started)
    return best / c.timing_seconds * 1e6


def main() -> None:
    started = time.monotonic()
    print(f"numpy {np.__version__}, soxr {soxr.__version__}; CPU time via time.process_time()")
    for rate in (48000, 44100):
        contenders = [
            ours(rate),
            livekit_resampler(rate, rtc.AudioResamplerQuality.MEDIUM),
            livekit_resampler(rate, rtc.AudioResamplerQuality.HIGH),
            soxr_stream(rate, "HQ"),
            soxr_stream(rate, "VHQ"),
            poly_per_frame(rate),
            poly_whole(rate),
        ]
        print(f"\n{rate} Hz mono -> 16000 Hz, 10 ms frames ({rate // 100} samples)")
        header = (
            f"{'resampler':{W}s} {'us/s audio':>10s} {'x ours':>7s} {'stop>8.2k':>9s} {'stop>=9k':>9s}"
            f" {'7k gain':>8s}"
        )
        print(header)
        print("-" * len(header))
        reference = 0.0
        for c in contenders:
            us = time_per_second(c, rate)
            reference = reference or us
            worst, from_9k = worst_alias_dbfs(c.run, rate)
            gain = gain_7k_db(c.run, rate)
            figures = f"{-worst:9.1f} {-from_9k:9.1f} {gain:+8.2f}"
            print(f"{c.name:{W}s} {us:10.0f} {us / reference:7.2f} {figures}")
        if rate == 48000:
            print(f"{'livekit rtc.AudioStream(16 kHz), local track':{W}s} {'n/a':>10s} {'':>7s} ", end="")
            print(audio_stream_figures(rate))
    print(
        "\nus/s audio: CPU time per second of 10 ms frames of speech; x ours: relative to the first row."
        "\nstop: worst alias of a full-scale sine (8.2 kHz..Nyquist, or 9 kHz..Nyquist), dB below full scale"
        "\n(higher is better; tones 8.2, 8.5, then 9 kHz in 700 Hz steps; 0.5 s each, 10 ms frames)."
        "\nrtc.AudioStream: its resampling measured through a local track (no server needed); its CPU cost"
        "\nis spread over the FFI's threads with the capture path, so it is not timed."
        "\n7k gain: level of a 7 kHz sine at the output relative to the input (passband edge)."
        f"\n(run time {time.monotonic() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
