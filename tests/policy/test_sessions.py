"""Console sessions (issue 15): created by an admin or user token, bound to that token,
sliding idle expiry, ended by DELETE; the same 404 whatever the reason; never stored or
logged in clear."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

import httpx
import pytest

from tests.conftest import db_conn
from tests.policy.conftest import assert_error, bearer, make_account, user_token

A, B = "alice@example.org", "bob@example.org"


@pytest.fixture
async def alice(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> str:
    await make_account(client, admin_headers, A)
    return await user_token(client, admin_headers, A)


async def _row(session_id: str) -> dict[str, object] | None:
    conn = await db_conn()
    try:
        row = await conn.fetchrow(
            "SELECT * FROM policy.console_sessions WHERE id_hash = $1",
            hashlib.sha256(session_id.encode()).hexdigest())
    finally:
        await conn.close()
    return None if row is None else dict(row)


async def _age(session_id: str, seconds: int) -> None:
    """Move the session's last use ``seconds`` into the past (the clock we control)."""
    conn = await db_conn()
    try:
        await conn.execute(
            "UPDATE policy.console_sessions SET last_seen_at = last_seen_at - make_interval("
            "secs => $2) WHERE id_hash = $1",
            hashlib.sha256(session_id.encode()).hexdigest(), float(seconds))
    finally:
        await conn.close()


async def test_lifecycle_of_a_user_session(
    client: httpx.AsyncClient, alice: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post("/v1/sessions", json={"idle_timeout_s": 600}, headers=bearer(alice))
    assert r.status_code == 201, r.text
    created = r.json()
    sid = created["session"]
    assert created["role"] == "user" and created["account"] == A
    assert created["name"] == f"user:{A}" and created["idle_timeout_s"] == 600
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(seconds=590) < expires - datetime.now(expires.tzinfo) <= timedelta(seconds=600)
    assert len(sid) >= 43

    stored = await _row(sid)
    assert stored is not None and stored["ended_at"] is None
    assert stored["token_hash"] == hashlib.sha256(alice.encode()).hexdigest()
    assert stored["principal"] == f"user:{A}" and stored["idle_timeout_s"] == 600
    assert sid not in str(stored) and alice not in str(stored)

    await _age(sid, 300)
    r = await client.get(f"/v1/sessions/{sid}", headers=bearer(alice))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["session"] == sid and got["role"] == "user" and got["account"] == A
    slid = await _row(sid)
    assert slid is not None and slid["last_seen_at"] > stored["last_seen_at"]  # sliding expiry

    assert (await client.delete(f"/v1/sessions/{sid}", headers=bearer(alice))).status_code == 204
    assert_error(await client.get(f"/v1/sessions/{sid}", headers=bearer(alice)), 404,
                 "session_not_found")
    assert_error(await client.delete(f"/v1/sessions/{sid}", headers=bearer(alice)), 404,
                 "session_not_found")
    ended = await _row(sid)
    assert ended is not None and ended["ended_at"] is not None
    # the test's own HTTP client (httpx) logs its URLs; the services' loggers never do
    ours = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records
                     if not r.name.startswith(("httpx", "httpcore")))
    assert sid not in ours and alice not in ours


async def test_admin_session_and_default_idle_timeout(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.post("/v1/sessions", headers=admin_headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["role"] == "admin" and body["account"] is None and body["name"] == "admin"
    assert body["idle_timeout_s"] == 1800
    r = await client.get(f"/v1/sessions/{body['session']}", headers=admin_headers)
    assert r.status_code == 200 and r.json()["role"] == "admin"


async def test_a_session_answers_only_to_its_own_token(
    client: httpx.AsyncClient, admin_headers: dict[str, str], alice: str
) -> None:
    other = await user_token(client, admin_headers, A)  # same account, another token
    await make_account(client, admin_headers, B)
    bob = await user_token(client, admin_headers, B)
    sid = (await client.post("/v1/sessions", headers=bearer(alice))).json()["session"]
    for headers in (bearer(other), bearer(bob), admin_headers):
        assert_error(await client.get(f"/v1/sessions/{sid}", headers=headers), 404,
                     "session_not_found")
        assert_error(await client.delete(f"/v1/sessions/{sid}", headers=headers), 404,
                     "session_not_found")
    # an unknown id gets the very same answer
    unknown = await client.get("/v1/sessions/not-a-session", headers=bearer(alice))
    known_other = await client.get(f"/v1/sessions/{sid}", headers=bearer(bob))
    assert unknown.status_code == known_other.status_code == 404
    assert unknown.json() == known_other.json()
    assert (await client.get(f"/v1/sessions/{sid}", headers=bearer(alice))).status_code == 200


async def test_idle_expiry(client: httpx.AsyncClient, alice: str) -> None:
    sid = (await client.post("/v1/sessions", json={"idle_timeout_s": 60},
                             headers=bearer(alice))).json()["session"]
    await _age(sid, 30)
    assert (await client.get(f"/v1/sessions/{sid}", headers=bearer(alice))).status_code == 200
    await _age(sid, 61)
    assert_error(await client.get(f"/v1/sessions/{sid}", headers=bearer(alice)), 404,
                 "session_not_found")
    assert_error(await client.delete(f"/v1/sessions/{sid}", headers=bearer(alice)), 404,
                 "session_not_found")


async def test_a_revoked_token_is_401(
    client: httpx.AsyncClient, admin_headers: dict[str, str], alice: str
) -> None:
    sid = (await client.post("/v1/sessions", headers=bearer(alice))).json()["session"]
    (meta,) = (await client.get(f"/v1/accounts/{A}/tokens", headers=admin_headers)).json()["items"]
    assert (await client.delete(f"/v1/tokens/{meta['id']}", headers=admin_headers)).status_code == 204
    assert_error(await client.get(f"/v1/sessions/{sid}", headers=bearer(alice)), 401)
    assert_error(await client.post("/v1/sessions", headers=bearer(alice)), 401)


async def test_roles(
    client: httpx.AsyncClient, mta_headers: dict[str, str], service_headers: dict[str, str],
    alice: str,
) -> None:
    sid = (await client.post("/v1/sessions", headers=bearer(alice))).json()["session"]
    for headers in (mta_headers, service_headers):
        err = assert_error(await client.post("/v1/sessions", headers=headers), 403, "wrong_role")
        assert "cannot sign in to the console" in err["message"]
        assert_error(await client.get(f"/v1/sessions/{sid}", headers=headers), 403)
        assert_error(await client.delete(f"/v1/sessions/{sid}", headers=headers), 403)
    for method in ("POST", "GET", "DELETE"):
        path = "/v1/sessions" if method == "POST" else f"/v1/sessions/{sid}"
        assert_error(await client.request(method, path), 401, "missing_token")
        assert_error(await client.request(method, path, headers=bearer("wrong")), 401,
                     "invalid_token")


@pytest.mark.parametrize("body", [
    {"idle_timeout_s": 59}, {"idle_timeout_s": 86401}, {"idle_timeout_s": "600"},
    {"idle_timeout_s": 600.5}, {"idle_timeout_s": True}, {"other": 1}, [600],
])
async def test_bad_bodies(client: httpx.AsyncClient, alice: str, body: object) -> None:
    assert_error(await client.post("/v1/sessions", json=body, headers=bearer(alice)), 422,
                 "invalid_request")


async def test_bad_json_and_huge_bodies(client: httpx.AsyncClient, alice: str) -> None:
    r = await client.post("/v1/sessions", content=b"{not json",
                          headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 422)
    r = await client.post("/v1/sessions", content=b"{" + b" " * 70000 + b"}",
                          headers={**bearer(alice), "Content-Type": "application/json"})
    assert_error(r, 413, "body_too_large")


async def test_old_sessions_are_purged_when_one_is_created(
    client: httpx.AsyncClient, alice: str
) -> None:
    ended = (await client.post("/v1/sessions", headers=bearer(alice))).json()["session"]
    expired = (await client.post("/v1/sessions", json={"idle_timeout_s": 60},
                                 headers=bearer(alice))).json()["session"]
    recent = (await client.post("/v1/sessions", json={"idle_timeout_s": 60},
                                headers=bearer(alice))).json()["session"]
    live = (await client.post("/v1/sessions", json={"idle_timeout_s": 86400},
                              headers=bearer(alice))).json()["session"]
    assert (await client.delete(f"/v1/sessions/{ended}", headers=bearer(alice))).status_code == 204
    conn = await db_conn()
    try:
        await conn.execute(
            "UPDATE policy.console_sessions SET ended_at = ended_at - interval '25 hours', "
            "last_seen_at = last_seen_at - interval '25 hours' WHERE id_hash = $1",
            hashlib.sha256(ended.encode()).hexdigest())
    finally:
        await conn.close()
    await _age(expired, 86400 + 120)  # idle-expired a day and a minute ago
    await _age(recent, 3600)  # idle-expired an hour ago: kept for now
    await _age(live, 86400 - 60)  # still live
    assert (await client.post("/v1/sessions", headers=bearer(alice))).status_code == 201
    assert await _row(ended) is None and await _row(expired) is None
    assert await _row(recent) is not None and await _row(live) is not None
    assert (await client.get(f"/v1/sessions/{live}", headers=bearer(alice))).status_code == 200


async def test_sessions_per_token_are_capped(client: httpx.AsyncClient, alice: str,
                                             admin_headers: dict[str, str]) -> None:
    """Signing in in a loop can't grow the table: the least recently used session ends."""
    from services.policy.repo import SESSIONS_PER_TOKEN

    made = []
    for i in range(SESSIONS_PER_TOKEN + 2):
        r = await client.post("/v1/sessions", headers=bearer(alice))
        assert r.status_code == 201, r.text
        made.append(r.json()["session"])
        if i == 0:
            await _age(made[0], -5)  # the first is the most recently used of all
        else:
            await _age(made[-1], 100 - i)  # then older to newer in creation order
    live = [sid for sid in made
            if (await client.get(f"/v1/sessions/{sid}", headers=bearer(alice))).status_code == 200]
    assert len(live) == SESSIONS_PER_TOKEN
    assert made[0] in live and made[-1] in live  # recently used and newest survive
    assert made[1] not in live and made[2] not in live  # the least recently used ended
    r = await client.post("/v1/sessions", headers=admin_headers)  # another token: unaffected
    assert r.status_code == 201
