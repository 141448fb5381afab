"""Gladia live v2 speech-to-text on aiohttp, written from ``/work/shared/reference/gladia-live-v2.md``.

One `GladiaStream` per track. Audio flows ``push()`` -> *units* -> Gladia sessions:

* A **unit** is a contiguous run of the stream's audio that goes to one Gladia session at a time (a new
  session only if the previous one is gone). A unit ends on ``flush()``, after ``silence_close_after``
  of silence (so a muted participant holds no session: Gladia counts open sessions), or at a pause once
  the session is older than ``rotate_after`` (Gladia's 3 h cap). The next voiced audio opens a new unit
  that starts with the last ``pre_roll`` of audio, so the first words are not lost. Units are served one
  after another by a single worker task, so a stream holds at most one Gladia session.
* **No audio lost**: a unit keeps every byte until Gladia acknowledges it (acks count session-cumulative
  bytes). A dropped socket (no close frame, or a close code other than 1000 / 4400-4499) is resumed on the
  same URL with backoff; the un-acked bytes are resent first in frames of at most 512 KiB. A session
  that is gone (handshake refused, unrequested 1000, 4400-4499) is replaced by a new one (POST) and the
  un-acked bytes go there.
* **One timeline**: each session keeps a list of segments ``(session byte, stream byte)``. A new segment
  starts whenever the bytes sent stop being contiguous (reconnect resend, overflow drop); the first ack of a
  connection tells where the server really was (a resend may repeat bytes the server already had), and the
  segment is shifted to match. Gladia times are mapped through these segments onto the stream's audio clock.
* **Bounded**: the un-acked audio of all units is capped (``max_buffer_seconds``). ``push()`` waits up to
  ``push_timeout`` for acks while connected; otherwise (an outage) the oldest audio is dropped at once with
  an `AudioGap` event and a warning. The event queue is bounded; a slow reader slows the socket reader, so
  acks slow down and ``push()`` feels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import numpy as np

from agent.engines.base import (
    BYTES_PER_SECOND,
    AudioGap,
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

#: Largest frame we ever send (Gladia closes with 1009 above 1 MiB).
MAX_FRAME_BYTES: Final = 512 * 1024
#: VAD frame: 20 ms of 16 kHz mono PCM16.
_VAD_FRAME: Final = BYTES_PER_SECOND // 50
#: How far back (in session bytes) time mapping must still work: finals come after their acks.
_SEGMENT_MEMORY: Final = 120 * BYTES_PER_SECOND
_RETRYABLE_INIT: Final = frozenset({408, 425, 429})
_GONE_HANDSHAKE: Final = frozenset({401, 403, 404, 410})
_KEEPALIVE: Final = json.dumps({"type": "audio_chunk", "data": {"chunk": ""}})
_STOP: Final = json.dumps({"type": "stop_recording"})
#: Server messages we understand and deliberately ignore.
_IGNORED_TYPES: Final = frozenset(
    {
        "speech_start",
        "speech_end",
        "start_session",
        "start_recording",
        "end_recording",
        "post_transcript",
        "post_final_transcript",
        "post_summarization",
        "post_chapterization",
        "translation",
        "named_entity_recognition",
        "sentiment_analysis",
    }
)

Outcome = Literal["done", "gone", "dropped"]


@dataclass(frozen=True, slots=True)
class GladiaTuning:
    """Knobs. Defaults suit production; tests shrink them."""

    chunk_seconds: float = 0.1
    #: Cap on audio held for Gladia (un-acked + not yet sent), all units together.
    max_buffer_seconds: float = 60.0
    #: How long ``push()`` waits for acks (while connected) before dropping the oldest audio.
    push_timeout: float = 1.0
    #: RMS (of samples scaled to [-1, 1]) at or above which a 20 ms frame counts as voice.
    silence_rms: float = 0.01
    #: Close the Gladia session after this much silence (or this long with no push at all).
    silence_close_after: float = 20.0
    #: Audio kept from before the first voiced frame when a session (re)opens on speech.
    pre_roll_seconds: float = 1.5
    #: With no audio to send for this long, send an empty ``audio_chunk`` (Gladia drops idle sockets ~30 s).
    keepalive_interval: float = 5.0
    #: Rotate to a new session at the next pause once a session is this old (Gladia's cap is 3 h).
    rotate_after: float = 2 * 3600 + 50 * 60
    #: Rotate even without a pause at this age.
    max_session_age: float = 2 * 3600 + 58 * 60
    #: Silence that counts as a pause for rotation.
    pause_seconds: float = 0.3
    #: Wait for a session's finals and end after ``stop_recording``.
    stop_timeout: float = 10.0
    #: Upper bound on ``flush()``.
    flush_timeout: float = 15.0
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    http_timeout: float = 10.0
    connect_timeout: float = 10.0
    #: Failed reconnects to one session URL before giving it up for a new session.
    max_resume_attempts: int = 6
    maximum_duration_without_endpointing: float = 15.0
    event_queue_size: int = 256
    heartbeat: float | None = 10.0


class GladiaEngine(SpeechEngine):
    """Gladia live v2. One shared `aiohttp.ClientSession` (made on first use), closed by `aclose`."""

    name = "gladia"

    def __init__(
        self,
        api_key: str,
        api_url: str = "https://api.gladia.io",
        region: str | None = None,
        *,
        tuning: GladiaTuning | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("a Gladia API key is required")
        self._api_key = api_key
        self.api_url = api_url.rstrip("/")
        self.region = region
        self.tuning = tuning or GladiaTuning()
        self._http: aiohttp.ClientSession | None = None
        self._streams: set[GladiaStream] = set()
        self._next_stream = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, tuning: GladiaTuning | None = None) -> GladiaEngine:
        if settings.gladia_api_key is None:
            raise ValueError("GLADIA_API_KEY is not set")
        return cls(
            settings.gladia_api_key.get_secret_value(),
            settings.gladia_api_url,
            settings.gladia_region,
            tuning=tuning,
        )

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    @property
    def api_key(self) -> str:
        return self._api_key

    def open_stream(self, options: StreamOptions) -> GladiaStream:
        self._next_stream += 1
        stream = GladiaStream(self, options, self._next_stream)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _stream_closed(self, stream: GladiaStream) -> None:
        self._streams.discard(stream)


class _Fatal(EngineError):
    """Stop the stream: retrying cannot help."""


class _SessionGone(Exception):
    """The session URL no longer works; open a new session."""


@dataclass
class _Unit:
    """A contiguous run of stream audio (stream byte positions), served by one session at a time."""

    start: int
    buf: bytearray = field(default_factory=bytearray)
    buf_start: int = 0  # stream position of buf[0] (everything before it is acked or dropped)
    sent_upto: int = 0  # stream position up to which audio went out on the current connection
    high_sent: int = 0  # highest stream position ever sent (for resend framing)
    closing: bool = False
    reason: str = ""
    session_opened_at: float | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buf_start = self.sent_upto = self.high_sent = self.start

    @property
    def end(self) -> int:
        return self.buf_start + len(self.buf)


@dataclass
class _Session:
    id: str
    url: str
    index: int
    opened_at: float
    segments: list[tuple[float, float]] = field(default_factory=list)  # (session byte, stream byte)
    sess_sent: int = 0  # session bytes we believe the server has
    acked: int = 0  # session-cumulative bytes acknowledged
    conn_segment: int = 0  # first segment made on the current connection
    first_ack_pending: bool = True
    last_sent_end: int | None = None  # stream position after the last byte sent on this connection
    stop_sent: bool = False
    ended: bool = False
    final_ids: set[str] = field(default_factory=set)

    def to_stream_bytes(self, session_bytes: float) -> float:
        for sess, stream in reversed(self.segments):
            if sess <= session_bytes:
                return stream + (session_bytes - sess)
        if self.segments:
            sess, stream = self.segments[0]
            return stream + (session_bytes - sess)
        return session_bytes

    def to_stream_time(self, seconds: float) -> float:
        return round(self.to_stream_bytes(seconds * BYTES_PER_SECOND) / BYTES_PER_SECOND, 3)


class GladiaStream(EngineStream):
    def __init__(self, engine: GladiaEngine, options: StreamOptions, stream_id: int) -> None:
        self._engine = engine
        self._t = engine.tuning
        self._options = options
        self._log: dict[str, Any] = {k: str(v) for k, v in options.log_context.items()}
        self.stream_id = stream_id
        self._events = EventChannel(self._t.event_queue_size)
        self._units: deque[_Unit] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._error: EngineError | None = None
        self._connected = False
        self._pushed = 0
        self._last_voice = 0
        self._last_push_at = time.monotonic()
        self._gate_open = False
        self._pre_roll: deque[bytes] = deque()
        self._pre_roll_bytes = 0
        self._sessions_opened = 0
        self._chunk = _even(int(self._t.chunk_seconds * BYTES_PER_SECOND))
        self._max_buffer = max(_even(int(self._t.max_buffer_seconds * BYTES_PER_SECOND)), 2 * _VAD_FRAME)
        self._silence_close = int(self._t.silence_close_after * BYTES_PER_SECOND)
        self._pause = int(self._t.pause_seconds * BYTES_PER_SECOND)
        self._pre_roll_max = int(self._t.pre_roll_seconds * BYTES_PER_SECOND)
        self._pending: list[EngineEvent] = []
        self.stats = {"sessions": 0, "reconnects": 0, "gaps": 0, "keepalives": 0}

    # -- public API ---------------------------------------------------------------------------------------

    async def push(self, pcm: bytes) -> None:
        self._check_open()
        if not pcm:
            return
        self._last_push_at = time.monotonic()
        self._start()
        pcm = bytes(pcm)
        levels = _rms_per_frame(pcm, _VAD_FRAME)
        for i, level in enumerate(levels):
            await self._take_frame(pcm[i * _VAD_FRAME : (i + 1) * _VAD_FRAME], level >= self._t.silence_rms)
        self._wake.set()

    async def flush(self) -> None:
        self._check_open()
        if not self._units:
            return
        unit = self._units[-1]
        self._end_unit(unit, "flush")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        unit.waiters.append(done)
        self._wake.set()
        try:
            async with asyncio.timeout(self._t.flush_timeout):
                await asyncio.shield(done)
        except TimeoutError:
            logger.warning("gladia flush timed out", extra={**self._log, "timeout_s": self._t.flush_timeout})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._space.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for unit in self._units:
            _settle(unit.waiters, None)
        self._units.clear()
        self._events.end(self._error)
        self._engine._stream_closed(self)

    def events(self) -> AsyncIterator[EngineEvent]:
        return aiter(self._events)

    # -- push side ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise EngineError("stream is closed")

    def _start(self) -> None:
        if self._worker is None and not self._closed:
            self._worker = asyncio.create_task(self._run(), name=f"gladia-stt:{self.stream_id}")

    async def _take_frame(self, frame: bytes, voiced: bool) -> None:
        pos = self._pushed
        end = pos + len(frame)
        if voiced:
            self._last_voice = end
        if not self._gate_open:
            self._pre_roll.append(frame)
            self._pre_roll_bytes += len(frame)
            while self._pre_roll and self._pre_roll_bytes - len(self._pre_roll[0]) >= self._pre_roll_max:
                self._pre_roll_bytes -= len(self._pre_roll.popleft())
            self._pushed = end
            if voiced:
                self._gate_open = True
                opened = _Unit(start=end - self._pre_roll_bytes)
                self._units.append(opened)
                data = b"".join(self._pre_roll)
                self._pre_roll.clear()
                self._pre_roll_bytes = 0
                logger.debug("gladia speech resumed", extra={**self._log, "at_s": _secs(opened.start)})
                await self._append(opened, data)
            return
        unit: _Unit | None = self._units[-1] if self._units and not self._units[-1].closing else None
        if unit is not None and unit.session_opened_at is not None:
            age = time.monotonic() - unit.session_opened_at
            paused = not voiced and pos - self._last_voice >= self._pause
            if (age >= self._t.rotate_after and paused) or age >= self._t.max_session_age:
                self._end_unit(unit, "rotate")
                unit = None
        if unit is None:
            unit = _Unit(start=pos)
            self._units.append(unit)
        self._pushed = end
        await self._append(unit, frame)
        if end - self._last_voice >= self._silence_close:
            self._gate_open = False
            self._end_unit(unit, "silence")

    def _end_unit(self, unit: _Unit, reason: str) -> None:
        if not unit.closing:
            unit.closing = True
            unit.reason = reason
            self._wake.set()

    def _buffered(self) -> int:
        return sum(len(u.buf) for u in self._units)

    async def _append(self, unit: _Unit, data: bytes) -> None:
        """Add audio to a unit within the buffer cap: wait (bounded) for acks, else drop the oldest."""
        waited = False
        while self._buffered() + len(data) > self._max_buffer:
            if self._connected and not waited and not self._closed:
                waited = True
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._t.push_timeout):
                        await self._space.wait()
                continue
            need = self._buffered() + len(data) - self._max_buffer
            await self._drop_oldest(max(need, self._max_buffer // 10))
        unit.buf += data

    async def _drop_oldest(self, n_bytes: int) -> None:
        left = n_bytes
        for unit in self._units:
            if left <= 0:
                break
            k = min(len(unit.buf), left)
            if k <= 0:
                continue
            gap = AudioGap(_secs(unit.buf_start), _secs(unit.buf_start + k), "gladia buffer overflow")
            del unit.buf[:k]
            unit.buf_start += k
            unit.sent_upto = max(unit.sent_upto, unit.buf_start)
            unit.high_sent = max(unit.high_sent, unit.buf_start)
            left -= k
            self.stats["gaps"] += 1
            logger.warning(
                "gladia audio dropped: buffer full",
                extra={
                    **self._log,
                    "gap_start_s": gap.start,
                    "gap_end_s": gap.end,
                    "buffer_s": self._t.max_buffer_seconds,
                    "connected": self._connected,
                },
            )
            await self._events.put(gap)

    # -- worker -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                if not self._units:
                    await self._wake.wait()
                    continue
                unit = self._units[0]
                await self._serve_unit(unit)
                if self._units and self._units[0] is unit:
                    self._units.popleft()
                _settle(unit.waiters, None)
                self._space.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EngineError) else EngineError(f"gladia stream failed: {exc!r}")
            if not isinstance(exc, _Fatal):
                logger.exception("gladia stream failed", extra=self._log)
            self._error = error
            self._space.set()
            for unit in self._units:
                _settle(unit.waiters, error)
            self._events.end(error)

    async def _serve_unit(self, unit: _Unit) -> None:
        session: _Session | None = None
        while True:
            if session is None:
                if unit.closing and not unit.buf:
                    return  # nothing left to transcribe (e.g. dropped by overflow)
                session = await self._open_session()
                unit.session_opened_at = session.opened_at
            outcome = await self._run_session(session, unit)
            if outcome == "done":
                if unit.buf:
                    await self._report_unacked(unit, "session ended before acknowledging audio")
                return
            # gone: a new session gets the un-acked audio
            logger.warning(
                "gladia session gone, opening a new one",
                extra={**self._log, "session_id": session.id, "unacked_s": _secs(len(unit.buf))},
            )
            if unit.closing and not unit.buf:
                return
            unit.sent_upto = unit.high_sent = unit.buf_start
            session = None

    async def _report_unacked(self, unit: _Unit, reason: str) -> None:
        gap = AudioGap(_secs(unit.buf_start), _secs(unit.end), reason)
        logger.warning(
            "gladia audio not transcribed",
            extra={**self._log, "gap_start_s": gap.start, "gap_end_s": gap.end, "reason": reason},
        )
        unit.buf_start = unit.end
        unit.buf.clear()
        await self._events.put(gap)

    def _backoff(self, attempt: int) -> float:
        delay = min(self._t.backoff_cap, self._t.backoff_base * (2**attempt))
        return random.uniform(delay / 2, delay)

    async def _open_session(self) -> _Session:
        """POST /v2/live until it works; 401/403/400/422 are fatal, 429/5xx/network errors are retried."""
        attempt = 0
        while True:
            try:
                return await self._post_init()
            except _Fatal as exc:
                logger.error("gladia session refused", extra={**self._log, "error": str(exc)})
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, _Retry) as exc:
                delay = self._backoff(attempt)
                logger.warning(
                    "gladia session init failed, retrying",
                    extra={
                        **self._log,
                        "error": _describe(exc),
                        "attempt": attempt + 1,
                        "retry_in_s": round(delay, 2),
                    },
                )
                attempt += 1
                await asyncio.sleep(delay)

    def _init_body(self) -> dict[str, Any]:
        o = self._options
        body: dict[str, Any] = {
            "encoding": "wav/pcm",
            "bit_depth": 16,
            "sample_rate": 16000,
            "channels": 1,
            "endpointing": o.endpointing,
            "maximum_duration_without_endpointing": self._t.maximum_duration_without_endpointing,
            "language_config": {"languages": list(o.languages), "code_switching": o.code_switching},
            "messages_config": {
                "receive_partial_transcripts": True,
                "receive_final_transcripts": True,
                "receive_acknowledgments": True,
                "receive_speech_events": True,
            },
        }
        if self._log:
            body["custom_metadata"] = dict(self._log)  # room/participant/track: findable in Gladia's list
        if o.custom_vocabulary:
            body["realtime_processing"] = {
                "custom_vocabulary": True,
                "custom_vocabulary_config": {"vocabulary": list(o.custom_vocabulary)},
            }
        return body

    async def _post_init(self) -> _Session:
        engine = self._engine
        params = {"region": engine.region} if engine.region else None
        async with engine.http.post(
            f"{engine.api_url}/v2/live",
            json=self._init_body(),
            params=params,
            headers={"x-gladia-key": engine.api_key},
            timeout=aiohttp.ClientTimeout(total=self._t.http_timeout),
        ) as resp:
            text = await resp.text()
            status = resp.status
        if status in (200, 201):
            try:
                data = json.loads(text)
                session_id, url = str(data["id"]), str(data["url"])
            except (ValueError, KeyError, TypeError) as exc:
                raise _Retry(f"unreadable init response: {exc!r}") from None
            self._sessions_opened += 1
            self.stats["sessions"] += 1
            logger.info(
                "gladia session opened",
                extra={**self._log, "session_id": session_id, "session_index": self._sessions_opened},
            )
            return _Session(session_id, url, self._sessions_opened, time.monotonic())
        message = _error_message(text)
        if status in (401, 403):
            raise _Fatal(f"Gladia refused the API key (HTTP {status}): {message}")
        if status in (400, 422):
            raise _Fatal(f"Gladia rejected the session settings (HTTP {status}): {message}")
        if status in _RETRYABLE_INIT or status >= 500:
            raise _Retry(f"HTTP {status}: {message}")
        raise _Fatal(f"Gladia session init failed (HTTP {status}): {message}")

    async def _run_session(self, session: _Session, unit: _Unit) -> Literal["done", "gone"]:
        """Connect (and reconnect) to one session URL until the unit is done or the session is gone."""
        failures = 0
        while True:
            try:
                ws = await self._connect(session)
            except _SessionGone:
                return "gone"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                if failures >= self._t.max_resume_attempts:
                    return "gone"
                delay = self._backoff(failures)
                logger.warning(
                    "gladia reconnect failed",
                    extra={
                        **self._log,
                        "session_id": session.id,
                        "error": _describe(exc),
                        "attempt": failures,
                        "retry_in_s": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            outcome = await self._run_connection(ws, session, unit)
            if outcome != "dropped":
                return outcome
            self.stats["reconnects"] += 1
            delay = self._backoff(0)
            logger.warning(
                "gladia socket dropped, resuming",
                extra={
                    **self._log,
                    "session_id": session.id,
                    "close_code": ws.close_code,
                    "unacked_s": _secs(len(unit.buf)),
                    "retry_in_s": round(delay, 2),
                },
            )
            await asyncio.sleep(delay)

    async def _connect(self, session: _Session) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(self._t.connect_timeout):
                return await self._engine.http.ws_connect(
                    session.url,
                    heartbeat=self._t.heartbeat,
                    autoping=True,
                    max_msg_size=16 * 1024 * 1024,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in _GONE_HANDSHAKE:
                raise _SessionGone from None
            raise

    async def _run_connection(
        self, ws: aiohttp.ClientWebSocketResponse, session: _Session, unit: _Unit
    ) -> Outcome:
        # resend everything not yet acked; the first ack says where the server really is
        unit.sent_upto = unit.buf_start
        session.sess_sent = session.acked
        session.first_ack_pending = True
        session.conn_segment = len(session.segments)
        session.last_sent_end = None
        self._connected = True
        reader = asyncio.create_task(self._read(ws, session, unit), name=f"gladia-read:{self.stream_id}")
        writer = asyncio.create_task(self._write(ws, session, unit), name=f"gladia-write:{self.stream_id}")
        outcome: Outcome = "dropped"
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                grace = self._t.stop_timeout if writer.exception() is None else 1.0
                done, _ = await asyncio.wait({reader}, timeout=grace)
                if not done and writer.exception() is None:
                    logger.warning(
                        "gladia session did not end in time after stop_recording",
                        extra={**self._log, "session_id": session.id, "timeout_s": self._t.stop_timeout},
                    )
                    outcome = "done"
            if reader.done():
                outcome = reader.result()
            return outcome
        finally:
            self._connected = False
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await self._close_socket(ws, session, resume=outcome == "dropped" and not self._closed)

    async def _close_socket(
        self, ws: aiohttp.ClientWebSocketResponse, session: _Session, resume: bool
    ) -> None:
        """Non-1000 close keeps the session resumable; otherwise stop the session first, then close 1000."""
        if ws.closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                if resume:
                    await ws.close(code=4000, message=b"reconnecting")
                    return
                if not session.stop_sent and not session.ended:
                    session.stop_sent = True
                    await ws.send_str(_STOP)
                await ws.close()

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, session: _Session, unit: _Unit) -> None:
        """Send unit audio: the un-acked backlog first (<= 512 KiB frames), then ~100 ms chunks."""
        last_send = time.monotonic()
        while not self._closed:
            self._wake.clear()
            now = time.monotonic()
            unit.sent_upto = max(unit.sent_upto, unit.buf_start)
            unsent = unit.end - unit.sent_upto
            idle = now - self._last_push_at
            tail_ready = unit.closing or idle >= self._t.chunk_seconds
            if unsent >= self._chunk or (unsent > 0 and tail_ready):
                if unit.sent_upto < unit.high_sent:
                    size = min(unit.high_sent - unit.sent_upto, MAX_FRAME_BYTES)
                else:
                    size = min(unsent, self._chunk)
                offset = unit.sent_upto - unit.buf_start
                data = bytes(unit.buf[offset : offset + size])
                start = unit.sent_upto
                if session.last_sent_end != start:
                    session.segments.append((float(session.sess_sent), float(start)))
                await ws.send_bytes(data)
                session.sess_sent += size
                session.last_sent_end = start + size
                unit.sent_upto = start + size
                unit.high_sent = max(unit.high_sent, unit.sent_upto)
                last_send = time.monotonic()
                continue
            if unit.closing and unsent <= 0:
                if not session.ended:
                    session.stop_sent = True
                    await ws.send_str(_STOP)
                    logger.debug(
                        "gladia stop_recording sent",
                        extra={**self._log, "session_id": session.id, "reason": unit.reason},
                    )
                return
            if not unit.closing and idle >= self._t.silence_close_after:
                self._gate_open = False
                self._end_unit(unit, "no audio")
                continue
            if now - last_send >= self._t.keepalive_interval:
                await ws.send_str(_KEEPALIVE)
                self.stats["keepalives"] += 1
                last_send = now
                continue
            timeout = self._t.keepalive_interval - (now - last_send)
            timeout = min(timeout, self._t.silence_close_after - idle)
            if unsent > 0:
                timeout = min(timeout, self._t.chunk_seconds - idle)
            with contextlib.suppress(TimeoutError):
                # not asyncio.wait_for: on 3.11 it can swallow a cancel that races with the event
                async with asyncio.timeout(max(timeout, 0.005)):
                    await self._wake.wait()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, session: _Session, unit: _Unit) -> Outcome:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._on_text(msg.data, session, unit)
                await self._drain_pending()
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                logger.debug("gladia sent a binary frame; ignored", extra=self._log)
                continue
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return self._close_outcome(msg.data, session)
            # CLOSING / CLOSED / ERROR: the socket went away without a close frame we saw
            return self._close_outcome(ws.close_code, session, frame=False)

    def _close_outcome(self, code: int | None, session: _Session, frame: bool = True) -> Outcome:
        if frame and code == 1000:
            if session.stop_sent:
                return "done"
            session.ended = True
            return "gone"
        if frame and code is not None and 4400 <= code <= 4499:
            session.ended = True
            return "gone"
        return "dropped"

    # -- messages -----------------------------------------------------------------------------------------

    def _on_text(self, text: str, session: _Session, unit: _Unit) -> None:
        """Parse one server message; a malformed one is logged and skipped. Events go to ``_pending``."""
        self._pending = []
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
            kind = message.get("type")
            if kind == "transcript":
                self._on_transcript(message["data"], session)
            elif kind == "audio_chunk":
                self._on_ack(message, session, unit)
            elif kind == "stop_recording":
                pass
            elif kind == "end_session":
                session.ended = True
            elif kind == "error":
                logger.warning("gladia error message", extra={**self._log, "gladia_message": text[:500]})
            elif kind in _IGNORED_TYPES:
                pass
            else:
                logger.debug("gladia message of unknown type", extra={**self._log, "type": str(kind)[:100]})
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            self._pending = []
            logger.warning(
                "gladia malformed message skipped",
                extra={**self._log, "error": repr(exc)[:200], "preview": text[:200]},
            )

    async def _drain_pending(self) -> None:
        pending, self._pending = self._pending, []
        for event in pending:
            await self._events.put(event)

    def _on_ack(self, message: Mapping[str, Any], session: _Session, unit: _Unit) -> None:
        if not message.get("acknowledged"):
            logger.warning(
                "gladia refused audio",
                extra={**self._log, "session_id": session.id, "error": str(message.get("error"))[:200]},
            )
            return
        start, end = (int(b) for b in message["data"]["byte_range"])
        if end <= start:
            return  # an empty chunk (keepalive) ack
        if session.first_ack_pending:
            session.first_ack_pending = False
            i = session.conn_segment
            if i < len(session.segments):
                delta = start - session.segments[i][0]
                if delta:
                    session.segments[i:] = [(s + delta, p) for s, p in session.segments[i:]]
                    session.sess_sent += int(delta)
        session.acked = max(session.acked, end)
        acked_stream = int(session.to_stream_bytes(end))
        k = min(acked_stream - unit.buf_start, len(unit.buf))
        if k > 0:
            del unit.buf[:k]
            unit.buf_start += k
            self._space.set()
        # keep the segments list short, but keep those that finals still to come may need (they lag acks)
        keep_after = session.acked - _SEGMENT_MEMORY
        while session.conn_segment > 1 and session.segments[1][0] <= keep_after:
            session.segments.pop(0)
            session.conn_segment -= 1

    def _on_transcript(self, data: Mapping[str, Any], session: _Session) -> None:
        gladia_id = str(data["id"])
        is_final = bool(data["is_final"])
        if gladia_id in session.final_ids:
            return  # a replayed final, or a partial after its final
        utt = data["utterance"]
        text = str(utt["text"]).strip()
        words = tuple(
            Word(
                text=str(w["word"]).strip(),
                start=session.to_stream_time(float(w["start"])),
                end=session.to_stream_time(float(w["end"])),
                confidence=_opt_float(w.get("confidence")),
            )
            for w in utt.get("words") or ()
        )
        hypothesis = Hypothesis(
            utterance_id=f"{session.index}:{gladia_id}",
            text=text,
            is_final=is_final,
            start=session.to_stream_time(float(utt["start"])),
            end=session.to_stream_time(float(utt["end"])),
            language=str(utt["language"]) if utt.get("language") else None,
            confidence=_opt_float(utt.get("confidence")),
            words=words,
        )
        if is_final:
            session.final_ids.add(gladia_id)
        self._pending.append(hypothesis)


class _Retry(Exception):
    """A transient init failure (429, 5xx, unreadable answer)."""


def _even(n: int) -> int:
    return n - n % 2


def _secs(n_bytes: float) -> float:
    return round(n_bytes / BYTES_PER_SECOND, 3)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _settle(waiters: list[asyncio.Future[None]], error: EngineError | None) -> None:
    for done in waiters:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
            done.exception()  # retrieved: the flush may have timed out already
    waiters.clear()


def _rms_per_frame(pcm: bytes, frame_bytes: int) -> list[float]:
    """RMS of each ``frame_bytes`` slice of PCM16 (the last may be short), samples scaled to [-1, 1]."""
    out: list[float] = []
    for i in range(0, len(pcm), frame_bytes):
        piece = pcm[i : i + frame_bytes]
        samples = np.frombuffer(piece[: len(piece) - len(piece) % 2], dtype="<i2").astype(np.float32)
        out.append(float(np.sqrt(np.mean(np.square(samples / 32768.0)))) if len(samples) else 0.0)
    return out


def _describe(exc: BaseException) -> str:
    """An exception for a log line, without URLs: the session URL carries its access token."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientError):
        return type(exc).__name__
    return str(exc) or type(exc).__name__


def _error_message(text: str) -> str:
    """The message (and validation errors) of a Gladia error body, or the raw text, shortened."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if not isinstance(body, dict):
        return text[:300]
    message = str(body.get("message", ""))
    errors = body.get("validation_errors")
    if isinstance(errors, list) and errors:
        message = f"{message} {'; '.join(str(e) for e in errors)}".strip()
    return message[:1000] or text[:300]


__all__ = ["GladiaEngine", "GladiaStream", "GladiaTuning"]
