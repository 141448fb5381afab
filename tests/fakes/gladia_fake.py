"""A local fake of Gladia's live v2 API (``POST /v2/live`` + the session WebSocket), for tests.

Written from ``/work/shared/reference/gladia-live-v2.md`` (sections 0-5: the protocol; section 8: design
notes), never from any client's code. It runs an aiohttp server on 127.0.0.1 with an ephemeral port::

    fake = GladiaFake(api_key="test-gladia-key")
    await fake.start()
    # clients POST f"{fake.base_url}/v2/live" with header x-gladia-key, then open the returned `url`
    ...
    await fake.stop()

What it does (per the reference):

* ``POST /v2/live``: 401 on a missing/wrong ``x-gladia-key`` (header name case-insensitive), 400 with
  ``validation_errors`` (a list of strings) on bad enums/ranges, 429 over ``concurrency_limit``, else 201
  ``{id, created_at, url}`` with ``url = ws://127.0.0.1:PORT/v2/live?token=<uuid>`` (the token differs from
  the id). Every HTTP error body has the one documented shape ``{timestamp, path, request_id, statusCode,
  message}`` (+ ``validation_errors`` for 400). Responses carry an ``x-aipi-call-id`` header.
* ``GET /v2/live/{id}`` (status ``processing`` until the session ends, then ``done``; ``result`` with
  ``transcription`` and ``messages`` as JSON strings), ``DELETE /v2/live/{id}`` (202, or 403 while not
  ended), ``GET /v2/live/{id}/file`` (a WAV of everything received), ``GET /v2/live`` (list). All need the
  key.
* WebSocket ``/v2/live?token=...``: binary PCM frames and JSON ``audio_chunk`` (base64) frames; every chunk
  is acked with session-cumulative ``byte_range`` ``[prev_total, new_total]`` (exclusive end) and
  ``time_range`` in seconds (rounded to 3 decimals), one ack per frame. A frame over 1 MiB (1,048,576 bytes)
  closes the socket with 1009 (the frame is not received). Every server message has ``type``,
  ``session_id``, ``created_at``.
* Transcription: an energy VAD per channel (20 ms frames, RMS of samples scaled to [-1, 1] above
  ``vad_threshold``). An utterance starts at the first voiced frame and closes after ``endpointing`` seconds
  of silence (its end = the end of its last voiced frame) or when it reaches
  ``maximum_duration_without_endpointing`` (cut at that frame's end). Default text (deterministic, so tests
  can check it): ``" utterance {n} {start:.2f} to {end:.2f}"`` where ``n`` is the per-channel utterance
  counter (the same number as in ``data.id``); words are that text's tokens, each with a leading space,
  spread evenly over [start, end]. ``transcriber(pcm_bytes) -> str`` overrides the text: it gets the
  utterance's slice of the session audio exactly as received (all channels interleaved; for partials, the
  slice up to now). A transcriber returning blank text produces no ``transcript`` message for that utterance
  (speech events still go out; the id is not used up); it runs in the event loop, so keep it fast. Times are
  on the session audio clock (bytes received / bytes per second) and so continue across reconnects. Partials
  (``is_final:false``, same ``data.id`` as the final) go out each 0.5 s of utterance.
* Stop: ``{"type":"stop_recording"}`` -> stop ack (``recording_duration``, ``recording_left_to_process`` =
  the audio of still-open utterances), the remaining finals (an open utterance closes at the end of its last
  voiced frame), ``end_recording``, then after ``post_processing_delay`` s: ``post_transcript``,
  ``post_final_transcript``, ``end_session``, close 1000. Audio that arrives between the stop and the close
  is refused: ``acknowledged:false, error:{message}, data:null``.
* Resume: a drop (any close but a client 1000) keeps the session; reconnecting to the same URL continues it
  (byte/time counters, utterance ids, an open utterance). A client close with 1000 ends the session; later
  handshakes on that token, and on unknown tokens, get HTTP 403.
* Every ``messages_config`` flag is obeyed with the documented defaults (partials and lifecycle events off,
  all else on).

UNCONFIRMED points and the choices made here (knob in brackets where a test may want the other behaviour):

* 429 comes at POST time (not at the WS handshake); its body is the common error shape with ``message:"Too
  Many Requests"``. Each session counts against the limit from its POST until it ends, whether or not a
  socket is open.
* Unknown init fields are ignored [``reject_unknown_fields=True`` -> 400 ``"property X should not exist"``].
  ``wav/alaw``/``wav/ulaw`` are always decoded as 8-bit, whatever ``bit_depth`` says. Any string ``model``
  is accepted. A WAV header at the start of the audio is not parsed (it is treated as 44 bytes of audio).
* Unknown or ended token -> HTTP 403 at the handshake.
* A session stays resumable until it ends or hits ``max_session_seconds`` [``resumable_seconds``: end a
  session left with no socket for that long].
* A second connection on a token that already has one takes over; the old one is cut without a close frame.
* An empty ``audio_chunk`` (keepalive) counts as input activity and gets no ack [``ack_empty_chunks=True``:
  ack it with an empty range ``[n, n]``].
* Resent audio is appended again (no dedup is possible: the protocol has no offsets).
* Refused-ack message: ``"Audio chunk received after stop_recording"`` (also ``"Invalid base64 chunk"``).
  Refused acks are gated by ``receive_acknowledgments`` like the other acks.
* Unknown client message types and non-JSON text frames are ignored (kept in ``FakeSession.ignored``).
* Standalone ``type:"error"`` messages are never sent.
* Messages produced while no socket is open are lost for the client (they stay in ``FakeSession.messages``
  and in GET ``result.messages``) [``replay_missed_messages=True``: send them on the next connection].
* Idle: no client message for ``idle_timeout`` s on an open socket (WebSocket pings do not count: pipecat
  had to add empty-chunk keepalives) -> close with ``idle_close_code`` (default 1001; ``None`` = cut without
  a close frame). The session survives [``idle_ends_session=True``: ends it first (finals, end_session), as
  the 3 h cap does].
* 3 h cap (``max_session_seconds`` from the POST): the session ends like a stop without the stop ack
  (finals, ``end_recording``, post-processing, ``end_session``), then close 1000.
* A client close with 1001 (or any code but 1000) does not end the session.
* ``start_session`` is not sent over the WS [``send_start_session=True``: sent on the first connection, when
  lifecycle events are on]. ``start_recording`` is sent when the first audio byte arrives.
* Order around the end: the stop ack, the last finals, ``end_recording``, ``post_transcript``,
  ``post_final_transcript``, ``end_session``.
* ``data.id`` is ``f"{channel:02d}_{n:08d}"`` with ``n`` counting up per channel from 0.
* Speech events bracket each utterance: ``speech_end`` (at the utterance end) comes just before its final,
  also when ``maximum_duration_without_endpointing`` cuts it; a new ``speech_start`` opens the next one.
* Multi-channel: each channel has its own VAD and ids; the session takes one concurrency slot.
* One ack per received frame (never merged); ``byte_range`` has an exclusive end (the spec and both SDKs,
  not ``asyncapi.yaml``'s "inclusive"). A frame's ack goes out before the transcript messages it triggers.

Test controls (``None`` as a session id means every session; for ``stall`` and ``drop_after_bytes`` also the
ones created later): ``fail_next_inits(status, count)`` (after the key check), ``drop(id, how, code)``,
``drop_after_bytes(id, n, how, code, keep_last=True)``, ``stall(id, bool)`` (no reading, acking or
transcribing; a dropped socket's unread data is lost), ``send_malformed(id)``, ``open_sessions()``,
``wait_until(predicate, within)``. ``FakeSession`` keeps ``received`` (every byte, a resend appended again),
``messages`` (every message the flags let out, delivered or not), ``finals`` (also when finals are gated
off), ``acked`` (bytes acked so far), ``connections``, ``client_close_codes``, ``keepalives``,
``refused_chunks``, ``ignored``, ``ended``, ``end_reason`` (``stop_recording``, ``client_close``,
``max_duration``, ``idle``, ``not_resumed``).

Not implemented: real-time add-ons (translation, NER, sentiment), summarization/chapterization, callbacks
(``callback_config`` is validated, nothing is POSTed), custom vocabulary/spelling effects,
``pre_processing`` effects, list filters and paging on ``GET /v2/live``, ``PATCH``; ``?region=`` on the POST
is ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import re
import secrets
import struct
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from aiohttp import WSCloseCode, WSMsgType, web

MAX_FRAME_BYTES = 1024 * 1024
VAD_FRAME_SECONDS = 0.02
PARTIAL_EVERY_SECONDS = 0.5
ENCODINGS = ("wav/pcm", "wav/alaw", "wav/ulaw")
BIT_DEPTHS = (8, 16, 24, 32)
SAMPLE_RATES = (8000, 16000, 32000, 44100, 48000)
MESSAGES_CONFIG_DEFAULTS: dict[str, bool] = {
    "receive_partial_transcripts": False,
    "receive_final_transcripts": True,
    "receive_speech_events": True,
    "receive_pre_processing_events": True,
    "receive_realtime_processing_events": True,
    "receive_post_processing_events": True,
    "receive_acknowledgments": True,
    "receive_errors": True,
    "receive_lifecycle_events": False,
}
KNOWN_TOP_LEVEL = {
    "encoding",
    "bit_depth",
    "sample_rate",
    "channels",
    "custom_metadata",
    "model",
    "endpointing",
    "maximum_duration_without_endpointing",
    "language_config",
    "pre_processing",
    "realtime_processing",
    "post_processing",
    "messages_config",
    "callback",
    "callback_config",
}
KNOWN_NESTED: dict[str, set[str]] = {
    "language_config": {"languages", "code_switching"},
    "pre_processing": {"audio_enhancer", "speech_threshold"},
    "realtime_processing": {
        "custom_vocabulary",
        "custom_vocabulary_config",
        "custom_spelling",
        "custom_spelling_config",
        "translation",
        "translation_config",
        "named_entity_recognition",
        "sentiment_analysis",
    },
    "post_processing": {"summarization", "summarization_config", "chapterization"},
    "messages_config": set(MESSAGES_CONFIG_DEFAULTS),
    "callback_config": {"url", *MESSAGES_CONFIG_DEFAULTS},
}
ERROR_MESSAGES = {
    400: "Invalid parameter(s). See validation_errors for more details.",
    401: "gladia key not found",
    403: "Forbidden",
    404: "Not Found",
    422: "Invalid parameter",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
REFUSED_AFTER_STOP = "Audio chunk received after stop_recording"

Transcriber = Callable[[bytes], str]


def iso_now() -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as in every Gladia ``created_at``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _g711_tables() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    ulaw = np.zeros(256, dtype=np.float32)
    alaw = np.zeros(256, dtype=np.float32)
    for byte in range(256):
        u = ~byte & 0xFF
        exponent, mantissa = (u >> 4) & 7, u & 0x0F
        sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
        ulaw[byte] = (-sample if u & 0x80 else sample) / 32768.0
        a = byte ^ 0x55
        exponent, mantissa = (a >> 4) & 7, a & 0x0F
        sample = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
        alaw[byte] = (sample if a & 0x80 else -sample) / 32768.0
    return ulaw, alaw


ULAW_TABLE, ALAW_TABLE = _g711_tables()


@dataclass
class AudioFormat:
    encoding: str
    bit_depth: int
    sample_rate: int
    channels: int

    @property
    def sample_bytes(self) -> int:
        return 1 if self.encoding != "wav/pcm" else self.bit_depth // 8

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * self.sample_bytes

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms VAD frame, all channels."""
        return round(self.sample_rate * VAD_FRAME_SECONDS) * self.channels * self.sample_bytes

    def decode(self, data: bytes) -> npt.NDArray[np.float32]:
        """Samples scaled to [-1, 1], shape (frames, channels)."""
        usable = len(data) - len(data) % (self.sample_bytes * self.channels)
        raw = np.frombuffer(data[:usable], dtype=np.uint8)
        if self.encoding == "wav/ulaw":
            samples = ULAW_TABLE[raw]
        elif self.encoding == "wav/alaw":
            samples = ALAW_TABLE[raw]
        elif self.bit_depth == 8:
            samples = (raw.astype(np.float32) - 128.0) / 128.0
        elif self.bit_depth == 16:
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        elif self.bit_depth == 24:
            b = raw.reshape(-1, 3).astype(np.int32)
            value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            value = np.where(value & 0x800000, value - 0x1000000, value)
            samples = value.astype(np.float32) / 8388608.0
        else:
            samples = np.frombuffer(data[:usable], dtype="<i4").astype(np.float32) / 2147483648.0
        return samples.reshape(-1, self.channels)


@dataclass
class _Utterance:
    start: float
    start_byte: int
    last_voiced_end: float
    last_voiced_end_byte: int
    next_partial_at: float


@dataclass
class _ChannelVad:
    counter: int = 0
    open: _Utterance | None = None


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    last_input: float
    gone: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _DropRule:
    n_bytes: int
    how: Literal["abort", "close"]
    code: int
    keep_last: bool
    done_for: set[str] = field(default_factory=set)


@dataclass
class FakeSession:
    """One live session: its init body, every byte received and every message produced."""

    id: str
    token: str
    config: dict[str, Any]
    audio: AudioFormat
    messages_config: dict[str, bool]
    endpointing: float
    max_without_endpointing: float
    languages: list[str]
    created_at: str
    created_monotonic: float
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    ended: bool = False
    end_reason: str | None = None
    completed_at: str | None = None
    stopped: bool = False
    deleted: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str | bytes] = field(default_factory=list)
    client_close_codes: list[int | None] = field(default_factory=list)
    acked: int = 0
    keepalives: int = 0
    refused_chunks: int = 0
    connection: _Connection | None = None
    disconnected_since: float | None = None
    recording_started: bool = False
    undelivered: list[dict[str, Any]] = field(default_factory=list)
    vad_cursor: int = 0
    channel_vads: list[_ChannelVad] = field(default_factory=list)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    @property
    def duration(self) -> float:
        """Seconds of audio received (the session clock)."""
        return len(self.received) / self.audio.bytes_per_second

    @property
    def language(self) -> str:
        return self.languages[0] if self.languages else "en"

    def messages_of(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == type_]


class GladiaFake:
    """The fake server. See the module docstring for behaviour and every UNCONFIRMED choice."""

    def __init__(
        self,
        *,
        api_key: str = "test-gladia-key",
        concurrency_limit: int | None = None,
        idle_timeout: float = 30.0,
        max_session_seconds: float = 3 * 3600,
        transcriber: Transcriber | None = None,
        idle_close_code: int | None = 1001,
        idle_ends_session: bool = False,
        resumable_seconds: float | None = None,
        vad_threshold: float = 0.02,
        post_processing_delay: float = 0.0,
        ack_empty_chunks: bool = False,
        reject_unknown_fields: bool = False,
        replay_missed_messages: bool = False,
        send_start_session: bool = False,
    ) -> None:
        self.api_key = api_key
        self.concurrency_limit = concurrency_limit
        self.idle_timeout = idle_timeout
        self.max_session_seconds = max_session_seconds
        self.transcriber = transcriber
        self.idle_close_code = idle_close_code
        self.idle_ends_session = idle_ends_session
        self.resumable_seconds = resumable_seconds
        self.vad_threshold = vad_threshold
        self.post_processing_delay = post_processing_delay
        self.ack_empty_chunks = ack_empty_chunks
        self.reject_unknown_fields = reject_unknown_fields
        self.replay_missed_messages = replay_missed_messages
        self.send_start_session = send_start_session
        self.sessions: dict[str, FakeSession] = {}
        self.init_requests = 0
        self._by_token: dict[str, FakeSession] = {}
        self._fail_inits: list[int] = []
        self._drop_rules: dict[str | None, _DropRule] = {}
        self._stalled: set[str] = set()
        self._stall_all = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("GladiaFake is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/live", self._post_live)
        app.router.add_get("/v2/live", self._get_live_root)
        app.router.add_get("/v2/live/{id}", self._get_session)
        app.router.add_delete("/v2/live/{id}", self._delete_session)
        app.router.add_get("/v2/live/{id}/file", self._get_file)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._spawn(self._janitor())

    async def stop(self) -> None:
        """Cut every socket, cancel and await every task of ours, then close the server."""
        self._stopping = True
        for session in self.sessions.values():
            if session.connection is not None:
                self._cut(session.connection)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1.0)
        while self._tasks or self._handlers:
            pending = [*self._tasks, *self._handlers]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks.difference_update(pending)
            self._handlers.difference_update(pending)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- test controls

    def fail_next_inits(self, status: int, count: int = 1) -> None:
        """The next ``count`` POSTs (after the key check) answer ``status`` with the documented error body."""
        self._fail_inits.extend([status] * count)

    def open_sessions(self) -> int:
        """Sessions counted against the concurrency limit: created and not ended."""
        return sum(1 for s in self.sessions.values() if not s.ended)

    def _targets(self, session_id: str | None) -> list[FakeSession]:
        if session_id is None:
            return list(self.sessions.values())
        return [self.sessions[session_id]]

    async def drop(
        self,
        session_id: str | None = None,
        *,
        how: Literal["abort", "close"] = "abort",
        code: int = 1011,
    ) -> None:
        """Drop the socket of one session (None: of every connected session); the session survives.

        ``abort`` cuts TCP with no close frame (the client sees 1006 / a reset); ``close`` sends ``code``.
        """
        for session in self._targets(session_id):
            if session.connection is not None:
                await self._drop_connection(session, how, code)

    def drop_after_bytes(
        self,
        session_id: str | None,
        n_bytes: int,
        how: Literal["abort", "close"] = "abort",
        code: int = 1011,
        *,
        keep_last: bool = True,
    ) -> None:
        """Drop the socket once, when the session's received total first reaches ``n_bytes``.

        ``None`` applies to every session, present and future (each dropped once). The frame that crosses
        the mark is received but NOT acked (so a buffering client resends it: a duplicate), and transcribed
        only after the cut, so any message it triggers (e.g. a final) is missed by the client (see
        ``replay_missed_messages``). ``keep_last=False`` discards that frame instead (lost in flight).
        """
        self._drop_rules[session_id] = _DropRule(n_bytes, how, code, keep_last)

    def stall(self, session_id: str | None, stalled: bool) -> None:
        """Stop (or resume) reading, acking and transcribing. ``None``: every session, present and future."""
        if session_id is None:
            self._stall_all = stalled
            if not stalled:
                self._stalled.clear()
        elif stalled:
            self._stalled.add(session_id)
        else:
            self._stalled.discard(session_id)
        for session in self.sessions.values():
            self._update_running(session)

    def _update_running(self, session: FakeSession) -> None:
        if self._stall_all or session.id in self._stalled:
            session.running.clear()
        else:
            session.running.set()

    async def send_malformed(self, session_id: str) -> None:
        """Send a non-JSON text frame, then a JSON message of an unknown type."""
        session = self.sessions[session_id]
        conn = session.connection
        if conn is None:
            raise RuntimeError(f"session {session_id} has no open socket")
        async with session.send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str("this is not JSON {")
        await self._emit(session, {"type": "fake_unknown_type", "data": {"note": "unknown to clients"}})

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Poll ``predicate`` until true; TimeoutError after ``within`` s."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.01)

    # ---------------------------------------------------------------- HTTP

    def _error(
        self, request: web.Request, status: int, message: str | None = None, errors: list[str] | None = None
    ) -> web.Response:
        body: dict[str, Any] = {
            "timestamp": iso_now(),
            "path": request.path,
            "request_id": f"G-{secrets.token_hex(4)}",
            "statusCode": status,
            "message": message or ERROR_MESSAGES.get(status, "Error"),
        }
        if status == 400:
            body["validation_errors"] = errors or []
        return web.json_response(body, status=status, headers=self._headers())

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"x-aipi-call-id": str(uuid.uuid4())}

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("x-gladia-key") == self.api_key

    async def _post_live(self, request: web.Request) -> web.Response:
        self.init_requests += 1
        if not self._authorized(request):
            return self._error(request, 401)
        if self._fail_inits:
            status = self._fail_inits.pop(0)
            errors = ["injected failure"] if status == 400 else None
            return self._error(request, status, errors=errors)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._error(request, 400, errors=["body must be valid JSON"])
        if not isinstance(body, dict):
            return self._error(request, 400, errors=["body must be a JSON object"])
        errors = self._validate(body)
        if errors:
            return self._error(request, 400, errors=errors)
        if self.concurrency_limit is not None and self.open_sessions() >= self.concurrency_limit:
            return self._error(request, 429)
        session = self._new_session(body)
        return web.json_response(
            {
                "id": session.id,
                "created_at": session.created_at,
                "url": f"{self.ws_base_url}/v2/live?token={session.token}",
            },
            status=201,
            headers=self._headers(),
        )

    def _validate(self, body: dict[str, Any]) -> list[str]:
        errors: list[str] = []

        def is_num(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def one_of(name: str, allowed: tuple[Any, ...], check: Callable[[Any], bool]) -> None:
            if name in body and (not check(body[name]) or body[name] not in allowed):
                values = ", ".join(str(a) for a in allowed)
                errors.append(f"{name} must be one of the following values: {values}")

        def in_range(name: str, value: Any, low: float, high: float, check: Callable[[Any], bool]) -> None:
            if not check(value):
                errors.append(f"{name} must be a number conforming to the specified constraints")
            elif value < low:
                errors.append(f"{name} must not be less than {low:g}")
            elif value > high:
                errors.append(f"{name} must not be greater than {high:g}")

        def bools(prefix: str, obj: dict[str, Any], keys: set[str]) -> None:
            for key in keys & obj.keys():
                if not isinstance(obj[key], bool):
                    errors.append(f"{prefix}.{key} must be a boolean value")

        one_of("encoding", ENCODINGS, lambda v: isinstance(v, str))
        one_of("bit_depth", BIT_DEPTHS, is_int)
        one_of("sample_rate", SAMPLE_RATES, is_int)
        if "channels" in body:
            in_range("channels", body["channels"], 1, 8, is_int)
        if "endpointing" in body:
            in_range("endpointing", body["endpointing"], 0.01, 10, is_num)
        if "maximum_duration_without_endpointing" in body:
            name = "maximum_duration_without_endpointing"
            in_range(name, body[name], 5, 60, is_num)
        if "model" in body and not isinstance(body["model"], str):
            errors.append("model must be a string")
        for name in ("custom_metadata", *KNOWN_NESTED):
            if name in body and not isinstance(body[name], dict):
                errors.append(f"{name} must be an object")
        if "callback" in body and not isinstance(body["callback"], bool):
            errors.append("callback must be a boolean value")
        language_config = body.get("language_config")
        if isinstance(language_config, dict):
            languages = language_config.get("languages", [])
            if not isinstance(languages, list) or not all(
                isinstance(code, str) and re.fullmatch(r"[a-z]{2}", code) for code in languages
            ):
                errors.append("language_config.languages must only contain ISO 639-1 codes (two letters)")
            bools("language_config", language_config, {"code_switching"})
        for name in ("messages_config", "callback_config"):
            obj = body.get(name)
            if isinstance(obj, dict):
                bools(name, obj, set(MESSAGES_CONFIG_DEFAULTS))
        pre = body.get("pre_processing")
        if isinstance(pre, dict):
            bools("pre_processing", pre, {"audio_enhancer"})
            if "speech_threshold" in pre:
                in_range("pre_processing.speech_threshold", pre["speech_threshold"], 0, 1, is_num)
        if self.reject_unknown_fields:
            errors.extend(f"property {key} should not exist" for key in body.keys() - KNOWN_TOP_LEVEL)
            for name, known in KNOWN_NESTED.items():
                obj = body.get(name)
                if isinstance(obj, dict):
                    errors.extend(f"property {name}.{key} should not exist" for key in obj.keys() - known)
        return errors

    def _new_session(self, body: dict[str, Any]) -> FakeSession:
        encoding = body.get("encoding", "wav/pcm")
        audio = AudioFormat(
            encoding=encoding,
            bit_depth=8 if encoding != "wav/pcm" else body.get("bit_depth", 16),
            sample_rate=body.get("sample_rate", 16000),
            channels=body.get("channels", 1),
        )
        messages_config = dict(MESSAGES_CONFIG_DEFAULTS)
        messages_config.update(body.get("messages_config") or {})
        languages = list((body.get("language_config") or {}).get("languages") or [])
        session = FakeSession(
            id=str(uuid.uuid4()),
            token=str(uuid.uuid4()),
            config=body,
            audio=audio,
            messages_config=messages_config,
            endpointing=float(body.get("endpointing", 0.05)),
            max_without_endpointing=float(body.get("maximum_duration_without_endpointing", 5)),
            languages=languages,
            created_at=iso_now(),
            created_monotonic=time.monotonic(),
            channel_vads=[_ChannelVad() for _ in range(audio.channels)],
        )
        self.sessions[session.id] = session
        self._by_token[session.token] = session
        self._update_running(session)
        return session

    async def _get_live_root(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query:
            return await self._websocket(request)
        if not self._authorized(request):
            return self._error(request, 401)
        items = [self._job(s) for s in self.sessions.values() if not s.deleted]
        return web.json_response(
            {"first": str(request.url), "current": str(request.url), "next": None, "items": items},
            headers=self._headers(),
        )

    def _lookup(self, request: web.Request) -> FakeSession | web.Response:
        if not self._authorized(request):
            return self._error(request, 401)
        session = self.sessions.get(request.match_info["id"])
        if session is None or session.deleted:
            return self._error(request, 404)
        return session

    def _job(self, session: FakeSession) -> dict[str, Any]:
        utterances = [f["data"]["utterance"] for f in session.finals]
        return {
            "id": session.id,
            "request_id": f"G-{session.id[:8]}",
            "version": 2,
            "status": "done" if session.ended else "processing",
            "created_at": session.created_at,
            "completed_at": session.completed_at,
            "custom_metadata": session.config.get("custom_metadata"),
            "error_code": None,
            "kind": "live",
            "file": {
                "id": session.id,
                "filename": None,
                "source": None,
                "audio_duration": session.duration,
                "number_of_channels": session.audio.channels,
            },
            "request_params": session.config,
            "result": {
                "metadata": self._metadata(session),
                "transcription": self._transcription(session, utterances),
                "translation": None,
                "summarization": None,
                "named_entity_recognition": None,
                "sentiment_analysis": None,
                "messages": [json.dumps(m) for m in session.messages],
            },
            "post_session_metadata": None,
        }

    async def _get_session(self, request: web.Request) -> web.Response:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(self._job(found), headers=self._headers())

    async def _delete_session(self, request: web.Request) -> web.Response:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        if not found.ended:
            return self._error(request, 403, "The job is not in a deletable state")
        found.deleted = True
        return web.Response(status=202, headers=self._headers())

    async def _get_file(self, request: web.Request) -> web.Response:
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        out = io.BytesIO()
        if found.audio.encoding == "wav/pcm":
            with wave.open(out, "wb") as wav:
                wav.setnchannels(found.audio.channels)
                wav.setsampwidth(found.audio.sample_bytes)
                wav.setframerate(found.audio.sample_rate)
                wav.writeframes(bytes(found.received))
        else:
            fmt = 7 if found.audio.encoding == "wav/ulaw" else 6
            a = found.audio
            fmt_chunk = struct.pack(
                "<HHIIHH", fmt, a.channels, a.sample_rate, a.bytes_per_second, a.channels, 8
            )
            data = bytes(found.received)
            out.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt_chunk) + 8 + len(data)) + b"WAVE")
            out.write(b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk)
            out.write(b"data" + struct.pack("<I", len(data)) + data)
        return web.Response(
            body=out.getvalue(), content_type="application/octet-stream", headers=self._headers()
        )

    # ---------------------------------------------------------------- WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        session = self._by_token.get(request.query["token"])
        if session is None or session.ended or self._stopping:
            return self._error(request, 403, "Session not found or already ended")
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._serve(request, session)
        finally:
            self._handlers.discard(task)

    async def _serve(self, request: web.Request, session: FakeSession) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MAX_FRAME_BYTES, autoping=True)
        await ws.prepare(request)
        if session.connection is not None:
            self._cut(session.connection)
        conn = _Connection(ws=ws, transport=request.transport, last_input=time.monotonic())
        session.connection = conn
        session.connections += 1
        session.disconnected_since = None
        if session.connections == 1 and self.send_start_session:
            await self._emit(session, {"type": "start_session"}, gate="receive_lifecycle_events")
        if self.replay_missed_messages and session.undelivered:
            missed, session.undelivered = session.undelivered, []
            for message in missed:
                await self._deliver(session, message)
        try:
            await self._read_loop(session, conn)
        finally:
            conn.gone.set()
            if session.connection is conn:
                session.connection = None
                session.disconnected_since = time.monotonic()
        return ws

    async def _wait_running(self, session: FakeSession, conn: _Connection) -> bool:
        """Wait out a stall; False if the connection went away meanwhile."""
        if not session.running.is_set():
            waiters = {
                asyncio.ensure_future(session.running.wait()),
                asyncio.ensure_future(conn.gone.wait()),
            }
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        return not conn.gone.is_set()

    async def _read_loop(self, session: FakeSession, conn: _Connection) -> None:
        ws = conn.ws
        while True:
            if not await self._wait_running(session, conn):
                return
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if msg.type == WSMsgType.CLOSE:
                    code = ws.close_code
                    session.client_close_codes.append(code)
                    if code == WSCloseCode.OK and not session.ended:
                        conn.gone.set()
                        await self._end_session(session, reason="client_close", notify=False)
                return
            conn.last_input = time.monotonic()
            if not await self._wait_running(session, conn):
                return
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if len(data) > MAX_FRAME_BYTES:
                    await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"Frame too big")
                    return
                await self._on_audio(session, conn, data)
            elif msg.type == WSMsgType.TEXT:
                text: str = msg.data
                if len(text.encode()) > MAX_FRAME_BYTES:
                    await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"Frame too big")
                    return
                await self._on_text(session, conn, text)

    async def _on_text(self, session: FakeSession, conn: _Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            session.ignored.append(text)
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "stop_recording":
            await self._on_stop(session)
        elif kind == "audio_chunk":
            data = message.get("data")
            chunk = data.get("chunk") if isinstance(data, dict) else None
            if not isinstance(chunk, str):
                await self._refuse(session, "Invalid audio_chunk: data.chunk must be a base64 string")
                return
            try:
                audio = base64.b64decode(chunk, validate=True)
            except (binascii.Error, ValueError):
                await self._refuse(session, "Invalid base64 chunk")
                return
            if not audio:
                session.keepalives += 1
                if self.ack_empty_chunks and not session.stopped:
                    total = len(session.received)
                    await self._ack(session, total, total)
                return
            await self._on_audio(session, conn, audio)
        else:
            session.ignored.append(text)

    async def _refuse(self, session: FakeSession, reason: str) -> None:
        session.refused_chunks += 1
        await self._emit(
            session,
            {"type": "audio_chunk", "acknowledged": False, "error": {"message": reason}, "data": None},
            gate="receive_acknowledgments",
        )

    async def _ack(self, session: FakeSession, start: int, end: int) -> None:
        session.acked = end
        bps = session.audio.bytes_per_second
        await self._emit(
            session,
            {
                "type": "audio_chunk",
                "acknowledged": True,
                "error": None,
                "data": {
                    "byte_range": [start, end],
                    "time_range": [round(start / bps, 3), round(end / bps, 3)],
                },
            },
            gate="receive_acknowledgments",
        )

    async def _on_audio(self, session: FakeSession, conn: _Connection, data: bytes) -> None:
        if session.stopped or session.ended:
            await self._refuse(session, REFUSED_AFTER_STOP)
            return
        if not session.recording_started:
            session.recording_started = True
            await self._emit(session, {"type": "start_recording"}, gate="receive_lifecycle_events")
        start = len(session.received)
        rule = self._drop_rules.get(session.id) or self._drop_rules.get(None)
        crossing = rule is not None and session.id not in rule.done_for and start + len(data) >= rule.n_bytes
        if crossing and rule is not None:
            rule.done_for.add(session.id)
            await self._drop_connection(session, rule.how, rule.code)
            if rule.keep_last:  # transcribed after the cut: what it triggers is missed by the client
                session.received.extend(data)
                await self._process_audio(session)
            return
        session.received.extend(data)
        await self._ack(session, start, len(session.received))
        await self._process_audio(session)

    async def _on_stop(self, session: FakeSession) -> None:
        if session.stopped or session.ended:
            return
        session.stopped = True
        left = float(sum(session.duration - v.open.start for v in session.channel_vads if v.open is not None))
        await self._emit(
            session,
            {
                "type": "stop_recording",
                "acknowledged": True,
                "error": None,
                "data": {
                    "recording_duration": round(session.duration, 3),
                    "recording_left_to_process": round(left, 3),
                },
            },
            gate="receive_acknowledgments",
        )
        self._spawn(self._end_session(session, reason="stop_recording"))

    async def _end_session(self, session: FakeSession, *, reason: str, notify: bool = True) -> None:
        """Flush the last finals, post-process, end_session, then close 1000 (if ``notify``)."""
        if session.ended or session.end_reason is not None:
            return
        session.end_reason = reason
        session.stopped = True
        await self._process_audio(session, flush=True)
        await self._emit(
            session,
            {"type": "end_recording", "data": {"recording_duration": round(session.duration, 3)}},
            gate="receive_lifecycle_events",
        )
        if notify and self.post_processing_delay > 0:
            await asyncio.sleep(self.post_processing_delay)
        utterances = [f["data"]["utterance"] for f in session.finals]
        transcription = self._transcription(session, utterances)
        await self._emit(
            session,
            {"type": "post_transcript", "data": {**transcription, "sentences": None, "subtitles": None}},
            gate="receive_post_processing_events",
        )
        await self._emit(
            session,
            {
                "type": "post_final_transcript",
                "data": {
                    "metadata": self._metadata(session),
                    "transcription": transcription,
                    "translation": None,
                    "summarization": None,
                    "named_entity_recognition": None,
                    "sentiment_analysis": None,
                },
            },
            gate="receive_post_processing_events",
        )
        await self._emit(session, {"type": "end_session"}, gate="receive_lifecycle_events")
        session.ended = True
        session.completed_at = iso_now()
        conn = session.connection
        if notify and conn is not None and not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(conn.ws.close(code=WSCloseCode.OK, message=b"Session ended"), 2.0)

    @staticmethod
    def _transcription(session: FakeSession, utterances: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "full_transcript": " ".join(u["text"].strip() for u in utterances),
            "languages": [session.language],
            "utterances": utterances,
        }

    @staticmethod
    def _metadata(session: FakeSession) -> dict[str, Any]:
        return {
            "audio_duration": round(session.duration, 3),
            "number_of_distinct_channels": session.audio.channels,
            "billing_time": round(session.duration * session.audio.channels, 3),
            "transcription_time": 0.0,
        }

    # ---------------------------------------------------------------- sending

    async def _emit(
        self, session: FakeSession, body: dict[str, Any], gate: str | None = None
    ) -> dict[str, Any]:
        """Stamp one server message; record and deliver it if its ``messages_config`` flag allows."""
        message = {"type": body["type"], "session_id": session.id, "created_at": iso_now()}
        message.update({k: v for k, v in body.items() if k != "type"})
        if gate is None or session.messages_config.get(gate, False):
            session.messages.append(message)
            await self._deliver(session, message)
        return message

    async def _deliver(self, session: FakeSession, message: dict[str, Any]) -> None:
        conn = session.connection
        if conn is None or conn.gone.is_set() or conn.ws.closed:
            if self.replay_missed_messages:
                session.undelivered.append(message)
            return
        async with session.send_lock:
            try:
                await conn.ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                if self.replay_missed_messages:
                    session.undelivered.append(message)

    def _cut(self, conn: _Connection) -> None:
        conn.gone.set()
        if conn.transport is not None:
            conn.transport.abort()

    async def _drop_connection(self, session: FakeSession, how: Literal["abort", "close"], code: int) -> None:
        conn = session.connection
        if conn is None:
            return
        session.connection = None
        session.disconnected_since = time.monotonic()
        if how == "abort":
            self._cut(conn)
        else:
            conn.gone.set()
            with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(conn.ws.close(code=code, message=b"Fake drop"), 2.0)

    # ---------------------------------------------------------------- transcription

    def _text_for(
        self, session: FakeSession, vad: _ChannelVad, start_byte: int, end_byte: int, start: float, end: float
    ) -> str:
        if self.transcriber is not None:
            text = self.transcriber(bytes(session.received[start_byte:end_byte]))
            if not text.strip():
                return ""
            return text if text.startswith(" ") else " " + text
        return f" utterance {vad.counter} {start:.2f} to {end:.2f}"

    async def _transcript(
        self,
        session: FakeSession,
        channel: int,
        vad: _ChannelVad,
        utt: _Utterance,
        end: float,
        end_byte: int,
        is_final: bool,
    ) -> bool:
        """Emit one partial or final; False (nothing sent) if the text is blank."""
        text = self._text_for(session, vad, utt.start_byte, end_byte, utt.start, end)
        if not text:
            return False
        tokens = text.split()
        step = (end - utt.start) / len(tokens)
        words = [
            {
                "word": " " + token,
                "start": round(utt.start + i * step, 3),
                "end": round(utt.start + (i + 1) * step, 3),
                "confidence": 0.9,
            }
            for i, token in enumerate(tokens)
        ]
        message = {
            "type": "transcript",
            "data": {
                "id": f"{channel:02d}_{vad.counter:08d}",
                "is_final": is_final,
                "utterance": {
                    "text": text,
                    "start": round(utt.start, 3),
                    "end": round(end, 3),
                    "confidence": 0.9,
                    "language": session.language,
                    "channel": channel,
                    "words": words,
                },
            },
        }
        if is_final:
            # kept even when finals are gated off the socket: GET and post_transcript need them
            session.finals.append(await self._emit(session, message, gate="receive_final_transcripts"))
        else:
            await self._emit(session, message, gate="receive_partial_transcripts")
        return True

    async def _close_utterance(
        self, session: FakeSession, channel: int, vad: _ChannelVad, end: float, end_byte: int
    ) -> None:
        utt = vad.open
        assert utt is not None
        vad.open = None
        await self._emit(
            session,
            {"type": "speech_end", "data": {"time": round(end, 3), "channel": channel}},
            gate="receive_speech_events",
        )
        if await self._transcript(session, channel, vad, utt, end, end_byte, is_final=True):
            vad.counter += 1  # a blank utterance uses no id

    async def _process_audio(self, session: FakeSession, *, flush: bool = False) -> None:
        """Run the VAD over every whole 20 ms frame received since last time (and the tail if ``flush``)."""
        fmt = session.audio
        bps = fmt.bytes_per_second
        while True:
            available = len(session.received) - session.vad_cursor
            if available <= 0 or (available < fmt.frame_bytes and not flush):
                break
            size = min(available, fmt.frame_bytes)
            frame_start_byte = session.vad_cursor
            frame_end_byte = frame_start_byte + size
            session.vad_cursor = frame_end_byte
            frame = fmt.decode(bytes(session.received[frame_start_byte:frame_end_byte]))
            if len(frame) == 0:
                continue
            rms = np.sqrt(np.mean(np.square(frame, dtype=np.float64), axis=0))
            frame_start, frame_end = frame_start_byte / bps, frame_end_byte / bps
            for channel, vad in enumerate(session.channel_vads):
                voiced = bool(rms[channel] > self.vad_threshold)
                utt = vad.open
                if utt is None:
                    if voiced:
                        vad.open = _Utterance(
                            frame_start,
                            frame_start_byte,
                            frame_end,
                            frame_end_byte,
                            frame_start + PARTIAL_EVERY_SECONDS,
                        )
                        await self._emit(
                            session,
                            {
                                "type": "speech_start",
                                "data": {"time": round(frame_start, 3), "channel": channel},
                            },
                            gate="receive_speech_events",
                        )
                    continue
                if voiced:
                    utt.last_voiced_end, utt.last_voiced_end_byte = frame_end, frame_end_byte
                if frame_end - utt.start >= session.max_without_endpointing - 1e-9:
                    await self._close_utterance(session, channel, vad, frame_end, frame_end_byte)
                elif frame_end - utt.last_voiced_end >= session.endpointing - 1e-9:
                    await self._close_utterance(
                        session, channel, vad, utt.last_voiced_end, utt.last_voiced_end_byte
                    )
                elif frame_end >= utt.next_partial_at - 1e-9:
                    utt.next_partial_at += PARTIAL_EVERY_SECONDS
                    if not session.messages_config["receive_partial_transcripts"]:
                        continue
                    await self._transcript(
                        session, channel, vad, utt, frame_end, frame_end_byte, is_final=False
                    )
        if flush:
            # an open utterance ends at its last voiced frame (the end of the audio if still voiced)
            for channel, vad in enumerate(session.channel_vads):
                if vad.open is not None:
                    utt = vad.open
                    await self._close_utterance(
                        session, channel, vad, utt.last_voiced_end, utt.last_voiced_end_byte
                    )

    # ---------------------------------------------------------------- timers

    async def _janitor(self) -> None:
        """Idle timeouts, the session-length cap and resumability expiry."""
        while not self._stopping:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.ended or session.end_reason is not None:
                    continue
                if now - session.created_monotonic >= self.max_session_seconds:
                    self._spawn(self._end_session(session, reason="max_duration"))
                    continue
                conn = session.connection
                if conn is None:
                    since = session.disconnected_since
                    if self.resumable_seconds is not None and since is not None:
                        if now - since >= self.resumable_seconds:
                            self._spawn(self._end_session(session, reason="not_resumed", notify=False))
                    continue
                if now - conn.last_input >= self.idle_timeout:
                    conn.last_input = now  # once per idle period
                    self._spawn(self._idle_close(session, conn))

    async def _idle_close(self, session: FakeSession, conn: _Connection) -> None:
        if self.idle_ends_session:
            await self._end_session(session, reason="idle", notify=False)
        if session.connection is not conn:
            return
        if self.idle_close_code is None:
            await self._drop_connection(session, "abort", 1006)
        else:
            await self._drop_connection(session, "close", self.idle_close_code)
