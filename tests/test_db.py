"""db/: migrations (twice, concurrently) and the queries, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from db import queries
from db.migrate import available_migrations, migrate

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def _base_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://roomscribe:roomscribe@127.0.0.1:5432/roomscribe")


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A database with no tables at all, dropped afterwards."""
    base = _base_url()
    name = f"roomscribe_dbtest_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def _new_session(pool: asyncpg.Pool, title: str = "Weekly sync") -> queries.SessionRow:
    return await queries.create_session(
        pool,
        slug=secrets.token_urlsafe(16),
        title=title,
        languages=["en", "fr"],
        code_switching=True,
        custom_vocabulary=["LiveKit"],
        allow_guests=True,
        created_by=None,
    )


def _segment(key: str, identity: str, text: str, start: float, name: str | None = None) -> queries.SegmentRow:
    return queries.SegmentRow(
        segment_key=key,
        participant_identity=identity,
        participant_name=name,
        track_sid="TR_x",
        text=text,
        language="en",
        started_at=T0 + timedelta(seconds=start),
        ended_at=T0 + timedelta(seconds=start + 1.5),
        confidence=0.9,
        words=[{"word": text.split()[0], "start": start, "end": start + 0.4}],
    )


async def test_migrations_apply_once_in_order(empty_database: str) -> None:
    versions = [m.version for m in available_migrations()]
    assert versions and versions == sorted(versions)
    assert await migrate(empty_database) == versions
    assert await migrate(empty_database) == []
    connection = await asyncpg.connect(empty_database)
    try:
        rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await connection.close()
    assert [r["version"] for r in rows] == versions


async def test_concurrent_migrations_apply_each_version_once(empty_database: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(3)))
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in available_migrations()]
    connection = await asyncpg.connect(empty_database)
    try:
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
    finally:
        await connection.close()


async def test_session_round_trip_keeps_unicode(pool: asyncpg.Pool) -> None:
    title = "Réunion 会議 — «équipe» 🚀"
    session = await _new_session(pool, title)
    fetched = await queries.get_session_by_slug(pool, session.slug)
    assert fetched == session
    assert fetched is not None and fetched.title == title
    assert fetched.languages == ["en", "fr"] and fetched.custom_vocabulary == ["LiveKit"]
    assert fetched.status == "active" and fetched.ended_at is None
    assert await queries.get_session_by_slug(pool, "no-such-session-slug") is None


async def test_insert_segments_is_idempotent_and_creates_speakers(pool: asyncpg.Pool) -> None:
    session = await _new_session(pool)
    batch = [
        _segment("SG_1", "alice", "hello there", 0.0, "Alice"),
        _segment("SG_2", "bob:phone/1 ü", "général Kenobi 👋", 0.5, "Bób"),
        _segment("SG_3", "alice", "how are you", 2.0, "Alice"),
    ]
    assert await queries.insert_segments(pool, room=session.slug, segments=batch) == 3
    assert await queries.insert_segments(pool, room=session.slug, segments=batch) == 0
    # A replayed final inside a new batch, and a duplicate inside one batch, make no second row.
    again = [batch[1], _segment("SG_4", "carol", "bye now", 3.0), _segment("SG_4", "carol", "bye now", 3.0)]
    assert await queries.insert_segments(pool, room=session.slug, segments=again) == 1
    assert await queries.insert_segments(pool, room=session.slug, segments=[]) == 0

    transcript = await queries.list_transcript(pool, session.id)
    assert [s.segment_key for s in transcript] == ["SG_1", "SG_2", "SG_3", "SG_4"]
    assert transcript[1].participant_identity == "bob:phone/1 ü"
    assert transcript[1].participant_name == "Bób"
    assert transcript[1].text == "général Kenobi 👋"
    assert transcript[1].words == [{"word": "général", "start": 0.5, "end": 0.9}]
    assert transcript[0].started_at == T0
    participants = await queries.list_participants(pool, session.id)
    assert sorted(p.identity for p in participants) == ["alice", "bob:phone/1 ü", "carol"]
    assert all(p.role == "guest" for p in participants)


async def test_insert_segments_for_unknown_room_is_a_no_op(pool: asyncpg.Pool) -> None:
    segments = [_segment("SG_1", "alice", "hello", 0.0)]
    assert await queries.insert_segments(pool, room="no-such-room-slug-xx", segments=segments) == 0


async def test_ensure_participant_and_leave(pool: asyncpg.Pool) -> None:
    session = await _new_session(pool)
    host = await queries.upsert_participant(
        pool, session_id=session.id, identity="user-abc", display_name="Ann", role="host", user_id="abc"
    )
    assert host.joined_at is None
    assert await queries.ensure_participant(
        pool, room=session.slug, identity="user-abc", display_name="Other", joined_at=T0
    )
    row = await queries.get_participant(pool, session_id=session.id, identity="user-abc")
    assert row is not None and row.role == "host" and row.display_name == "Ann" and row.joined_at == T0
    # joined_at is only set when null
    await queries.ensure_participant(
        pool, room=session.slug, identity="user-abc", display_name=None, joined_at=T0 + timedelta(hours=1)
    )
    await queries.mark_participant_left(
        pool, room=session.slug, identity="user-abc", left_at=T0 + timedelta(minutes=5)
    )
    row = await queries.get_participant(pool, session_id=session.id, identity="user-abc")
    assert row is not None and row.joined_at == T0 and row.left_at == T0 + timedelta(minutes=5)

    assert await queries.ensure_participant(
        pool, room=session.slug, identity="phone:+33 1", display_name="Phone", joined_at=None
    )
    row = await queries.get_participant(pool, session_id=session.id, identity="phone:+33 1")
    assert row is not None and row.role == "guest" and row.joined_at is None

    assert not await queries.ensure_participant(
        pool, room="no-such-room-slug-xx", identity="x", display_name=None, joined_at=T0
    )
    await queries.mark_participant_left(pool, room="no-such-room-slug-xx", identity="x", left_at=T0)


async def test_delete_session_cascades_in_one_statement(pool: asyncpg.Pool) -> None:
    session = await _new_session(pool)
    await queries.upsert_participant(
        pool, session_id=session.id, identity="guest-1", display_name="G", role="guest", user_id=None
    )
    await queries.insert_segments(
        pool,
        room=session.slug,
        segments=[_segment("SG_1", "guest-1", "one", 0), _segment("SG_2", "b", "x", 1)],
    )
    async with pool.acquire() as connection:
        status = await connection.execute("DELETE FROM sessions WHERE slug = $1", session.slug)
        assert status == "DELETE 1"
        assert (
            await connection.fetchval("SELECT count(*) FROM participants WHERE session_id = $1", session.id)
            == 0
        )
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM transcript_segments WHERE session_id = $1", session.id
            )
            == 0
        )
    assert not await queries.delete_session(pool, session.slug)


async def test_delete_session_query_and_end(pool: asyncpg.Pool) -> None:
    session = await _new_session(pool)
    await queries.insert_segments(pool, room=session.slug, segments=[_segment("SG_1", "a", "one", 0)])
    assert await queries.end_session(pool, slug=session.slug, ended_at=T0)
    assert await queries.end_session(pool, slug=session.slug, ended_at=T0 + timedelta(hours=1))
    ended = await queries.get_session_by_slug(pool, session.slug)
    assert ended is not None and ended.status == "ended" and ended.ended_at == T0
    assert await queries.delete_session(pool, session.slug)
    assert await queries.get_session_by_slug(pool, session.slug) is None
    assert not await queries.end_session(pool, slug=session.slug, ended_at=T0)


async def test_list_sessions_keyset_newest_first(pool: asyncpg.Pool) -> None:
    made = [await _new_session(pool, f"page {i}") for i in range(5)]
    seen: list[str] = []
    before: tuple[datetime, int] | None = None
    while True:
        page = await queries.list_sessions(pool, limit=2, before=before)
        if not page:
            break
        seen.extend(s.slug for s in page)
        before = (page[-1].created_at, page[-1].id)
    mine = [slug for slug in seen if slug in {s.slug for s in made}]
    assert mine == [s.slug for s in reversed(made)]
    assert len(seen) == len(set(seen))
    assert await queries.ping(pool)


async def test_join_sessions_answers_each_request_in_order(pool: asyncpg.Pool) -> None:
    open_session = await _new_session(pool)
    closed = await queries.create_session(
        pool,
        slug=secrets.token_urlsafe(16),
        title="Members only",
        languages=[],
        code_switching=False,
        custom_vocabulary=[],
        allow_guests=False,
        created_by="u1",
    )

    def request(
        slug: str, identity: str, role: queries.Role = "guest", bypass: bool = False
    ) -> queries.JoinRequest:
        return queries.JoinRequest(
            slug=slug,
            identity=identity,
            display_name=identity.upper(),
            role=role,
            user_id=None,
            bypass_guest_check=bypass,
        )

    grants = await queries.join_sessions(
        pool,
        [
            request(open_session.slug, "g1"),
            request("unknown-slug-0123456789", "g2"),
            request(closed.slug, "g3"),
            request(closed.slug, "h1", role="host"),
            request(closed.slug, "g4", bypass=True),
            request(open_session.slug, "g5"),
        ],
    )
    assert [g.session.slug if g.session else None for g in grants] == [
        open_session.slug,
        None,
        closed.slug,
        closed.slug,
        closed.slug,
        open_session.slug,
    ]
    assert [g.participant.identity if g.participant else None for g in grants] == [
        "g1",
        None,
        None,
        "h1",
        "g4",
        "g5",
    ]
    assert grants[3].participant is not None and grants[3].participant.role == "host"
    assert grants[0].participant is not None and grants[0].participant.display_name == "G1"
    assert await queries.join_sessions(pool, []) == []
