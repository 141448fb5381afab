"""The interface every speech-to-text engine implements.

An engine opens one `EngineStream` per audio track. The pipeline pushes 16 kHz mono PCM16 (little-endian)
into it and reads `EngineEvent`s out of it. All times in events are seconds on the stream's *audio clock*:
the number of seconds of audio pushed into this stream before that point (bytes pushed / 32000). The
engine keeps that clock continuous across its own reconnects, sessions and pauses; the pipeline maps it
to wall-clock time.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2  # mono PCM16


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """A partial (``is_final=False``) or final transcript of one utterance.

    Partials of an utterance share its ``utterance_id`` with its final; each partial carries the whole
    text so far (snapshot, not delta). After the final, the utterance never changes. ``utterance_id`` is
    unique within the stream.
    """

    utterance_id: str
    text: str
    is_final: bool
    start: float
    end: float
    language: str | None = None
    confidence: float | None = None
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class AudioGap:
    """Audio on ``[start, end)`` of the audio clock was lost and will never be transcribed."""

    start: float
    end: float
    reason: str


EngineEvent = Hypothesis | AudioGap


class EngineError(Exception):
    """The stream cannot go on (e.g. the engine refused our credentials). Raised from `events()`."""


@dataclass(frozen=True, slots=True)
class _End:
    error: EngineError | None


class EventChannel:
    """A stream's bounded queue of events for its one reader, ended once.

    `put` waits while the reader is behind (backpressure, never a drop). `end` never waits and never
    drops: if the queue is full, the end is delivered after the events already queued. Events put after
    the end are ignored.
    """

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[EngineEvent | _End] = asyncio.Queue(maxsize)
        self._ended = False
        self._end_after_queue: _End | None = None

    async def put(self, event: EngineEvent) -> None:
        if not self._ended:
            await self._queue.put(event)

    def end(self, error: EngineError | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self._queue.put_nowait(_End(error))
        except asyncio.QueueFull:
            self._end_after_queue = _End(error)

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        while True:
            if self._queue.empty() and self._end_after_queue is not None:
                item: EngineEvent | _End = self._end_after_queue
            else:
                item = await self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What a stream should recognise, and the context to put in its log lines."""

    languages: tuple[str, ...] = ("en",)
    code_switching: bool = False
    endpointing: float = 0.3
    custom_vocabulary: tuple[str, ...] = ()
    # e.g. {"room": ..., "participant": ..., "track": ...}; added to every log line of the stream.
    log_context: Mapping[str, str] = field(default_factory=dict)


class EngineStream(ABC):
    """One track's recognition stream. Not thread-safe: use it from one event loop."""

    @abstractmethod
    async def push(self, pcm: bytes) -> None:
        """Queue 16 kHz mono PCM16 audio. Waits (bounded) when the engine is behind; never drops silently."""

    @abstractmethod
    async def flush(self) -> None:
        """End the current utterance: returns once finals for all audio pushed so far have been emitted."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release everything. Does not flush; after it, `events()` ends."""

    @abstractmethod
    def events(self) -> AsyncIterator[EngineEvent]:
        """Partials, finals and gaps, in order. Ends after `aclose()`; raises `EngineError` if fatal."""


class SpeechEngine(ABC):
    """A factory of streams; one per worker process, shared by all tracks of a room."""

    name: str

    @abstractmethod
    def open_stream(self, options: StreamOptions) -> EngineStream:
        """Create a stream. Network or model work starts lazily, on the first `push`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op for engines without resources
        """Release engine-wide resources (HTTP sessions, worker threads)."""
