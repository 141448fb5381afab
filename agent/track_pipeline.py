"""One pipeline per subscribed audio track:

frames from `rtc.AudioStream` → resampler → engine stream → transcript events → room publisher and store.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np
from livekit import rtc

from agent.engines.base import AudioGap, EngineError, EngineStream, Hypothesis, SpeechEngine, StreamOptions
from agent.publisher import RoomPublisher
from agent.resampler import StreamingResampler
from agent.store import TranscriptStore
from agent.transcript import AudioTimeline, Speaker, TranscriptEvent

logger = logging.getLogger("roomscribe.pipeline")

#: Rate asked of LiveKit's AudioStream: WebRTC's native rate, so the FFI does no resampling of its own.
SOURCE_RATE = 48_000
#: Frame length asked of the AudioStream (the FFI re-chunks WebRTC's 10 ms frames): half the per-frame
#: Python work of 10 ms frames along the whole pipeline, for at most 10 ms more buffering.
FRAME_MS = 20
#: Frames the AudioStream may hold while the engine is busy: 5 s.
AUDIO_QUEUE_FRAMES = 5000 // FRAME_MS


class AudioFrames(Protocol):
    """What the pipeline reads audio from: an `rtc.AudioStream`, or any source of frame events."""

    def __aiter__(self) -> AsyncIterator[rtc.AudioFrameEvent]: ...

    async def aclose(self) -> None: ...


def open_track_audio(track: rtc.Track) -> rtc.AudioStream:
    return rtc.AudioStream(
        track, sample_rate=SOURCE_RATE, num_channels=1, capacity=AUDIO_QUEUE_FRAMES, frame_size_ms=FRAME_MS
    )


#: A push that waits this long means the engine is behind real time; say so.
SLOW_PUSH_S = 1.0


class TrackPipeline:
    def __init__(
        self,
        *,
        speaker: Speaker,
        audio: AudioFrames,
        engine: SpeechEngine,
        options: StreamOptions,
        publisher: RoomPublisher,
        store: TranscriptStore,
    ) -> None:
        self.speaker = speaker
        self._audio = audio
        self._publisher = publisher
        self._store = store
        self._timeline = AudioTimeline()
        # Segment ids are unique in the room: a fresh prefix per pipeline, then the engine's utterance id.
        self._segment_prefix = f"SG_{secrets.token_hex(4)}"
        self._log = {"room": speaker.room, "participant": speaker.identity, "track": speaker.track_sid}
        self._stream: EngineStream = engine.open_stream(options)
        self._audio_task: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._resampler: StreamingResampler | None = None
        self._source_format: tuple[int, int] | None = None

    def start(self) -> None:
        self._audio_task = asyncio.create_task(self._pump_audio(), name=f"audio:{self.speaker.track_sid}")
        self._events_task = asyncio.create_task(
            self._consume_events(), name=f"events:{self.speaker.track_sid}"
        )
        logger.info("pipeline started", extra=self._log)

    async def stop(self, flush_within: float) -> None:
        """Stop taking audio, get the engine's finals for what it has, publish and store them.

        Bounded by `flush_within` for the engine's finals, and as long again for publishing them.
        """
        if self._audio_task is not None:
            self._audio_task.cancel()
            await asyncio.gather(self._audio_task, return_exceptions=True)
        try:
            async with asyncio.timeout(flush_within):
                if self._resampler is not None:
                    tail = self._resampler.flush()
                    if tail.size:
                        await self._stream.push(tail.tobytes())
                await self._stream.flush()
        except TimeoutError:
            logger.warning("engine flush timed out", extra={**self._log, "within_s": flush_within})
        except EngineError:
            pass  # already logged by the events consumer
        await self._stream.aclose()
        if self._events_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._events_task), flush_within)
            except TimeoutError:
                logger.warning("last transcript events not published in time", extra=self._log)
                self._events_task.cancel()
                await asyncio.gather(self._events_task, return_exceptions=True)
        logger.info("pipeline stopped", extra={**self._log, "audio_s": round(self._timeline.position, 2)})

    async def _pump_audio(self) -> None:
        try:
            async for event in self._audio:
                frame = event.frame
                samples = np.frombuffer(frame.data, dtype=np.int16)
                self._timeline.advance(frame.samples_per_channel / frame.sample_rate, time.time())
                pcm = self._resample(samples, frame.sample_rate, frame.num_channels)
                if pcm.size == 0:
                    continue
                started = time.monotonic()
                await self._stream.push(pcm.tobytes())
                waited = time.monotonic() - started
                if waited > SLOW_PUSH_S:
                    logger.warning(
                        "speech engine behind real time", extra={**self._log, "waited_s": round(waited, 2)}
                    )
        except EngineError:
            pass  # the events consumer logs it
        finally:
            await self._audio.aclose()

    def _resample(self, samples: np.ndarray, rate: int, channels: int) -> np.ndarray:
        if self._source_format != (rate, channels):
            if self._resampler is not None:
                logger.info("audio format changed", extra={**self._log, "rate": rate, "channels": channels})
            self._resampler = StreamingResampler(rate, channels)
            self._source_format = (rate, channels)
        assert self._resampler is not None
        return self._resampler.process(samples)

    async def _consume_events(self) -> None:
        try:
            async for event in self._stream.events():
                try:
                    if isinstance(event, Hypothesis):
                        await self._on_hypothesis(event)
                    elif isinstance(event, AudioGap):
                        await self._on_gap(event)
                except Exception:  # one bad event must not end the track's captions
                    logger.exception("transcript event not handled", extra=self._log)
        except EngineError as error:
            logger.error(
                "speech engine stopped this track's transcription", extra={**self._log, "error": str(error)}
            )
            if self._audio_task is not None:
                self._audio_task.cancel()

    async def _on_hypothesis(self, hypothesis: Hypothesis) -> None:
        if not hypothesis.text.strip():
            return
        event = TranscriptEvent.from_hypothesis(
            hypothesis, segment_prefix=self._segment_prefix, speaker=self.speaker, timeline=self._timeline
        )
        if event.final:
            self._store.add_final(event)  # stored even if the room cannot take it right now
        await self._publisher.publish(event)
        if event.final:
            logger.info(
                "final transcript",
                extra={
                    **self._log,
                    "segment": event.segment_id,
                    "chars": len(event.text),
                    "language": event.language,
                },
            )

    async def _on_gap(self, gap: AudioGap) -> None:
        start = self._timeline.wall_time(gap.start).isoformat(timespec="milliseconds")
        end = self._timeline.wall_time(gap.end).isoformat(timespec="milliseconds")
        logger.warning(
            "audio lost, not transcribed",
            extra={
                **self._log,
                "start": start,
                "end": end,
                "seconds": round(gap.end - gap.start, 2),
                "reason": gap.reason,
            },
        )
        await self._publisher.publish_gap(self.speaker, start=start, end=end, reason=gap.reason)
