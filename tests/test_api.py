"""The API against the real LiveKit server and PostgreSQL: rooms, tokens, webhooks, deletes, identities."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import asyncpg
import jwt
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api as lkapi
from livekit import rtc
from yarl import URL

from common.settings import Settings
from db import queries

if TYPE_CHECKING:
    from tests.conftest import LiveKitServer

USER_SECRET = "test-user-secret"
pytestmark = [
    pytest.mark.livekit,
    # The test secrets (LiveKit's dev "secret", the user JWT secret) are short on purpose.
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def user_jwt(sub: str, name: str, *, secret: str = USER_SECRET, exp_in: float = 600) -> str:
    return jwt.encode({"sub": sub, "name": name, "exp": int(time.time() + exp_in)}, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def create(
    http: aiohttp.ClientSession, api_url: str, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    body.setdefault("title", "Test session")
    async with http.post(f"{api_url}/api/sessions", json=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def guest_token(http: aiohttp.ClientSession, api_url: str, slug: str, name: str) -> dict[str, Any]:
    async with http.post(f"{api_url}/api/sessions/{slug}/token", json={"display_name": name}) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str | None = None) -> None:
    text = await response.text()
    assert response.status == status, (response.method, response.url, text)
    assert response.content_type == "application/json", text
    error = (await response.json())["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code, text


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def signed_webhook(
    event: lkapi.WebhookEvent, *, key: str = "devkey", secret: str = "secret"
) -> tuple[str, str]:
    body = MessageToJson(event)
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return body, lkapi.AccessToken(key, secret).with_sha256(digest).to_jwt()


async def test_health_and_readiness(http: aiohttp.ClientSession, api_url: str) -> None:
    async with http.get(f"{api_url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{api_url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["database"] == "ok"


async def test_create_makes_a_real_room_with_the_agent_and_delete_removes_it(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    livekit_server: LiveKitServer,
    settings: Settings,
) -> None:
    session = await create(
        http,
        api_url,
        admin_headers,
        title="Réunion 会議 🚀",
        languages=["fr", "ja"],
        custom_vocabulary=["Kubernetes"],
    )
    slug = session["slug"]
    assert len(slug) >= 16 and session["join_path"] == f"/s/{slug}"
    assert session["title"] == "Réunion 会議 🚀" and session["languages"] == ["fr", "ja"]
    assert session["status"] == "active" and session["created_by"] is None and session["allow_guests"] is True
    async with livekit_server.api() as livekit:
        rooms = await livekit.room.list_rooms(lkapi.ListRoomsRequest(names=[slug]))
        assert [room.name for room in rooms.rooms] == [slug]
        dispatches = await livekit.agent_dispatch.list_dispatch(room_name=slug)
        assert [d.agent_name for d in dispatches] == [settings.agent_name]
        assert '"Kubernetes"' in dispatches[0].metadata

    async with http.get(f"{api_url}/api/sessions/{slug}") as response:
        assert response.status == 200
        assert await response.json() == session

    async with http.delete(f"{api_url}/api/sessions/{slug}", headers=admin_headers) as response:
        assert response.status == 204
    async with livekit_server.api() as livekit:
        rooms = await livekit.room.list_rooms(lkapi.ListRoomsRequest(names=[slug]))
        assert list(rooms.rooms) == []
    async with http.get(f"{api_url}/api/sessions/{slug}") as response:
        await expect_error(response, 404, "not_found")
    async with http.delete(f"{api_url}/api/sessions/{slug}", headers=admin_headers) as response:
        await expect_error(response, 404, "not_found")


async def test_guest_token_joins_for_real_and_the_server_webhook_is_recorded(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str], livekit_server: LiveKitServer
) -> None:
    slug = (await create(http, api_url, admin_headers, title="Join test"))["slug"]
    grant = await guest_token(http, api_url, slug, "  Zoë 🎧 Ünïcode  ")
    assert grant["role"] == "guest" and grant["display_name"] == "Zoë 🎧 Ünïcode"
    assert grant["identity"].startswith("guest-") and grant["url"] == livekit_server.url
    assert quote(grant["identity"], safe="") == grant["identity"]

    # The row exists before they connect.
    async with http.get(f"{api_url}/api/sessions/{slug}/participants/{grant['identity']}") as response:
        assert response.status == 200
        row = await response.json()
        assert row["display_name"] == "Zoë 🎧 Ünïcode" and row["role"] == "guest" and row["joined_at"] is None

    room = rtc.Room()
    await room.connect(grant["url"], grant["token"])
    try:
        local = room.local_participant
        assert local.identity == grant["identity"]
        assert local.name == "Zoë 🎧 Ünïcode"
        permissions = local.permissions
        assert permissions.can_subscribe and permissions.can_publish and permissions.can_publish_data
        assert list(permissions.can_publish_sources) == [rtc.TrackSource.SOURCE_MICROPHONE]
        assert room.name == slug

        async def joined() -> Any:
            async with http.get(f"{api_url}/api/sessions/{slug}/participants") as response:
                listed = (await response.json())["participants"]
            return [p for p in listed if p["identity"] == grant["identity"] and p["joined_at"]]

        recorded = await eventually(joined)
        assert recorded[0]["left_at"] is None
    finally:
        await room.disconnect()

    async def left() -> Any:
        async with http.get(f"{api_url}/api/sessions/{slug}/participants/{grant['identity']}") as response:
            return (await response.json())["left_at"]

    await eventually(left)
    async with http.delete(f"{api_url}/api/sessions/{slug}", headers=admin_headers) as response:
        assert response.status == 204


async def test_user_token_is_host_with_a_derived_identity(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    creator = user_jwt("u/42:ü", "Ada Lovelace")
    session = await create(http, api_url, bearer(creator), title="Hosted", allow_guests=False)
    slug = session["slug"]
    assert session["created_by"] == "u/42:ü" and session["allow_guests"] is False

    tokens = []
    for _ in range(2):
        async with http.post(f"{api_url}/api/sessions/{slug}/token", headers=bearer(creator)) as response:
            assert response.status == 200, await response.text()
            tokens.append(await response.json())
    first, second = tokens
    assert first["identity"] == second["identity"]
    assert first["identity"].startswith("user-") and quote(first["identity"], safe="") == first["identity"]
    assert first["role"] == "host" and first["display_name"] == "Ada Lovelace"
    claims = jwt.decode(first["token"], options={"verify_signature": False})
    assert claims["sub"] == first["identity"] and claims["name"] == "Ada Lovelace"
    assert claims["video"]["room"] == slug and claims["video"]["roomJoin"] is True

    # No guests in this session; the admin key still may.
    async with http.post(f"{api_url}/api/sessions/{slug}/token", json={"display_name": "G"}) as response:
        await expect_error(response, 403, "guests_not_allowed")
    async with http.post(
        f"{api_url}/api/sessions/{slug}/token", json={"display_name": "Ops"}, headers=admin_headers
    ) as response:
        assert response.status == 200

    # Another user may not delete it; the creator may.
    async with http.delete(
        f"{api_url}/api/sessions/{slug}", headers=bearer(user_jwt("other", "O"))
    ) as response:
        await expect_error(response, 403, "forbidden")
    async with http.delete(f"{api_url}/api/sessions/{slug}") as response:
        await expect_error(response, 401, "unauthorized")
    async with http.delete(f"{api_url}/api/sessions/{slug}", headers=bearer(creator)) as response:
        assert response.status == 204


async def test_forged_webhooks_are_refused_and_signed_ones_applied(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    slug = (await create(http, api_url, admin_headers, title="Webhooks"))["slug"]
    url = f"{api_url}/api/livekit/webhook"
    joined = lkapi.WebhookEvent(
        event="participant_joined",
        id="EV_1",
        created_at=int(time.time()),
        room=lkapi.Room(name=slug),
        participant=lkapi.ParticipantInfo(identity="sip:+331/ü", name="Phone", joined_at=int(time.time())),
    )
    body, token = signed_webhook(joined)
    headers = {"Content-Type": "application/webhook+json"}

    async with http.post(url, data=body, headers=headers) as response:
        await expect_error(response, 401)
    _, forged = signed_webhook(joined, secret="not-the-secret")
    async with http.post(url, data=body, headers={**headers, "Authorization": forged}) as response:
        await expect_error(response, 401)
    tampered = body.replace("Phone", "Phony")
    async with http.post(url, data=tampered, headers={**headers, "Authorization": token}) as response:
        await expect_error(response, 401)
    async with http.post(url, data=body, headers={**headers, "Authorization": "garbage"}) as response:
        await expect_error(response, 401)
    async with http.get(f"{api_url}/api/sessions/{slug}/participants") as response:
        assert (await response.json())["participants"] == []

    async with http.post(url, data=body, headers={**headers, "Authorization": token}) as response:
        assert response.status == 200
    identity_path = quote("sip:+331/ü", safe="")
    async with http.get(
        URL(f"{api_url}/api/sessions/{slug}/participants/{identity_path}", encoded=True)
    ) as response:
        assert response.status == 200
        row = await response.json()
        assert row["identity"] == "sip:+331/ü" and row["display_name"] == "Phone" and row["joined_at"]

    # The transcriber (kind AGENT) is not recorded.
    agent = lkapi.WebhookEvent(
        event="participant_joined",
        room=lkapi.Room(name=slug),
        participant=lkapi.ParticipantInfo(
            identity="roomscribe-transcriber", kind=lkapi.ParticipantInfo.AGENT
        ),
    )
    body, token = signed_webhook(agent)
    async with http.post(url, data=body, headers={**headers, "Authorization": token}) as response:
        assert response.status == 200
    async with http.get(f"{api_url}/api/sessions/{slug}/participants/roomscribe-transcriber") as response:
        await expect_error(response, 404)

    # A room that is no session: acknowledged, ignored.
    other = lkapi.WebhookEvent(event="room_finished", room=lkapi.Room(name="someone-elses-room"))
    body, token = signed_webhook(other)
    async with http.post(url, data=body, headers={**headers, "Authorization": token}) as response:
        assert response.status == 200

    # room_finished ends the session; no more tokens.
    finished = lkapi.WebhookEvent(
        event="room_finished", created_at=int(time.time()), room=lkapi.Room(name=slug)
    )
    body, token = signed_webhook(finished)
    async with http.post(url, data=body, headers={**headers, "Authorization": token}) as response:
        assert response.status == 200
    async with http.get(f"{api_url}/api/sessions/{slug}") as response:
        ended = await response.json()
        assert ended["status"] == "ended" and ended["ended_at"]
    async with http.post(f"{api_url}/api/sessions/{slug}/token", json={"display_name": "Late"}) as response:
        await expect_error(response, 410, "session_ended")


def _segment(key: str, identity: str, name: str, text: str, start: float) -> queries.SegmentRow:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    return queries.SegmentRow(
        segment_key=key,
        participant_identity=identity,
        participant_name=name,
        track_sid="TR_1",
        text=text,
        language="en",
        started_at=t0 + timedelta(seconds=start),
        ended_at=t0 + timedelta(seconds=start + 1.25),
        confidence=None,
        words=[],
    )


async def test_transcript_exports_in_spoken_order(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    slug = (await create(http, api_url, admin_headers, title="Export"))["slug"]
    segments = [
        _segment("SG_b1", "bob", "Bób", "second <b>bold</b> --> arrow", 2.0),
        _segment("SG_a1", "alice", "Alice", "first line", 0.0),
        _segment("SG_a2", "alice", "Alice", "third\nline", 3661.5),
    ]
    assert await queries.insert_segments(pool, room=slug, segments=segments) == 3

    async with http.get(f"{api_url}/api/sessions/{slug}/transcript") as response:
        data = await response.json()
    assert [s["segment_key"] for s in data["segments"]] == ["SG_a1", "SG_b1", "SG_a2"]
    assert data["segments"][1]["speaker"] == {"identity": "bob", "name": "Bób"}
    assert data["segments"][1]["start_offset"] == 2.0

    async with http.get(f"{api_url}/api/sessions/{slug}/transcript?format=txt") as response:
        assert response.content_type == "text/plain"
        txt = await response.text()
    assert "[00:00:00] Alice: first line\n[00:00:02] Bób: second <b>bold</b> --> arrow\n" in txt
    assert "[01:01:01] Alice: third line" in txt

    async with http.get(f"{api_url}/api/sessions/{slug}/transcript?format=srt") as response:
        srt = await response.text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,250\nAlice: first line\n\n2\n00:00:02,000 --> ")
    assert "Bób: second <b>bold</b> -> arrow" in srt and "3\n01:01:01,500 --> 01:01:02,750\n" in srt

    async with http.get(f"{api_url}/api/sessions/{slug}/transcript?format=vtt") as response:
        assert response.content_type == "text/vtt"
        vtt = await response.text()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\n<v Alice>first line</v>\n")
    assert "<v Bób>second &lt;b&gt;bold&lt;/b&gt; --&gt; arrow</v>" in vtt

    async with http.get(f"{api_url}/api/sessions/{slug}/transcript?format=pdf") as response:
        await expect_error(response, 400, "invalid_format")


async def test_delete_cascades_rows_and_concurrent_deletes_give_one_204(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    session = await create(http, api_url, admin_headers, title="Cascade")
    slug = session["slug"]
    await guest_token(http, api_url, slug, "Guest")
    await queries.insert_segments(pool, room=slug, segments=[_segment("SG_1", "alice", "A", "hello", 0)])
    session_id = await pool.fetchval("SELECT id FROM sessions WHERE slug = $1", slug)
    assert await pool.fetchval("SELECT count(*) FROM participants WHERE session_id = $1", session_id) == 2

    async def delete() -> int:
        async with http.delete(f"{api_url}/api/sessions/{slug}", headers=admin_headers) as response:
            if response.status != 204:
                await expect_error(response, 404, "not_found")
            return response.status

    statuses = await asyncio.gather(delete(), delete(), delete())
    assert sorted(statuses) == [204, 404, 404]
    assert await pool.fetchval("SELECT count(*) FROM participants WHERE session_id = $1", session_id) == 0
    assert (
        await pool.fetchval("SELECT count(*) FROM transcript_segments WHERE session_id = $1", session_id) == 0
    )


UNUSUAL_IDENTITIES = [
    "sip:+33 1 23/45",
    "a/b/c",
    "100%",
    "%2F",
    "a%20b",
    "with space",
    "ünï😀code",
    "../../etc",
    "q?x=1&y=2#frag",
    "back\\slash",
    "plus+sign",
    ".",
]


async def test_unusual_identities_round_trip_through_the_url(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    slug = (await create(http, api_url, admin_headers, title="Identities"))["slug"]
    for identity in UNUSUAL_IDENTITIES:
        assert await queries.ensure_participant(
            pool, room=slug, identity=identity, display_name=None, joined_at=None
        )
    for identity in UNUSUAL_IDENTITIES:
        url = URL(f"{api_url}/api/sessions/{slug}/participants/{quote(identity, safe='')}", encoded=True)
        async with http.get(url) as response:
            assert response.status == 200, (identity, await response.text())
            assert (await response.json())["identity"] == identity
    async with http.get(f"{api_url}/api/sessions/{slug}/participants") as response:
        listed = {p["identity"] for p in (await response.json())["participants"]}
    assert listed == set(UNUSUAL_IDENTITIES)
    unknown = URL(f"{api_url}/api/sessions/{slug}/participants/{quote('no/such:one', safe='')}", encoded=True)
    async with http.get(unknown) as response:
        await expect_error(response, 404, "not_found")
    too_long = quote("x" * 300, safe="")
    async with http.get(f"{api_url}/api/sessions/{slug}/participants/{too_long}") as response:
        await expect_error(response, 400, "invalid_identity")


async def test_session_list_is_paginated_newest_first(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    made = [(await create(http, api_url, admin_headers, title=f"Page {i}"))["slug"] for i in range(3)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{api_url}/api/sessions", params=params, headers=admin_headers) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        assert len(page["sessions"]) <= 2
        seen.extend(s["slug"] for s in page["sessions"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert [slug for slug in seen if slug in made] == list(reversed(made))


BAD_CREATE_BODIES: list[tuple[Any, int, str]] = [
    ("{not json", 400, "invalid_json"),
    ("[1, 2]", 400, "invalid_json"),
    ("", 400, "invalid_json"),
    ({}, 422, "validation_error"),
    ({"title": 5}, 422, "validation_error"),
    ({"title": ""}, 422, "validation_error"),
    ({"title": "   "}, 422, "validation_error"),
    ({"title": "x" * 201}, 422, "validation_error"),
    ({"title": "a\x00b"}, 422, "validation_error"),
    ({"title": "ok", "languages": "en"}, 422, "validation_error"),
    ({"title": "ok", "languages": ["eng"]}, 422, "validation_error"),
    ({"title": "ok", "languages": ["EN"]}, 422, "validation_error"),
    ({"title": "ok", "languages": [5]}, 422, "validation_error"),
    ({"title": "ok", "code_switching": "yes"}, 422, "validation_error"),
    ({"title": "ok", "custom_vocabulary": [1]}, 422, "validation_error"),
    ({"title": "ok", "custom_vocabulary": [""]}, 422, "validation_error"),
    ({"title": "ok", "allow_guests": 1}, 422, "validation_error"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_CREATE_BODIES)
async def test_bad_create_bodies_get_json_4xx(
    http: aiohttp.ClientSession,
    api_url: str,
    admin_headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
) -> None:
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"data": body}
    headers = {**admin_headers, "Content-Type": "application/json"}
    async with http.post(f"{api_url}/api/sessions", headers=headers, **kwargs) as response:
        await expect_error(response, status, code)


async def test_other_bad_inputs_get_json_4xx(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str], settings: Settings
) -> None:
    sessions = f"{api_url}/api/sessions"
    slug = (await create(http, api_url, admin_headers, title="Inputs"))["slug"]
    token_url = f"{sessions}/{slug}/token"

    huge = {"title": "x", "custom_vocabulary": ["y" * 90] * (settings.max_body_bytes // 90 + 10)}
    async with http.post(sessions, json=huge, headers=admin_headers) as response:
        await expect_error(response, 413, "body_too_large")
    async with http.post(token_url, data=b"{" + b" " * (settings.max_body_bytes + 10) + b"}") as response:
        await expect_error(response, 413, "body_too_large")

    # Credentials
    async with http.post(sessions, json={"title": "x"}) as response:
        await expect_error(response, 401, "unauthorized")
    async with http.post(sessions, json={"title": "x"}, headers=bearer("wrong-key")) as response:
        await expect_error(response, 401, "unauthorized")
    async with http.post(sessions, json={"title": "x"}, headers={"Authorization": "Basic abc"}) as response:
        await expect_error(response, 401, "unauthorized")
    expired = user_jwt("u1", "U", exp_in=-3600)
    async with http.post(sessions, json={"title": "x"}, headers=bearer(expired)) as response:
        await expect_error(response, 401, "unauthorized")
    wrong_secret = user_jwt("u1", "U", secret="not-the-secret")
    async with http.post(token_url, json={}, headers=bearer(wrong_secret)) as response:
        await expect_error(response, 401, "unauthorized")
    no_exp = jwt.encode({"sub": "u1", "name": "U"}, USER_SECRET, algorithm="HS256")
    async with http.post(sessions, json={"title": "x"}, headers=bearer(no_exp)) as response:
        await expect_error(response, 401, "unauthorized")
    async with http.get(sessions) as response:
        await expect_error(response, 401, "unauthorized")
    async with http.get(sessions, headers=bearer(user_jwt("u1", "U"))) as response:
        await expect_error(response, 403, "forbidden")
    async with http.get(sessions, params={"limit": "0"}, headers=admin_headers) as response:
        await expect_error(response, 400, "invalid_limit")
    async with http.get(sessions, params={"limit": "abc"}, headers=admin_headers) as response:
        await expect_error(response, 400, "invalid_limit")
    async with http.get(sessions, params={"cursor": "!!notacursor"}, headers=admin_headers) as response:
        await expect_error(response, 400, "invalid_cursor")
    bad_cursor = base64.urlsafe_b64encode(b'["yesterday", 1]').decode()
    async with http.get(sessions, params={"cursor": bad_cursor}, headers=admin_headers) as response:
        await expect_error(response, 400, "invalid_cursor")

    # Guest names
    for name_body in ({}, {"display_name": ""}, {"display_name": "   "}, {"display_name": 7}):
        async with http.post(token_url, json=name_body) as response:
            await expect_error(response, 422, "validation_error")
    for bad in ("x" * 65, "tab\there", "new\nline", "nul\x00"):
        async with http.post(token_url, json={"display_name": bad}) as response:
            await expect_error(response, 422, "validation_error")
    async with http.post(token_url, data="not json") as response:
        await expect_error(response, 400, "invalid_json")
    async with http.post(token_url, json={"display_name": " " + "é" * 64 + " "}) as response:
        assert response.status == 200

    # Unknown slugs, well-formed or not
    for unknown in ("A" * 22, "short", "bad%00slug", quote("../../x", safe="")):
        for method, path in (
            ("GET", ""),
            ("GET", "/participants"),
            ("GET", "/participants/someone"),
            ("GET", "/transcript"),
            ("POST", "/token"),
            ("DELETE", ""),
        ):
            url = URL(f"{sessions}/{unknown}{path}", encoded=True)
            async with http.request(
                method, url, json={"display_name": "X"}, headers=admin_headers
            ) as response:
                await expect_error(response, 404)

    # Unknown routes and methods are JSON too.
    async with http.get(f"{api_url}/api/nope") as response:
        await expect_error(response, 404)
    async with http.put(sessions) as response:
        await expect_error(response, 405)


async def test_unicode_is_stored_and_returned_unchanged(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    title = "Ŝéance — 会議 «test» 👩🏽‍💻 \u00e9 vs e\u0301"
    session = await create(
        http, api_url, admin_headers, title=title, custom_vocabulary=["Ærøskøbing", "東京"]
    )
    assert session["title"] == title
    async with http.get(f"{api_url}/api/sessions/{session['slug']}") as response:
        raw = await response.text()
        assert title in raw  # not \u-escaped
        fetched = await response.json()
    assert fetched["title"] == title and fetched["custom_vocabulary"] == ["Ærøskøbing", "東京"]
    name = "Jürgen 李 e\u0301"
    grant = await guest_token(http, api_url, session["slug"], name)
    assert grant["display_name"] == name
    async with http.get(
        f"{api_url}/api/sessions/{session['slug']}/participants/{grant['identity']}"
    ) as response:
        assert (await response.json())["display_name"] == name


async def test_livekit_failure_is_a_502_and_leaves_no_row(
    http: aiohttp.ClientSession, settings: Settings, api_url: str, pool: asyncpg.Pool
) -> None:
    from aiohttp import web

    from api.app import create_app

    broken = settings.model_copy(
        update={"livekit_url": "http://127.0.0.1:9", "public_session_creation": True}
    )
    runner = web.AppRunner(create_app(broken))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        title = f"Doomed {time.time_ns()}"
        async with http.post(f"http://{host}:{port}/api/sessions", json={"title": title}) as response:
            await expect_error(response, 502, "livekit_unavailable")
        assert await pool.fetchval("SELECT count(*) FROM sessions WHERE title = $1", title) == 0
    finally:
        await runner.cleanup()


async def test_openapi_documents_exactly_the_routes(http: aiohttp.ClientSession, api_url: str) -> None:
    from api.app import create_app

    async with http.get(f"{api_url}/api/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    registered = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info or route.method in {"HEAD", "OPTIONS"}:
            continue  # static directories
        registered.add((route.resource.canonical, route.method))  # type: ignore[union-attr]
    assert registered == documented


def test_join_token_claims_match_livekit_api_access_token() -> None:
    from datetime import timedelta

    from api.tokens import livekit_token

    ttl = timedelta(seconds=3600)
    ours = livekit_token(
        api_key="devkey",
        api_secret="secret",
        room="r" * 22,
        identity="guest-x",
        name="Zoë 🎧",
        role="guest",
        ttl=ttl,
    )
    grants = lkapi.VideoGrants(
        room_join=True,
        room="r" * 22,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
    )
    reference = (
        lkapi.AccessToken("devkey", "secret")
        .with_identity("guest-x")
        .with_name("Zoë 🎧")
        .with_attributes({"roomscribe.role": "guest"})
        .with_grants(grants)
        .with_ttl(ttl)
        .to_jwt()
    )
    decoded = [jwt.decode(t, "secret", algorithms=["HS256"], issuer="devkey") for t in (ours, reference)]
    for claims in decoded:
        assert abs(claims.pop("nbf") + 3600 - claims.pop("exp")) <= 1
    assert decoded[0] == decoded[1]
    verified = lkapi.TokenVerifier("devkey", "secret").verify(ours)
    assert verified.identity == "guest-x" and verified.name == "Zoë 🎧"
    assert verified.video is not None and verified.video.room_join and verified.video.room == "r" * 22


async def test_a_burst_of_token_requests_is_answered_one_by_one_correctly(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    """Concurrent token requests share database statements; each still gets its own, right answer."""
    open_slug = (await create(http, api_url, admin_headers, title="Burst"))["slug"]
    closed_slug = (await create(http, api_url, admin_headers, title="Closed", allow_guests=False))["slug"]
    host = bearer(user_jwt("burst-user", "Burst Host"))

    async def token(slug: str, headers: dict[str, str] | None = None, name: str = "G") -> tuple[int, Any]:
        async with http.post(
            f"{api_url}/api/sessions/{slug}/token", json={"display_name": name}, headers=headers
        ) as response:
            return response.status, await response.json()

    calls = [token(open_slug, name=f"Guest {i}") for i in range(40)]
    calls += [token(open_slug, host, name="Host") for _ in range(3)]
    calls += [token(closed_slug), token(closed_slug, host), token("Z" * 22)]
    results = await asyncio.gather(*calls)
    guests, hosts, (refused, admitted, unknown) = results[:40], results[40:43], results[43:]
    assert all(status == 200 for status, _ in guests + hosts)
    assert len({body["identity"] for _, body in guests}) == 40
    assert [body["display_name"] for _, body in guests] == [f"Guest {i}" for i in range(40)]
    assert len({body["identity"] for _, body in hosts}) == 1 and hosts[0][1]["role"] == "host"
    assert refused[0] == 403 and admitted[0] == 200 and unknown[0] == 404
    async with http.get(f"{api_url}/api/sessions/{open_slug}/participants") as response:
        assert len((await response.json())["participants"]) == 41


async def test_join_page_routes_serve_index_html(
    http: aiohttp.ClientSession, api_url: str, admin_headers: dict[str, str]
) -> None:
    from api.static import STATIC_DIR

    slug = (await create(http, api_url, admin_headers, title="Page"))["slug"]
    if not (STATIC_DIR / "index.html").is_file():
        async with http.get(f"{api_url}/") as response:
            await expect_error(response, 404)
        pytest.skip("api/static/index.html is not there yet")
    expected = (STATIC_DIR / "index.html").read_bytes()
    for path in ("/", f"/s/{slug}", "/static/index.html"):
        async with http.get(f"{api_url}{path}") as response:
            assert response.status == 200, path
            assert await response.read() == expected


async def test_database_outage_is_a_503_then_recovers(
    http: aiohttp.ClientSession, settings: Settings, admin_headers: dict[str, str]
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from aiohttp import web

    from api.app import create_app
    from tests.tcp_proxy import TcpProxy

    parts = urlsplit(settings.database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    credentials = parts.netloc.rpartition("@")[0]
    through_proxy = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))
    runner = web.AppRunner(create_app(settings.model_copy(update={"database_url": through_proxy})))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
        proxy.cut()
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
        async with http.get(f"{base}/api/sessions", headers=admin_headers) as response:
            await expect_error(response, 503, "database_unavailable")
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        proxy.restore()

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200

        await eventually(ready)
        async with http.get(f"{base}/api/sessions", headers=admin_headers) as response:
            assert response.status == 200
    finally:
        await runner.cleanup()
        await proxy.stop()
