"""Offline speech-to-text with PocketSphinx: roomscribe works with no cloud key.

Each stream owns one `pocketsphinx.Decoder` and one `pocketsphinx.Endpointer` (WebRTC-style VAD). The
endpointer cuts the audio into utterances: a final per utterance, partials every ``partial_interval`` seconds
of new speech while it lasts. Word times come from ``Decoder.seg()`` (100 frames a second, counted from the
utterance's first sample) and are put on the stream's audio clock; word confidences are the lattice
posteriors ``Segment.prob`` the decoder computes at the end of an utterance (``bestpath``), clamped to [0, 1];
partials carry none.

Processes: decoding never runs on the event loop, nor in its process. PocketSphinx 5.1.1 never releases the
GIL (its extension imports no ``PyEval_SaveThread``), so a decoder call in a thread still stalls the event
loop for its whole length (10-90 ms per 0.1 s of audio, ~0.4 s to build a decoder). The engine therefore runs
a small pool of long-lived decoder processes (``decoder_processes``, spawned on first use; each decodes on
about one core). Each stream is pinned to one process, which holds its decoder and endpointer (they are
stateful, and are built there too); requests carry the stream id. The loop only hands requests to a writer
thread and gets replies from a reader thread (a blocking ``recv``, which releases the GIL). Each stream has
a single worker task that awaits each reply before sending its next request. A process that dies fails the
streams pinned to it (their `events()` raise `EngineError`, with one error log line each); streams on other
processes go on, and new streams get a fresh process.

Audio that waits is bounded: each stream holds at most ``max_pending_seconds`` of undecoded audio, and
`push` waits when it is full. When the oldest undecoded audio has waited more than ``lag_warning_seconds``,
the stream logs a warning (with its log context) and counts a saturation event; `LocalEngine.stats()` shows
the backlog and lag of every stream.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final

import pocketsphinx

from agent.engines.base import (
    BYTES_PER_SECOND,
    EngineError,
    EngineEvent,
    EngineStream,
    EventChannel,
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
    """One stream's recogniser state. Synchronous; lives in a decoder process, one call at a time."""

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


# -- the decoder processes ----------------------------------------------------------------------------------

#: A request to a decoder process: (request id, stream id, operation, argument). Operations: "open" (argument:
#: the `_DecodeSession` keyword arguments; no reply), "feed" (PCM bytes), "finish" (None), "close" (None; no
#: reply). ``None`` instead of a request (or the parent's end of the pipe closing) stops the process.
_Request = tuple[int, int, str, Any]


@dataclass(frozen=True, slots=True)
class _Reply:
    """A decoder process's answer to a "feed" or "finish" request."""

    request_id: int
    error: str | None
    hypotheses: list[Hypothesis]
    consumed_bytes: int  # the stream's audio taken in by its decoder, after this call
    started: float  # time.monotonic() (system-wide) when the process began the call
    cpu_s: float  # CPU time of the call


def _decoder_process_main(requests: Connection, replies: Connection) -> None:
    """A decoder process: holds the `_DecodeSession` (decoder, endpointer) of every stream pinned to it and
    runs their calls one at a time, in arrival order. Ends when the parent says so or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    sessions: dict[int, _DecodeSession] = {}
    while True:
        try:
            request: _Request | None = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        request_id, stream_id, op, arg = request
        if op == "open":
            sessions[stream_id] = _DecodeSession(**arg)
            continue
        if op == "close":
            sessions.pop(stream_id, None)
            continue
        started, cpu = time.monotonic(), time.thread_time()
        error: str | None = None
        hypotheses: list[Hypothesis] = []
        session = sessions.get(stream_id)
        try:
            if session is None:
                raise EngineError(f"decoder process has no stream {stream_id}")
            hypotheses = session.feed(arg) if op == "feed" else session.finish()
        except EngineError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"pocketsphinx failed: {exc!r}"
        consumed = session.consumed_bytes if session is not None else 0
        reply = _Reply(request_id, error, hypotheses, consumed, started, time.thread_time() - cpu)
        try:
            replies.send(reply)
        except OSError:
            return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _DecoderProcess:
    """One long-lived decoder process, seen from the engine's event loop.

    Requests go to a writer thread (``conn.send`` may block when the pipe is full; the loop never does) and
    replies come back through a reader thread (a blocking ``recv``, which releases the GIL) that hands each
    one to the loop with ``call_soon_threadsafe``. The process starts on the first push of a stream pinned to
    it, in a thread. When it dies, every pending request fails and the engine is told (``on_death``).
    """

    def __init__(self, index: int, on_death: Callable[[_DecoderProcess, EngineError], None]) -> None:
        self.index = index
        self.pid: int | None = None
        self.error: EngineError | None = None
        self.stream_ids: set[int] = set()
        self._on_death = on_death
        self._process: SpawnProcess | None = None
        self._outbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._pending: dict[int, asyncio.Future[_Reply]] = {}
        self._next_request = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Future[None] | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def started(self) -> bool:
        return self._starting is not None

    async def ensure_started(self) -> None:
        if self._starting is None:
            self._loop = asyncio.get_running_loop()
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start_blocking))
        try:
            # Shielded: a stream closing while the process starts must not abandon the start half-way.
            await asyncio.shield(self._starting)
        except EngineError as exc:
            self.error = exc  # the engine pins new streams to a fresh process instead
            raise

    def _start_blocking(self) -> None:
        context = multiprocessing.get_context("spawn")
        child_requests, requests = context.Pipe(duplex=False)
        replies, child_replies = context.Pipe(duplex=False)
        process = context.Process(
            target=_decoder_process_main,
            args=(child_requests, child_replies),
            name=f"pocketsphinx-{self.index}",
            daemon=True,  # never outlives the agent, even if aclose is never called
        )
        try:
            process.start()
        except Exception as exc:
            requests.close()
            replies.close()
            raise EngineError(f"could not start a local decoder process: {exc!r}") from exc
        finally:
            # Only the child holds these ends now: its death is EOF for our reader, ours is EOF for it.
            child_requests.close()
            child_replies.close()
        self._process = process
        self.pid = process.pid
        self._threads = [
            threading.Thread(target=self._write, args=(requests,), name=f"{process.name}-send", daemon=True),
            threading.Thread(target=self._read, args=(replies,), name=f"{process.name}-recv", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def request(self, stream_id: int, op: str, arg: Any) -> asyncio.Future[_Reply]:
        """Send a "feed" or "finish"; the future gets the reply, or EngineError if the process dies."""
        if self.error is not None:
            raise self.error
        assert self._loop is not None, "ensure_started first"
        self._next_request += 1
        future: asyncio.Future[_Reply] = self._loop.create_future()
        self._pending[self._next_request] = future
        self._outbox.put((self._next_request, stream_id, op, arg))
        return future

    def notify(self, stream_id: int, op: str, arg: Any) -> None:
        """Send an "open" or "close" (no reply)."""
        if self.error is None and self.started:
            self._outbox.put((0, stream_id, op, arg))

    def _write(self, conn: Connection) -> None:
        try:
            while (item := self._outbox.get()) is not None:
                conn.send(item)
        except OSError:
            pass  # the process is gone: the reader reports it
        finally:
            conn.close()  # EOF for the process: it exits

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                reply: _Reply = conn.recv()
                self._post(self._deliver, reply)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
        if self._stopping or self._process is None:
            return
        self._process.join(1.0)
        self._post(self._died, self._process.exitcode)

    def _post(self, callback: Callable[[Any], None], arg: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, arg)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _deliver(self, reply: _Reply) -> None:
        future = self._pending.pop(reply.request_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _died(self, exit_code: int | None) -> None:
        if self._stopping or self.error is not None:
            return
        self.error = EngineError(
            f"local decoder process {self.pid} ({self._process.name if self._process else '?'}) died "
            f"({_describe_exit(exit_code)}); its streams cannot go on"
        )
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self.error)
                future.exception()  # retrieved: the stream may be closing and no longer awaiting it
        self._on_death(self, self.error)

    def stop_blocking(self, timeout: float) -> None:
        """Ask the process to exit, wait up to ``timeout`` seconds, then kill it. Runs in a thread."""
        self._stopping = True
        self._outbox.put(None)
        process = self._process
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                logger.warning("local decoder process did not exit: killing it", extra={"pid": process.pid})
                process.kill()
                process.join(1.0)
        for thread in self._threads:
            thread.join(1.0)
        if process is not None and process.exitcode is not None:
            process.close()


# -- the engine ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStats:
    stream_id: int
    log_context: Mapping[str, str]
    pushed_s: float  # audio pushed so far (the audio clock)
    decoded_s: float  # audio the decoder has taken in
    backlog_s: float  # pushed and not yet decoded: <= max_pending_seconds + chunk_seconds (the chunk in hand)
    lag_s: float  # how long the oldest undecoded audio has waited (wall clock)
    cpu_s: float  # CPU time its decoder process spent decoding this stream
    saturated: bool  # lag_s is above the engine's lag_warning_seconds
    saturation_events: int  # times this stream fell behind by more than that


@dataclass(frozen=True, slots=True)
class EngineStats:
    workers: int  # decoder processes
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
    """PocketSphinx engine: a decoder per stream, in a pool of decoder processes shared by all streams."""

    name = "local"

    def __init__(
        self,
        *,
        model_path: str | None = None,
        language: str = "en-us",
        decoder_processes: int = 1,
        max_hmm_per_frame: int = 3000,
        fwdflat: bool = False,
        partial_interval: float = 0.4,
        chunk_seconds: float = 0.1,
        max_pending_seconds: float = 3.0,
        lag_warning_seconds: float = 1.0,
        max_utterance_seconds: float = 15.0,
        pre_roll: float = 0.3,
        event_queue_size: int = 256,
        stop_timeout: float = 3.0,
    ) -> None:
        if decoder_processes < 1:
            raise ValueError("decoder_processes must be at least 1")
        if not 0.01 <= chunk_seconds <= max_pending_seconds:
            raise ValueError("need 0.01 <= chunk_seconds <= max_pending_seconds")
        if model_path is not None:
            _model_files(Path(model_path))  # fail now, not on a track's first push
        self.decoder_settings = DecoderSettings(model_path, max_hmm_per_frame, fwdflat)
        self.language = language
        self.decoder_processes = decoder_processes
        self.partial_interval = partial_interval
        self.chunk_seconds = chunk_seconds
        self.max_pending_seconds = max_pending_seconds
        self.lag_warning_seconds = lag_warning_seconds
        self.max_utterance_seconds = max_utterance_seconds
        self.pre_roll = pre_roll
        self.event_queue_size = event_queue_size
        self.stop_timeout = stop_timeout
        # Started lazily, on the first push of a stream pinned to them.
        self._processes = [_DecoderProcess(i, self._process_died) for i in range(decoder_processes)]
        self._dead: list[_DecoderProcess] = []  # replaced after dying; still to be joined
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
            decoder_processes=settings.local_decoder_processes,
        )

    def open_stream(self, options: StreamOptions) -> LocalStream:
        if self._closed:
            raise EngineError("the local engine is closed")
        self._next_id += 1
        stream = LocalStream(self, self._next_id, options, self._pin(self._next_id))
        self._streams[stream.stream_id] = stream
        return stream

    def _pin(self, stream_id: int) -> _DecoderProcess:
        """The process with the fewest open streams (a dead one is replaced by a fresh one first)."""
        for index, process in enumerate(self._processes):
            if process.error is not None:
                self._dead.append(process)
                self._processes[index] = _DecoderProcess(index, self._process_died)
        process = min(self._processes, key=lambda p: (len(p.stream_ids), p.index))
        process.stream_ids.add(stream_id)
        return process

    def stats(self) -> EngineStats:
        streams = tuple(s.stats() for s in self._streams.values())
        return EngineStats(
            workers=self.decoder_processes,
            streams=streams,
            saturation_events=self._closed_saturations + sum(s.saturation_events for s in streams),
            cpu_s=round(self._closed_cpu + sum(s.cpu_s for s in streams), 3),
        )

    @property
    def process_ids(self) -> tuple[int | None, ...]:
        """The pid of each decoder process (None: not started yet)."""
        return tuple(p.pid for p in self._processes)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(s.aclose() for s in list(self._streams.values())), return_exceptions=True)
        processes = [p for p in (*self._processes, *self._dead) if p.started]
        # A process still starting finishes starting (it cannot be interrupted), then stops.
        await asyncio.gather(*(p.ensure_started() for p in processes), return_exceptions=True)
        await asyncio.gather(
            *(asyncio.to_thread(p.stop_blocking, self.stop_timeout) for p in processes),
            return_exceptions=True,
        )
        self._dead.clear()

    def _process_died(self, process: _DecoderProcess, error: EngineError) -> None:
        for stream in list(self._streams.values()):
            if stream.decoder_process is process:
                stream._fail(error)

    def _stream_closed(self, stream: LocalStream) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            stream.decoder_process.stream_ids.discard(stream.stream_id)
            self._closed_saturations += stream.stats().saturation_events
            self._closed_cpu += stream.stats().cpu_s


class LocalStream(EngineStream):
    def __init__(
        self, engine: LocalEngine, stream_id: int, options: StreamOptions, process: _DecoderProcess
    ) -> None:
        self._engine = engine
        self.stream_id = stream_id
        self.decoder_process = process
        self._log: dict[str, str] = {**options.log_context, "engine": "local", "stream": str(stream_id)}
        self._session_args: dict[str, Any] = {
            "decoder_settings": engine.decoder_settings,
            "language": engine.language,
            "endpoint_window": min(2.0, max(0.15, options.endpointing)),
            "partial_interval": engine.partial_interval,
            "max_utterance_seconds": engine.max_utterance_seconds,
            "pre_roll": engine.pre_roll,
        }
        self._opened = False  # the process holds our session
        self._chunk_bytes = int(engine.chunk_seconds * BYTES_PER_SECOND)
        self._max_pending = max(self._chunk_bytes, int(engine.max_pending_seconds * BYTES_PER_SECOND))
        self._pending = bytearray()
        self._pushed = 0
        self._taken = 0  # bytes handed to the decoder (taken out of _pending)
        self._consumed = 0  # bytes the decoder has taken in, as of its last reply
        self._push_marks: deque[list[float]] = deque()  # [end byte offset, monotonic time of its push]
        self._flushes: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._events = EventChannel(engine.event_queue_size)
        self._wake = asyncio.Event()  # data, a flush or close for the worker
        self._space = asyncio.Event()  # room in _pending for push
        self._worker: asyncio.Task[None] | None = None
        self._error: EngineError | None = None
        self._closed = False
        self._cpu = 0.0
        self._saturated = False
        self.saturation_events = 0
        self._last_pool_wait = 0.0
        self._in_flight: asyncio.Future[_Reply] | None = None

    # -- EngineStream -------------------------------------------------------------------------------------

    async def push(self, pcm: bytes) -> None:
        view = memoryview(pcm).cast("B")
        while len(view):
            self._check_open()
            room = self._max_pending - len(self._pending)
            if room <= 0:
                self._check_saturation()  # say so even while the decoder has not yet answered
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
            # A decoder call cannot be interrupted: wait for its reply (or the process's death).
            await asyncio.gather(self._in_flight, return_exceptions=True)
        if self._opened:
            self.decoder_process.notify(self.stream_id, "close", None)
        for _, done in self._flushes:
            if not done.done():
                done.set_exception(EngineError("stream closed before its flush completed"))
                done.exception()  # retrieved: nobody may be awaiting it any more
        self._flushes.clear()
        self._events.end(self._error)
        self._engine._stream_closed(self)

    def events(self) -> AsyncIterator[EngineEvent]:
        return aiter(self._events)

    # -- stats --------------------------------------------------------------------------------------------

    @property
    def cpu_s(self) -> float:
        return self._cpu

    def lag_s(self, now: float | None = None) -> float:
        """Wall time the oldest undecoded audio has been waiting (0 when none waits)."""
        for end, pushed_at in self._push_marks:
            if end > self._consumed:
                return max(0.0, (time.monotonic() if now is None else now) - pushed_at)
        return 0.0

    def stats(self) -> StreamStats:
        return StreamStats(
            stream_id=self.stream_id,
            log_context=dict(self._log),
            pushed_s=round(self._pushed / BYTES_PER_SECOND, 3),
            decoded_s=round(self._consumed / BYTES_PER_SECOND, 3),
            backlog_s=round((self._pushed - self._consumed) / BYTES_PER_SECOND, 3),
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
            while self._error is None:
                if self._flushes and self._taken >= self._flushes[0][0]:
                    await self._emit(await self._call("finish", None))
                    _, done = self._flushes.popleft()  # popped only now: if finish fails, flush raises
                    if not done.done():
                        done.set_result(None)
                    continue
                if self._pending:
                    if not gathered and not self._flushes and len(self._pending) < self._chunk_bytes // 2:
                        # Pushes of 10 ms: let a few gather, for fewer and larger decoder calls (+<=50 ms).
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
                    await self._emit(await self._call("feed", chunk))
                    self._forget_marks(self._consumed)
                    self._check_saturation()
                    continue
                self._wake.clear()
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, EngineError):
                self._fail(exc)
            else:
                self._fail(EngineError(f"local speech engine failed: {exc!r}"), exc_info=exc)

    async def _call(self, op: str, arg: Any) -> list[Hypothesis]:
        """One "feed" or "finish" in the stream's decoder process; the loop only waits for the reply."""
        process = self.decoder_process
        if not self._opened:
            await process.ensure_started()
            process.notify(self.stream_id, "open", self._session_args)
            self._opened = True
        submitted = time.monotonic()
        self._in_flight = process.request(self.stream_id, op, arg)
        # Shielded: aclose cancels this task, then awaits the reply itself.
        reply = await asyncio.shield(self._in_flight)
        self._consumed = reply.consumed_bytes
        self._cpu += reply.cpu_s
        self._last_pool_wait = max(0.0, reply.started - submitted)
        if reply.error is not None:
            raise EngineError(reply.error)
        return reply.hypotheses

    async def _emit(self, hypotheses: list[Hypothesis]) -> None:
        for hypothesis in hypotheses:
            await self._events.put(hypothesis)

    def _fail(self, error: EngineError, exc_info: BaseException | None = None) -> None:
        """The stream cannot go on: one error line, push/flush raise, `events()` raises after what it has."""
        if self._error is not None or self._closed:
            return
        self._error = error
        logger.error("local speech engine failed: %s", error, extra=self._log, exc_info=exc_info)
        self._space.set()
        self._wake.set()
        for _, done in self._flushes:
            if not done.done():
                done.set_exception(error)
                done.exception()
        self._flushes.clear()
        self._events.end(error)

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
                    "backlog_s": round((self._pushed - self._consumed) / BYTES_PER_SECOND, 2),
                    "pool_wait_s": round(self._last_pool_wait, 3),
                    "open_streams": len(self._engine._streams),
                    "streams_on_process": len(self.decoder_process.stream_ids),
                    "workers": self._engine.decoder_processes,
                },
            )
        elif self._saturated and lag < threshold / 2:
            self._saturated = False
            logger.info("local speech engine caught up", extra={**self._log, "lag_s": round(lag, 2)})


__all__ = ["DecoderSettings", "EngineStats", "LocalEngine", "LocalStream", "StreamStats"]
