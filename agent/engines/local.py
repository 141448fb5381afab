"""Offline speech-to-text with PocketSphinx: roomscribe works with no cloud key.

Each stream owns one `pocketsphinx.Decoder` and one `pocketsphinx.Endpointer` (WebRTC-style VAD). The
endpointer cuts the audio into utterances: a final per utterance, partials every ``partial_interval`` seconds
of new speech while it lasts. Word times come from ``Decoder.seg()`` (100 frames a second, counted from the
utterance's first sample) and are put on the stream's audio clock; word confidences are the lattice
posteriors ``Segment.prob`` the decoder computes at the end of an utterance (``bestpath``), clamped to [0, 1];
partials carry none.

Threading: decoding never runs on the event loop. It runs in one `ThreadPoolExecutor` shared by the engine
(``decoder_threads`` workers). Each stream has a single worker task that awaits each call before making the
next, so no decoder is ever used by two threads at once. PocketSphinx 5.1.1 does NOT release the GIL (its
extension imports no ``PyEval_SaveThread``; two threads decoding take longer than one doing both in turn),
so the pool gives no parallel decoding, and every call into it holds the GIL for its whole length: calls are
kept short (``chunk_seconds`` of audio each, ~10-30 ms of CPU) so that the event loop gets its turn between
them. The engine's capacity is about one core for all its streams, whatever ``decoder_threads`` says.

Audio that waits is bounded: each stream holds at most ``max_pending_seconds`` of undecoded audio, and
`push` waits when it is full. When the oldest undecoded audio has waited more than ``lag_warning_seconds``,
the stream logs a warning (with its log context) and counts a saturation event; `LocalEngine.stats()` shows
the backlog and lag of every stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pocketsphinx

from agent.engines.base import (
    BYTES_PER_SECOND,
    EngineError,
    EngineEvent,
    EngineStream,
    Hypothesis,
    SpeechEngine,
    StreamOptions,
    Word,
)
from common.settings import Settings

logger = logging.getLogger(__name__)

#: Decoder frames per second (10 ms frame shift).
FRAME_RATE: Final = 100
#: How long a stream's worker waits for more audio when it has less than half a chunk to decode.
_GATHER_SECONDS: Final = 0.05
#: Tokens that are not words: sentence markers, silence, fillers such as ``[NOISE]`` / ``++NOISE++``.
_NON_WORDS: Final = frozenset({"<s>", "</s>", "<sil>"})


def _is_word(token: str) -> bool:
    return token not in _NON_WORDS and not token.startswith(("[", "+", "<"))


def _word_text(token: str) -> str:
    """``was(2)`` (an alternate pronunciation) -> ``was``."""
    if token.endswith(")") and "(" in token:
        return token[: token.rindex("(")]
    return token


@dataclass(frozen=True, slots=True)
class DecoderSettings:
    """How each stream's decoder is built. ``model_path`` None: the en-us model in the pocketsphinx package.

    Otherwise ``model_path`` is a folder laid out like that one: an acoustic-model folder (holding ``mdef``),
    one language model (``*.lm.bin``, ``*.lm`` or ``*.lm.dmp``) and one pronunciation dictionary (``*.dict``).
    ``max_hmm_per_frame`` caps the search (pocketsphinx's ``maxhmmpf``, default 30000): at 3000 it decodes
    our fixtures to the same words for half the CPU. ``fwdflat`` (a second search pass run inside
    ``end_utt``) is off by default: it holds the GIL for ~50 ms per second of utterance at the end of each
    utterance, and changed little in our measurements.
    """

    model_path: str | None = None
    max_hmm_per_frame: int = 3000
    fwdflat: bool = False

    def decoder_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "loglevel": "FATAL",
            "maxhmmpf": self.max_hmm_per_frame,
            "fwdflat": self.fwdflat,
            "bestpath": True,  # word posteriors for confidences
        }
        if self.model_path is not None:
            kwargs.update(_model_files(Path(self.model_path)))
        return kwargs


def _model_files(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        raise EngineError(f"local model path {folder} is not a folder")
    hmm = [p for p in folder.iterdir() if p.is_dir() and (p / "mdef").exists()]
    if (folder / "mdef").exists():
        hmm.append(folder)
    lms = sorted(p for p in folder.iterdir() if p.name.endswith((".lm.bin", ".lm", ".lm.dmp", ".lm.DMP")))
    dicts = sorted(p for p in folder.iterdir() if p.name.endswith(".dict"))
    if not hmm or not lms or not dicts:
        raise EngineError(
            f"local model path {folder} needs an acoustic model folder (with mdef), a *.lm.bin and a *.dict"
        )
    return {"hmm": str(hmm[0]), "lm": str(lms[0]), "dict": str(dicts[0])}


class _DecodeSession:
    """One stream's recogniser state. Synchronous; runs only in the pool, one call at a time."""

    def __init__(
        self,
        decoder_settings: DecoderSettings,
        *,
        language: str,
        endpoint_window: float,
        partial_interval: float,
        max_utterance_seconds: float,
        pre_roll: float,
    ) -> None:
        self._decoder_settings = decoder_settings
        self._language = language
        self._window = endpoint_window
        self._partial_frames = max(1, round(partial_interval * FRAME_RATE))
        self._max_utt_bytes = int(max_utterance_seconds * BYTES_PER_SECOND)
        self._decoder: Any = None
        self._endpointer: Any = None
        self._ep_offset = 0.0  # audio-clock time of the current endpointer's first sample
        self._consumed = 0  # bytes taken in (the audio clock, in bytes)
        self._carry = b""  # less than one endpointer frame
        # The endpointer decides "speech" a little late and misses quiet onsets ("it" in "it was"): keep the
        # recent audio and start each utterance ``pre_roll`` seconds before the endpointer's start.
        self._pre_roll_bytes = int(pre_roll * BYTES_PER_SECOND) // 2 * 2
        self._history = bytearray()
        self._history_start = 0  # absolute byte offset of _history[0]
        self._history_keep = self._pre_roll_bytes + int((endpoint_window + 0.5) * BYTES_PER_SECOND)
        self._last_utt_end = 0  # absolute byte offset where the previous utterance's audio ended
        self._utt_index = 0
        self._in_utt = False
        self._utt_start = 0.0
        self._utt_bytes = 0
        self._frames_at_partial = 0
        self._last_partial = ""
        self._partials_sent = 0

    @property
    def consumed_bytes(self) -> int:
        return self._consumed

    def _ensure(self) -> None:
        if self._decoder is None:
            self._decoder = pocketsphinx.Decoder(**self._decoder_settings.decoder_kwargs())
        if self._endpointer is None:
            self._endpointer = pocketsphinx.Endpointer(window=self._window)
            self._ep_offset = self._consumed / BYTES_PER_SECOND

    def feed(self, pcm: bytes) -> list[Hypothesis]:
        self._ensure()
        out: list[Hypothesis] = []
        ep = self._endpointer
        frame_bytes: int = ep.frame_bytes
        self._history += pcm
        if len(self._history) > 2 * self._history_keep:
            drop = len(self._history) - self._history_keep
            del self._history[:drop]
            self._history_start += drop
        data = self._carry + pcm
        whole = len(data) - len(data) % frame_bytes
        self._carry = data[whole:]
        for offset in range(0, whole, frame_bytes):
            was_in_speech: bool = ep.in_speech
            speech: bytes | None = ep.process(data[offset : offset + frame_bytes])
            if speech is None:
                continue
            if not was_in_speech:
                self._begin(self._ep_offset + ep.speech_start)
            elif self._utt_bytes >= self._max_utt_bytes:
                # A long stretch with no pause: cut it so finals keep coming and searches stay small.
                self._end(out)
                self._begin(self._utt_start + self._utt_bytes / BYTES_PER_SECOND, pre_roll=False)
            self._decoder.process_raw(speech)
            self._utt_bytes += len(speech)
            if not ep.in_speech:
                self._end(out)
        self._consumed += len(pcm)
        if self._in_utt:
            self._maybe_partial(out)
        return out

    def finish(self) -> list[Hypothesis]:
        """End the current utterance (flush): its final, if it has speech; the VAD starts afresh."""
        out: list[Hypothesis] = []
        if self._endpointer is not None and self._endpointer.in_speech:
            # end_stream refuses an empty buffer: one zero sample stands for "no more audio".
            speech: bytes | None = self._endpointer.end_stream(self._carry or bytes(2))
            if speech:
                if not self._in_utt:
                    self._begin(self._ep_offset + self._endpointer.speech_start)
                self._decoder.process_raw(speech)
                self._utt_bytes += len(speech)
        if self._in_utt:
            self._end(out)
        self._carry = b""
        self._endpointer = None  # a new one, whose clock starts at the next sample
        return out

    def _begin(self, start: float, pre_roll: bool = True) -> None:
        self._decoder.start_utt()
        self._in_utt = True
        self._utt_index += 1
        start_byte = round(start * BYTES_PER_SECOND) // 2 * 2
        self._utt_bytes = 0
        if pre_roll and self._pre_roll_bytes:
            begin = max(start_byte - self._pre_roll_bytes, self._last_utt_end, self._history_start)
            if begin < start_byte:
                self._decoder.process_raw(
                    bytes(self._history[begin - self._history_start : start_byte - self._history_start])
                )
                self._utt_bytes = start_byte - begin
                start_byte = begin
        self._utt_start = start_byte / BYTES_PER_SECOND
        self._frames_at_partial = 0
        self._last_partial = ""
        self._partials_sent = 0

    def _words(self, final: bool) -> tuple[Word, ...]:
        words: list[Word] = []
        for seg in self._decoder.seg():
            token: str = seg.word
            if not _is_word(token):
                continue
            confidence = min(1.0, max(0.0, float(seg.prob))) if final else None
            words.append(
                Word(
                    text=_word_text(token),
                    start=round(self._utt_start + seg.start_frame / FRAME_RATE, 3),
                    end=round(self._utt_start + (seg.end_frame + 1) / FRAME_RATE, 3),
                    confidence=confidence,
                )
            )
        return tuple(words)

    def _utt_end(self) -> float:
        return round(self._utt_start + self._utt_bytes / BYTES_PER_SECOND, 3)

    def _maybe_partial(self, out: list[Hypothesis]) -> None:
        frames: int = self._decoder.n_frames()
        if frames - self._frames_at_partial < self._partial_frames:
            return
        self._frames_at_partial = frames
        words = self._words(final=False)
        text = " ".join(w.text for w in words)
        if not text or text == self._last_partial:
            return
        self._last_partial = text
        self._partials_sent += 1
        out.append(
            Hypothesis(
                utterance_id=str(self._utt_index),
                text=text,
                is_final=False,
                start=round(self._utt_start, 3),
                end=self._utt_end(),
                language=self._language,
                words=words,
            )
        )

    def _end(self, out: list[Hypothesis]) -> None:
        self._decoder.end_utt()
        self._in_utt = False
        self._last_utt_end = round(self._utt_start * BYTES_PER_SECOND) + self._utt_bytes
        words = self._words(final=True)
        text = " ".join(w.text for w in words)
        if not text and not self._partials_sent:
            return  # noise: nothing was said, nothing was shown
        confidences = [w.confidence for w in words if w.confidence is not None]
        out.append(
            Hypothesis(
                utterance_id=str(self._utt_index),
                text=text,
                is_final=True,
                start=round(self._utt_start, 3),
                end=self._utt_end(),
                language=self._language,
                confidence=round(sum(confidences) / len(confidences), 3) if confidences else None,
                words=words,
            )
        )


@dataclass(frozen=True, slots=True)
class StreamStats:
    stream_id: int
    log_context: Mapping[str, str]
    pushed_s: float  # audio pushed so far (the audio clock)
    decoded_s: float  # audio the decoder has taken in
    backlog_s: float  # pushed and not yet decoded: <= max_pending_seconds + chunk_seconds (the chunk in hand)
    lag_s: float  # how long the oldest undecoded audio has waited (wall clock)
    cpu_s: float  # thread CPU time spent decoding this stream
    saturated: bool  # lag_s is above the engine's lag_warning_seconds
    saturation_events: int  # times this stream fell behind by more than that


@dataclass(frozen=True, slots=True)
class EngineStats:
    workers: int
    streams: tuple[StreamStats, ...]  # open streams
    saturation_events: int  # since the engine started, closed streams included
    cpu_s: float  # decoding CPU time since the engine started, closed streams included

    @property
    def max_backlog_s(self) -> float:
        return max((s.backlog_s for s in self.streams), default=0.0)

    @property
    def max_lag_s(self) -> float:
        return max((s.lag_s for s in self.streams), default=0.0)


class LocalEngine(SpeechEngine):
    """PocketSphinx engine: a decoder per stream, decoding in a bounded thread pool shared by all streams."""

    name = "local"

    def __init__(
        self,
        *,
        model_path: str | None = None,
        language: str = "en-us",
        decoder_threads: int = 2,
        max_hmm_per_frame: int = 3000,
        fwdflat: bool = False,
        partial_interval: float = 0.4,
        chunk_seconds: float = 0.1,
        max_pending_seconds: float = 3.0,
        lag_warning_seconds: float = 1.0,
        max_utterance_seconds: float = 15.0,
        pre_roll: float = 0.3,
        event_queue_size: int = 256,
    ) -> None:
        if decoder_threads < 1:
            raise ValueError("decoder_threads must be at least 1")
        if not 0.01 <= chunk_seconds <= max_pending_seconds:
            raise ValueError("need 0.01 <= chunk_seconds <= max_pending_seconds")
        if model_path is not None:
            _model_files(Path(model_path))  # fail now, not on a track's first push
        self.decoder_settings = DecoderSettings(model_path, max_hmm_per_frame, fwdflat)
        self.language = language
        self.decoder_threads = decoder_threads
        self.partial_interval = partial_interval
        self.chunk_seconds = chunk_seconds
        self.max_pending_seconds = max_pending_seconds
        self.lag_warning_seconds = lag_warning_seconds
        self.max_utterance_seconds = max_utterance_seconds
        self.pre_roll = pre_roll
        self.event_queue_size = event_queue_size
        self._executor = ThreadPoolExecutor(max_workers=decoder_threads, thread_name_prefix="pocketsphinx")
        self._streams: dict[int, LocalStream] = {}
        self._next_id = 0
        self._closed_saturations = 0
        self._closed_cpu = 0.0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEngine:
        return cls(
            model_path=settings.local_model_path,
            language=settings.local_language,
            decoder_threads=settings.local_decoder_threads,
        )

    def open_stream(self, options: StreamOptions) -> LocalStream:
        if self._closed:
            raise EngineError("the local engine is closed")
        self._next_id += 1
        stream = LocalStream(self, self._next_id, options)
        self._streams[stream.stream_id] = stream
        return stream

    def stats(self) -> EngineStats:
        streams = tuple(s.stats() for s in self._streams.values())
        return EngineStats(
            workers=self.decoder_threads,
            streams=streams,
            saturation_events=self._closed_saturations + sum(s.saturation_events for s in streams),
            cpu_s=round(self._closed_cpu + sum(s.cpu_s for s in streams), 3),
        )

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(s.aclose() for s in list(self._streams.values())), return_exceptions=True)
        # Every stream has awaited its last pool call, so this returns at once.
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _stream_closed(self, stream: LocalStream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            self._closed_saturations += stream.stats().saturation_events
            self._closed_cpu += stream.stats().cpu_s

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor


class _End:
    """Marks the end of `events()`; carries the error if the stream failed."""

    def __init__(self, error: EngineError | None = None) -> None:
        self.error = error


class LocalStream(EngineStream):
    def __init__(self, engine: LocalEngine, stream_id: int, options: StreamOptions) -> None:
        self._engine = engine
        self.stream_id = stream_id
        self._log: dict[str, str] = {**options.log_context, "engine": "local", "stream": str(stream_id)}
        self._session = _DecodeSession(
            engine.decoder_settings,
            language=engine.language,
            endpoint_window=min(2.0, max(0.15, options.endpointing)),
            partial_interval=engine.partial_interval,
            max_utterance_seconds=engine.max_utterance_seconds,
            pre_roll=engine.pre_roll,
        )
        self._chunk_bytes = int(engine.chunk_seconds * BYTES_PER_SECOND)
        self._max_pending = max(self._chunk_bytes, int(engine.max_pending_seconds * BYTES_PER_SECOND))
        self._pending = bytearray()
        self._pushed = 0
        self._taken = 0  # bytes handed to the decoder (taken out of _pending)
        self._push_marks: deque[list[float]] = deque()  # [end byte offset, monotonic time of its push]
        self._flushes: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._events: asyncio.Queue[EngineEvent | _End] = asyncio.Queue(maxsize=engine.event_queue_size)
        self._wake = asyncio.Event()  # data, a flush or close for the worker
        self._space = asyncio.Event()  # room in _pending for push
        self._worker: asyncio.Task[None] | None = None
        self._error: EngineError | None = None
        self._closed = False
        self._cpu = 0.0
        self._saturated = False
        self.saturation_events = 0
        self._last_pool_wait = 0.0
        self._in_flight: Future[tuple[list[Hypothesis], float, float]] | None = None

    # -- EngineStream -------------------------------------------------------------------------------------

    async def push(self, pcm: bytes) -> None:
        view = memoryview(pcm).cast("B")
        while len(view):
            self._check_open()
            room = self._max_pending - len(self._pending)
            if room <= 0:
                self._check_saturation()  # say so even while the pool has not yet answered
                self._space.clear()
                self._start()
                await self._space.wait()
                continue
            piece = view[:room]
            self._pending += piece
            self._pushed += len(piece)
            self._mark_push(self._pushed)
            view = view[len(piece) :]
            self._wake.set()
            self._start()

    async def flush(self) -> None:
        self._check_open()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((self._pushed, done))
        self._wake.set()
        self._start()
        await done

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._space.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._in_flight is not None and not self._in_flight.done():
            # A pool call cannot be interrupted: wait for it, so nothing touches the decoder after aclose.
            await asyncio.gather(asyncio.wrap_future(self._in_flight), return_exceptions=True)
        for _, done in self._flushes:
            if not done.done():
                done.set_exception(EngineError("stream closed before its flush completed"))
                done.exception()  # retrieved: nobody may be awaiting it any more
        self._flushes.clear()
        self._put_end_nowait(_End(self._error))
        self._engine._stream_closed(self)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            item = await self._events.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    # -- stats --------------------------------------------------------------------------------------------

    @property
    def cpu_s(self) -> float:
        return self._cpu

    def lag_s(self, now: float | None = None) -> float:
        """Wall time the oldest undecoded audio has been waiting (0 when none waits)."""
        consumed = self._session.consumed_bytes
        for end, pushed_at in self._push_marks:
            if end > consumed:
                return max(0.0, (time.monotonic() if now is None else now) - pushed_at)
        return 0.0

    def stats(self) -> StreamStats:
        decoded = self._session.consumed_bytes
        return StreamStats(
            stream_id=self.stream_id,
            log_context=dict(self._log),
            pushed_s=round(self._pushed / BYTES_PER_SECOND, 3),
            decoded_s=round(decoded / BYTES_PER_SECOND, 3),
            backlog_s=round((self._pushed - decoded) / BYTES_PER_SECOND, 3),
            lag_s=round(self.lag_s(), 3),
            cpu_s=round(self._cpu, 3),
            saturated=self._saturated,
            saturation_events=self.saturation_events,
        )

    # -- internals ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise EngineError("stream is closed")

    def _start(self) -> None:
        if self._worker is None and not self._closed:
            self._worker = asyncio.create_task(self._run(), name=f"local-stt:{self.stream_id}")

    def _mark_push(self, end: int) -> None:
        now = time.monotonic()
        if self._push_marks and now - self._push_marks[-1][1] < 0.02:
            self._push_marks[-1][0] = end  # coalesce pushes within 20 ms: bounded, and ~exact
        else:
            self._push_marks.append([end, now])

    def _forget_marks(self, consumed: int) -> None:
        while self._push_marks and self._push_marks[0][0] <= consumed:
            self._push_marks.popleft()

    async def _run(self) -> None:
        gathered = False
        try:
            while True:
                if self._flushes and self._taken >= self._flushes[0][0]:
                    await self._emit(await self._call(self._session.finish))
                    _, done = self._flushes.popleft()  # popped only now: if finish fails, flush raises
                    if not done.done():
                        done.set_result(None)
                    continue
                if self._pending:
                    if not gathered and not self._flushes and len(self._pending) < self._chunk_bytes // 2:
                        # Pushes of 10 ms: let a few gather, for fewer and larger pool calls (+<=50 ms).
                        gathered = True
                        await asyncio.sleep(_GATHER_SECONDS)
                        continue
                    gathered = False
                    size = min(len(self._pending), self._chunk_bytes)
                    if self._flushes:
                        size = min(size, self._flushes[0][0] - self._taken)
                    chunk = bytes(self._pending[:size])
                    del self._pending[:size]
                    self._taken += size
                    self._space.set()
                    await self._emit(await self._call(self._session.feed, chunk))
                    self._forget_marks(self._session.consumed_bytes)
                    self._check_saturation()
                    continue
                self._wake.clear()
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EngineError) else EngineError(f"pocketsphinx failed: {exc!r}")
            logger.exception("local speech engine failed", extra=self._log)
            self._error = error
            self._space.set()
            for _, done in self._flushes:
                if not done.done():
                    done.set_exception(error)
                    done.exception()
            self._flushes.clear()
            self._put_end_nowait(_End(error))

    async def _call(self, fn: Any, *args: Any) -> list[Hypothesis]:
        submitted = time.monotonic()

        def timed() -> tuple[list[Hypothesis], float, float]:
            started = time.monotonic()
            cpu = time.thread_time()
            result: list[Hypothesis] = fn(*args)
            return result, started, time.thread_time() - cpu

        self._in_flight = self._engine.executor.submit(timed)
        result, started, cpu = await asyncio.wrap_future(self._in_flight)
        self._cpu += cpu
        self._last_pool_wait = started - submitted
        return result

    async def _emit(self, hypotheses: list[Hypothesis]) -> None:
        for hypothesis in hypotheses:
            await self._events.put(hypothesis)

    def _check_saturation(self) -> None:
        lag = self.lag_s()
        threshold = self._engine.lag_warning_seconds
        if not self._saturated and lag > threshold:
            self._saturated = True
            self.saturation_events += 1
            logger.warning(
                "local speech engine behind real time",
                extra={
                    **self._log,
                    "lag_s": round(lag, 2),
                    "backlog_s": round((self._pushed - self._session.consumed_bytes) / BYTES_PER_SECOND, 2),
                    "pool_wait_s": round(self._last_pool_wait, 3),
                    "open_streams": len(self._engine._streams),
                    "workers": self._engine.decoder_threads,
                },
            )
        elif self._saturated and lag < threshold / 2:
            self._saturated = False
            logger.info("local speech engine caught up", extra={**self._log, "lag_s": round(lag, 2)})

    def _put_end_nowait(self, end: _End) -> None:
        """The end marker must get through even if nobody reads: make room by dropping the oldest events."""
        while True:
            try:
                self._events.put_nowait(end)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()


__all__ = ["DecoderSettings", "EngineStats", "LocalEngine", "LocalStream", "StreamStats"]
