"""Store: participants and final transcripts of one room, written to Postgres in batches.

Writes go through one bounded buffer and one writer task. While Postgres is unreachable the agent keeps
captioning: rows wait in the buffer and are written, in order, when the database answers again. Finals
are written idempotently (the segment key), so a retried batch never makes a second row. If the buffer
ever overflows (a very long outage), the oldest rows are dropped with an error log line that says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from agent.transcript import TranscriptEvent
from db import queries

logger = logging.getLogger("roomscribe.store")

_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclass(frozen=True, slots=True)
class _Joined:
    identity: str
    name: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class _Left:
    identity: str
    at: datetime


_Write: TypeAlias = _Joined | _Left | queries.SegmentRow


class TranscriptStore:
    def __init__(
        self,
        database_url: str,
        room: str,
        *,
        max_buffered: int = 20_000,
        batch_size: int = 200,
        retry_max_delay: float = 5.0,
    ) -> None:
        self._database_url = database_url
        self._room = room
        self._buffer: deque[_Write] = deque()
        self._max_buffered = max_buffered
        self._batch_size = batch_size
        self._retry_max_delay = retry_max_delay
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._pool: asyncpg.Pool | None = None
        self._writer: asyncio.Task[None] | None = None
        self._dropped = 0

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"store:{self._room}")

    def participant_joined(self, identity: str, name: str | None, at: datetime) -> None:
        self._enqueue(_Joined(identity, name, at))

    def participant_left(self, identity: str, at: datetime) -> None:
        self._enqueue(_Left(identity, at))

    def add_final(self, event: TranscriptEvent) -> None:
        self._enqueue(
            queries.SegmentRow(
                segment_key=event.segment_id,
                participant_identity=event.speaker.identity,
                participant_name=event.speaker.name,
                track_sid=event.speaker.track_sid,
                text=event.text,
                language=event.language,
                started_at=event.start,
                ended_at=event.end,
                confidence=event.confidence,
                words=event.words_json(),
            )
        )

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self, within: float) -> bool:
        """Wait until everything buffered is written; False if that took longer than `within` seconds."""
        try:
            await asyncio.wait_for(self._drained.wait(), within)
        except TimeoutError:
            return False
        return True

    async def aclose(self, flush_timeout: float) -> None:
        if not await self.flush(flush_timeout):
            logger.error(
                "transcript rows not written before shutdown",
                extra={"room": self._room, "rows": len(self._buffer)},
            )
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._pool is not None:
            self._pool.terminate()

    def _enqueue(self, write: _Write) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._buffer.popleft()
            self._dropped += 1
            logger.error(
                "store buffer full, oldest row dropped",
                extra={"room": self._room, "dropped_total": self._dropped, "buffered": len(self._buffer)},
            )
        self._buffer.append(write)
        self._drained.clear()
        self._wakeup.set()

    async def _write_loop(self) -> None:
        delay = 0.2
        outage_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._buffer:
                try:
                    await self._write_next()
                except _DATABASE_ERRORS as error:
                    if outage_since is None:
                        outage_since = loop.time()
                        logger.warning(
                            "database unreachable, holding transcript rows",
                            extra={"room": self._room, "buffered": len(self._buffer), "error": str(error)},
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_delay)
                    continue
                if outage_since is not None:
                    logger.info(
                        "database reachable again",
                        extra={
                            "room": self._room,
                            "outage_s": round(loop.time() - outage_since, 1),
                            "buffered": len(self._buffer),
                        },
                    )
                    outage_since = None
                delay = 0.2
            self._drained.set()

    async def _write_next(self) -> None:
        """Write the oldest buffered write (or batch of consecutive segments); remove it once written."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._database_url, min_size=0, max_size=2, command_timeout=10, timeout=5
            )
        head = self._buffer[0]
        if isinstance(head, _Joined):
            await queries.ensure_participant(
                self._pool, room=self._room, identity=head.identity, display_name=head.name, joined_at=head.at
            )
            self._buffer.popleft()
            return
        if isinstance(head, _Left):
            await queries.mark_participant_left(
                self._pool, room=self._room, identity=head.identity, left_at=head.at
            )
            self._buffer.popleft()
            return
        batch: list[queries.SegmentRow] = []
        for write in self._buffer:
            if not isinstance(write, queries.SegmentRow) or len(batch) == self._batch_size:
                break
            batch.append(write)
        await queries.insert_segments(self._pool, room=self._room, segments=batch)
        for _ in batch:
            self._buffer.popleft()
