"""The event channel every engine stream uses: bounded, ended once, and it never drops an event."""

from __future__ import annotations

import asyncio

import pytest

from agent.engines.base import EngineError, EventChannel, Hypothesis


def _final(n: int) -> Hypothesis:
    return Hypothesis(f"u{n}", f"final {n}", True, n, n + 1)


async def test_end_on_a_full_channel_comes_after_every_queued_event() -> None:
    channel = EventChannel(maxsize=3)
    for n in range(3):
        await channel.put(_final(n))
    channel.end()
    await channel.put(_final(99))  # after the end: ignored
    assert [event.utterance_id async for event in channel if isinstance(event, Hypothesis)] == [
        "u0",
        "u1",
        "u2",
    ]


async def test_a_failed_stream_raises_after_its_events() -> None:
    channel = EventChannel(maxsize=1)
    await channel.put(_final(0))
    channel.end(EngineError("bad key"))
    received = []
    with pytest.raises(EngineError, match="bad key"):
        async for event in channel:
            received.append(event)
    assert received == [_final(0)]


async def test_put_waits_while_the_reader_is_behind() -> None:
    channel = EventChannel(maxsize=1)
    await channel.put(_final(0))
    blocked = asyncio.create_task(channel.put(_final(1)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    reader = aiter(channel)
    assert await anext(reader) == _final(0)
    await asyncio.wait_for(blocked, 1)
    channel.end()
    assert [event async for event in reader] == [_final(1)]
