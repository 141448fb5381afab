"""Every query roomscribe runs: parameterised SQL, typed results (frozen dataclasses).

Each function takes an asyncpg Pool or Connection (`db`). They rely on no connection setup (no custom
codecs): jsonb goes in and out as text and is (de)serialised here, so the agent and the API can share them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol


class Db(Protocol):
    """What these queries use of an asyncpg Pool or Connection (asyncpg ships no type information)."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any: ...


SessionStatus = Literal["active", "ended"]
Role = Literal["host", "guest"]


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: int
    slug: str
    title: str
    languages: list[str]
    code_switching: bool
    custom_vocabulary: list[str]
    allow_guests: bool
    created_by: str | None
    status: SessionStatus
    created_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class ParticipantRow:
    id: int
    session_id: int
    identity: str
    display_name: str | None
    role: Role
    user_id: str | None
    joined_at: datetime | None
    left_at: datetime | None


@dataclass(frozen=True)
class SegmentRow:
    """One final transcript segment as the agent writes it."""

    segment_key: str
    participant_identity: str
    participant_name: str | None
    track_sid: str
    text: str
    language: str | None
    started_at: datetime
    ended_at: datetime
    confidence: float | None
    words: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One stored segment with its speaker, as the transcript export reads it."""

    id: int
    segment_key: str
    participant_identity: str
    participant_name: str | None
    track_sid: str
    text: str
    language: str | None
    started_at: datetime
    ended_at: datetime
    confidence: float | None
    words: list[dict[str, Any]]


_SESSION_COLUMNS = (
    "id, slug, title, languages, code_switching, custom_vocabulary, allow_guests, created_by, status,"
    " created_at, ended_at"
)
_PARTICIPANT_COLUMNS = "id, session_id, identity, display_name, role, user_id, joined_at, left_at"


def _session(record: Any) -> SessionRow:
    return SessionRow(
        id=record["id"],
        slug=record["slug"],
        title=record["title"],
        languages=list(record["languages"]),
        code_switching=record["code_switching"],
        custom_vocabulary=list(record["custom_vocabulary"]),
        allow_guests=record["allow_guests"],
        created_by=record["created_by"],
        status=record["status"],
        created_at=record["created_at"],
        ended_at=record["ended_at"],
    )


def _participant(record: Any) -> ParticipantRow:
    return ParticipantRow(
        id=record["id"],
        session_id=record["session_id"],
        identity=record["identity"],
        display_name=record["display_name"],
        role=record["role"],
        user_id=record["user_id"],
        joined_at=record["joined_at"],
        left_at=record["left_at"],
    )


# --- sessions -----------------------------------------------------------------------------------------


async def create_session(
    db: Db,
    *,
    slug: str,
    title: str,
    languages: Sequence[str],
    code_switching: bool,
    custom_vocabulary: Sequence[str],
    allow_guests: bool,
    created_by: str | None,
) -> SessionRow:
    record = await db.fetchrow(
        "INSERT INTO sessions (slug, title, languages, code_switching, custom_vocabulary, allow_guests,"
        " created_by) VALUES ($1, $2, $3::text[], $4, $5::text[], $6, $7)"
        f" RETURNING {_SESSION_COLUMNS}",
        slug,
        title,
        list(languages),
        code_switching,
        list(custom_vocabulary),
        allow_guests,
        created_by,
    )
    return _session(record)


async def get_session_by_slug(db: Db, slug: str) -> SessionRow | None:
    record = await db.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE slug = $1", slug)
    return None if record is None else _session(record)


async def list_sessions(
    db: Db, *, limit: int, before: tuple[datetime, int] | None = None
) -> list[SessionRow]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page (keyset)."""
    if before is None:
        records = await db.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY created_at DESC, id DESC LIMIT $1", limit
        )
    else:
        records = await db.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE (created_at, id) < ($1, $2)"
            " ORDER BY created_at DESC, id DESC LIMIT $3",
            before[0],
            before[1],
            limit,
        )
    return [_session(r) for r in records]


async def delete_session(db: Db, slug: str) -> bool:
    """Delete the session and (by cascade) its participants and segments; False if it did not exist."""
    deleted = await db.fetchval("DELETE FROM sessions WHERE slug = $1 RETURNING id", slug)
    return deleted is not None


async def end_session(db: Db, *, slug: str, ended_at: datetime) -> bool:
    """Mark the session ended (the first end time wins); False if there is no such session."""
    found = await db.fetchval(
        "UPDATE sessions SET status = 'ended', ended_at = COALESCE(ended_at, $2)"
        " WHERE slug = $1 RETURNING id",
        slug,
        ended_at,
    )
    return found is not None


# --- participants -------------------------------------------------------------------------------------


async def upsert_participant(
    db: Db,
    *,
    session_id: int,
    identity: str,
    display_name: str,
    role: Role,
    user_id: str | None,
) -> ParticipantRow:
    """The participant a token is issued for (created before they connect); a re-issue updates the name."""
    record = await db.fetchrow(
        "INSERT INTO participants (session_id, identity, display_name, role, user_id)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (session_id, identity) DO UPDATE SET display_name = EXCLUDED.display_name,"
        "  role = EXCLUDED.role, user_id = COALESCE(EXCLUDED.user_id, participants.user_id)"
        f" RETURNING {_PARTICIPANT_COLUMNS}",
        session_id,
        identity,
        display_name,
        role,
        user_id,
    )
    return _participant(record)


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """The outcome of asking to join a session: `session` is None when there is no such session;
    `participant` is None when the session refused (ended, or guests not allowed for a guest)."""

    session: SessionRow | None
    participant: ParticipantRow | None


_JOIN = f"""
WITH s AS (
    SELECT {_SESSION_COLUMNS} FROM sessions WHERE slug = $1
), p AS (
    INSERT INTO participants (session_id, identity, display_name, role, user_id)
    SELECT s.id, $2, $3, $4, $5 FROM s
    WHERE s.status = 'active' AND ($4 = 'host' OR s.allow_guests OR $6)
    ON CONFLICT (session_id, identity) DO UPDATE SET display_name = EXCLUDED.display_name,
        role = EXCLUDED.role, user_id = COALESCE(EXCLUDED.user_id, participants.user_id)
    RETURNING id AS p_id, session_id AS p_session_id, identity AS p_identity,
        display_name AS p_display_name, role AS p_role, user_id AS p_user_id,
        joined_at AS p_joined_at, left_at AS p_left_at
)
SELECT s.*, p.* FROM s LEFT JOIN p ON true
"""


async def join_session(
    db: Db,
    *,
    slug: str,
    identity: str,
    display_name: str,
    role: Role,
    user_id: str | None,
    bypass_guest_check: bool = False,
) -> JoinGrant:
    """In one round trip: look the session up and, if it is active and admits this role, create (or
    update) the participant a token is being issued for, before they connect."""
    record = await db.fetchrow(_JOIN, slug, identity, display_name, role, user_id, bypass_guest_check)
    if record is None:
        return JoinGrant(session=None, participant=None)
    return _join_grant(record)


@dataclass(frozen=True, slots=True)
class JoinRequest:
    slug: str
    identity: str
    display_name: str
    role: Role
    user_id: str | None
    bypass_guest_check: bool = False


_PARTICIPANT_AS_P = (
    "id AS p_id, session_id AS p_session_id, identity AS p_identity, display_name AS p_display_name,"
    " role AS p_role, user_id AS p_user_id, joined_at AS p_joined_at, left_at AS p_left_at"
)

_JOIN_MANY = f"""
WITH req AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[])
         WITH ORDINALITY AS r(slug, identity, display_name, role, user_id, bypass, ord)
), s AS (
    SELECT r.ord AS req_ord, {", ".join("x." + c.strip() for c in _SESSION_COLUMNS.split(","))}
    FROM req r JOIN sessions x ON x.slug = r.slug
), p AS (
    INSERT INTO participants (session_id, identity, display_name, role, user_id)
    SELECT s.id, r.identity, r.display_name, r.role, r.user_id
    FROM req r JOIN s ON s.req_ord = r.ord
    WHERE s.status = 'active' AND (r.role = 'host' OR s.allow_guests OR r.bypass)
    ORDER BY r.ord
    ON CONFLICT (session_id, identity) DO UPDATE SET display_name = EXCLUDED.display_name,
        role = EXCLUDED.role, user_id = COALESCE(EXCLUDED.user_id, participants.user_id)
    RETURNING {_PARTICIPANT_AS_P}
)
SELECT r.ord, s.*, p.*
FROM req r
LEFT JOIN s ON s.req_ord = r.ord
LEFT JOIN p ON p.p_session_id = s.id AND p.p_identity = r.identity
ORDER BY r.ord
"""


def _join_grant(record: Any) -> JoinGrant:
    if record["id"] is None:
        return JoinGrant(session=None, participant=None)
    participant = None
    if record["p_id"] is not None:
        participant = ParticipantRow(
            id=record["p_id"],
            session_id=record["p_session_id"],
            identity=record["p_identity"],
            display_name=record["p_display_name"],
            role=record["p_role"],
            user_id=record["p_user_id"],
            joined_at=record["p_joined_at"],
            left_at=record["p_left_at"],
        )
    return JoinGrant(session=_session(record), participant=participant)


async def join_sessions(db: Db, requests: Sequence[JoinRequest]) -> list[JoinGrant]:
    """`join_session` for many requests in one statement (one round trip), results in request order.

    No two requests may name the same (slug, identity): Postgres refuses to upsert one row twice in one
    statement."""
    if not requests:
        return []
    records = await db.fetch(
        _JOIN_MANY,
        [r.slug for r in requests],
        [r.identity for r in requests],
        [r.display_name for r in requests],
        [r.role for r in requests],
        [r.user_id for r in requests],
        [r.bypass_guest_check for r in requests],
    )
    return [_join_grant(record) for record in records]


async def ensure_participant(
    db: Db, *, room: str, identity: str, display_name: str | None, joined_at: datetime | None
) -> bool:
    """Create the participant of session slug=`room` if missing (a guest unless already known) and set
    its joined_at if still null; a join after a recorded leave clears left_at. False if no such session."""
    found = await db.fetchval(
        "INSERT INTO participants (session_id, identity, display_name, role, joined_at)"
        " SELECT s.id, $2, $3, 'guest', $4 FROM sessions s WHERE s.slug = $1"
        " ON CONFLICT (session_id, identity) DO UPDATE SET"
        "  display_name = COALESCE(participants.display_name, EXCLUDED.display_name),"
        "  joined_at = COALESCE(participants.joined_at, EXCLUDED.joined_at),"
        "  left_at = CASE WHEN EXCLUDED.joined_at IS NOT NULL AND participants.left_at IS NOT NULL"
        "   AND EXCLUDED.joined_at > participants.left_at THEN NULL ELSE participants.left_at END"
        " RETURNING id",
        room,
        identity,
        display_name,
        joined_at,
    )
    return found is not None


async def record_participant_left(
    db: Db, *, room: str, identity: str, display_name: str | None, left_at: datetime
) -> bool:
    """Set the participant's left_at (creating the row if needed); False if no such session."""
    found = await db.fetchval(
        "INSERT INTO participants (session_id, identity, display_name, role, left_at)"
        " SELECT s.id, $2, $3, 'guest', $4 FROM sessions s WHERE s.slug = $1"
        " ON CONFLICT (session_id, identity) DO UPDATE SET"
        "  display_name = COALESCE(participants.display_name, EXCLUDED.display_name),"
        "  left_at = GREATEST(participants.left_at, EXCLUDED.left_at)"
        " RETURNING id",
        room,
        identity,
        display_name,
        left_at,
    )
    return found is not None


async def mark_participant_left(db: Db, *, room: str, identity: str, left_at: datetime) -> None:
    await record_participant_left(db, room=room, identity=identity, display_name=None, left_at=left_at)


async def list_participants(db: Db, session_id: int) -> list[ParticipantRow]:
    records = await db.fetch(
        f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE session_id = $1"
        " ORDER BY joined_at NULLS LAST, id",
        session_id,
    )
    return [_participant(r) for r in records]


async def get_participant(db: Db, *, session_id: int, identity: str) -> ParticipantRow | None:
    record = await db.fetchrow(
        f"SELECT {_PARTICIPANT_COLUMNS} FROM participants WHERE session_id = $1 AND identity = $2",
        session_id,
        identity,
    )
    return None if record is None else _participant(record)


# --- transcript ---------------------------------------------------------------------------------------

# One statement (one round trip): unnest the batch, create the missing speakers (DO UPDATE, not DO
# NOTHING, so RETURNING yields every speaker's id, also one a concurrent transaction just created), then
# insert the segments; a segment key already stored for the session is skipped.
_INSERT_SEGMENTS = """
WITH s AS (
    SELECT id FROM sessions WHERE slug = $1
), input AS (
    SELECT *
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::timestamptz[], $9::timestamptz[], $10::float8[], $11::text[])
         WITH ORDINALITY AS t(segment_key, identity, name, track_sid, text, language,
                              started_at, ended_at, confidence, words, ord)
), speakers AS (
    INSERT INTO participants (session_id, identity, display_name, role)
    SELECT DISTINCT ON (i.identity) s.id, i.identity, i.name, 'guest'
    FROM input i CROSS JOIN s
    ORDER BY i.identity, i.ord
    ON CONFLICT (session_id, identity) DO UPDATE
        SET display_name = COALESCE(participants.display_name, EXCLUDED.display_name)
    RETURNING id, identity
), inserted AS (
    INSERT INTO transcript_segments (session_id, participant_id, track_sid, segment_key, text, language,
                                     started_at, ended_at, confidence, words)
    SELECT s.id, p.id, i.track_sid, i.segment_key, i.text, i.language, i.started_at, i.ended_at,
           i.confidence, i.words::jsonb
    FROM input i CROSS JOIN s JOIN speakers p ON p.identity = i.identity
    ORDER BY i.ord
    ON CONFLICT (session_id, segment_key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"""


async def insert_segments(db: Db, *, room: str, segments: Sequence[SegmentRow]) -> int:
    """Store final segments of session slug=`room` in one round trip; idempotent per segment key.

    Creates missing participant rows; returns the number of rows inserted (0, and no error, when the
    session does not exist)."""
    if not segments:
        return 0
    count = await db.fetchval(
        _INSERT_SEGMENTS,
        room,
        [s.segment_key for s in segments],
        [s.participant_identity for s in segments],
        [s.participant_name for s in segments],
        [s.track_sid for s in segments],
        [s.text for s in segments],
        [s.language for s in segments],
        [s.started_at for s in segments],
        [s.ended_at for s in segments],
        [s.confidence for s in segments],
        [json.dumps(s.words, ensure_ascii=False) for s in segments],
    )
    return int(count)


async def list_transcript(db: Db, session_id: int) -> list[TranscriptSegment]:
    """All segments of the session, every speaker, in spoken order (started_at, ended_at, id)."""
    records = await db.fetch(
        "SELECT t.id, t.segment_key, p.identity, p.display_name, t.track_sid, t.text, t.language,"
        " t.started_at, t.ended_at, t.confidence, t.words::text AS words"
        " FROM transcript_segments t JOIN participants p ON p.id = t.participant_id"
        " WHERE t.session_id = $1 ORDER BY t.started_at, t.ended_at, t.id",
        session_id,
    )
    return [
        TranscriptSegment(
            id=r["id"],
            segment_key=r["segment_key"],
            participant_identity=r["identity"],
            participant_name=r["display_name"],
            track_sid=r["track_sid"],
            text=r["text"],
            language=r["language"],
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            confidence=r["confidence"],
            words=json.loads(r["words"]),
        )
        for r in records
    ]


async def ping(db: Db) -> bool:
    return bool(await db.fetchval("SELECT true"))
