"""Coalesces concurrent token requests into one database statement.

Each token request needs one upsert (look the session up, create the participant). Under load, the
requests that arrive while a statement is in flight are written together by the next one: one round
trip and one commit for the batch, instead of one per request. An idle server still answers a lone
request at once (the batch is flushed on the next loop turn). If a batch statement fails, its requests
are retried one by one, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from db import queries

logger = logging.getLogger("roomscribe.api.join_batcher")

MAX_BATCH = 256

_Item = tuple[queries.JoinRequest, "asyncio.Future[queries.JoinGrant]"]


class JoinBatcher:
    def __init__(self, pool: Any, *, max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._pending: list[_Item] = []
        self._drainer: asyncio.Task[None] | None = None

    async def join(self, request: queries.JoinRequest) -> queries.JoinGrant:
        future: asyncio.Future[queries.JoinGrant] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="join-batcher")
        return await future

    async def aclose(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("the API is shutting down"))
        self._pending.clear()

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # requests parsed in this loop turn join the first batch
            while self._pending:
                batch = self._take_batch()
                await self._write(batch)
        finally:
            self._drainer = None

    def _take_batch(self) -> list[_Item]:
        """Up to max_batch pending requests, at most one per (slug, identity); the rest wait."""
        batch: list[_Item] = []
        rest: list[_Item] = []
        keys: set[tuple[str, str]] = set()
        for item in self._pending:
            request, future = item
            if future.done():
                continue  # its handler is gone
            key = (request.slug, request.identity)
            if key in keys or len(batch) >= self._max_batch:
                rest.append(item)
            else:
                keys.add(key)
                batch.append(item)
        self._pending = rest
        return batch

    async def _write(self, batch: list[_Item]) -> None:
        try:
            grants = await queries.join_sessions(self._pool, [request for request, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            logger.warning("batched join failed, retrying one by one", extra={"size": len(batch)})
            for item in batch:
                await self._write([item])
            return
        for (_, future), grant in zip(batch, grants, strict=True):
            _settle(future, grant=grant)


def _settle(
    future: asyncio.Future[queries.JoinGrant],
    *,
    grant: queries.JoinGrant | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert grant is not None
        future.set_result(grant)
