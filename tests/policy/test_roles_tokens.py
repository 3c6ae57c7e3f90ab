"""Role boundaries and user tokens (issued once, stored hashed, listed, revoked)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import db_conn
from tests.policy.conftest import (
    account_body,
    assert_error,
    bearer,
    make_account,
    put_program,
    user_token,
)

A, B = "alice@example.org", "bob@example.org"

# (method, path, json/content) of every write and every admin-only read
ADMIN_ONLY = [
    ("PUT", "/v1/programs/newprog", b"#!/bin/true\n"),
    ("DELETE", "/v1/programs/mymail", None),
    ("PATCH", "/v1/programs/mymail", {"network": "egress"}),
    ("PATCH", "/v1/settings", {"suspended": True}),
    ("PUT", f"/v1/accounts/{A}", account_body()),
    ("DELETE", f"/v1/accounts/{A}", None),
    ("GET", "/v1/accounts", None),
    ("POST", f"/v1/accounts/{A}/tokens", None),
    ("GET", f"/v1/accounts/{A}/tokens", None),
    ("DELETE", "/v1/tokens/6f1c3c36-4b0e-4d39-9d0e-0d5b8f6f1a11", None),
    ("GET", "/v1/audit", None),
]
SERVICE_READS = [
    "/v1/settings", "/v1/status", f"/v1/accounts/{A}", "/v1/programs", "/v1/programs/mymail",
    "/v1/programs/mymail/content",
]


async def send(client: httpx.AsyncClient, method: str, path: str, body: object,
               headers: dict[str, str]) -> httpx.Response:
    if isinstance(body, bytes):
        return await client.request(method, path, content=body, headers=headers)
    return await client.request(method, path, json=body, headers=headers)


@pytest.fixture
async def world(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> dict[str, dict[str, str]]:
    await put_program(client, admin_headers, "mymail")
    await make_account(client, admin_headers, A, programs=["mymail"])
    await make_account(client, admin_headers, B, programs=["mymail"])
    return {"alice": bearer(await user_token(client, admin_headers, A)),
            "bob": bearer(await user_token(client, admin_headers, B))}


async def snapshot(client: httpx.AsyncClient, admin: dict[str, str]) -> object:
    parts = []
    for path in ("/v1/settings", "/v1/programs", "/v1/accounts", "/v1/audit"):
        parts.append((await client.get(path, headers=admin)).json())
    return parts


async def test_non_admins_cannot_administer(
    client: httpx.AsyncClient, admin_headers: dict[str, str], mta_headers: dict[str, str],
    service_headers: dict[str, str], world: dict[str, dict[str, str]],
) -> None:
    before = await snapshot(client, admin_headers)
    for who, headers in (("mta", mta_headers), ("service", service_headers),
                         ("user", world["alice"])):
        for method, path, body in ADMIN_ONLY:
            r = await send(client, method, path, body, headers)
            err = assert_error(r, 403)
            assert "admin" in err["message"], (who, method, path)
    assert await snapshot(client, admin_headers) == before


async def test_missing_or_wrong_token_is_401(client: httpx.AsyncClient, world: dict) -> None:
    for method, path, body in ADMIN_ONLY + [("GET", p, None) for p in SERVICE_READS]:
        r = await send(client, method, path, body, {})
        assert_error(r, 401, "missing_token")
        r = await send(client, method, path, body, bearer("wrong"))
        assert_error(r, 401, "invalid_token")
        assert r.headers["www-authenticate"] == "Bearer"


async def test_service_reads_but_mta_and_user_do_not(
    client: httpx.AsyncClient, service_headers: dict[str, str], mta_headers: dict[str, str],
    world: dict[str, dict[str, str]],
) -> None:
    for path in SERVICE_READS:
        assert (await client.get(path, headers=service_headers)).status_code == 200, path
    for path in SERVICE_READS:
        if path == f"/v1/accounts/{A}":
            continue  # the MTA asks about mailbox delivery; alice reads her own account
        assert_error(await client.get(path, headers=mta_headers), 403)
        if path in ("/v1/programs", "/v1/programs/mymail", "/v1/status"):
            continue  # a user chooses among programs by their metadata (never their bytes),
            # by name or by path as the status's mode says
        assert_error(await client.get(path, headers=world["alice"]), 403)
    assert (await client.get(f"/v1/accounts/{A}", headers=mta_headers)).status_code == 200
    r = await client.put(f"/v1/accounts/{A}/programs", json={"enabled": False, "programs": []},
                         headers=service_headers)
    assert_error(r, 403)
    r = await client.put(f"/v1/accounts/{A}/programs", json={"enabled": False, "programs": []},
                         headers=mta_headers)
    assert_error(r, 403)


async def test_user_cannot_touch_another_account(
    client: httpx.AsyncClient, admin_headers: dict[str, str], world: dict[str, dict[str, str]]
) -> None:
    alice = world["alice"]
    for method, path, body in [
        ("GET", f"/v1/accounts/{B}", None),
        ("GET", f"/v1/accounts/{B}/programs", None),
        ("PUT", f"/v1/accounts/{B}/programs", {"enabled": True, "programs": ["evil"]}),
        ("PUT", f"/v1/accounts/{B.upper()}/programs", {"enabled": True, "programs": ["evil"]}),
        ("GET", "/v1/accounts/nobody@example.org", None),
    ]:
        err = assert_error(await send(client, method, path, body, alice), 403, "wrong_account")
        assert A in err["message"]
    r = await client.get(f"/v1/accounts/{B}", headers=admin_headers)
    assert r.json()["program_delivery"]["programs"] == ["mymail"]
    # her own account works
    r = await client.put(f"/v1/accounts/{A}/programs", json={"enabled": True, "programs": []},
                         headers=alice)
    assert r.status_code == 200
    assert (await client.get(f"/v1/accounts/{A}", headers=alice)).status_code == 200


async def test_tokens_shown_once_stored_hashed_listed_revoked(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_account(client, admin_headers, A)
    r = await client.post(f"/v1/accounts/{A}/tokens", json={"label": "laptop"},
                          headers=admin_headers)
    assert r.status_code == 201, r.text
    issued = r.json()
    token, token_id = issued["token"], issued["id"]
    assert issued["account"] == A and issued["role"] == "user" and issued["label"] == "laptop"

    conn = await db_conn()
    try:
        stored = await conn.fetchval("SELECT token_hash FROM policy.tokens WHERE id = $1::uuid",
                                     token_id)
        audit_text = await conn.fetchval("SELECT string_agg(coalesce(new::text,''), ' ') "
                                         "FROM policy.audit")
    finally:
        await conn.close()
    from shared.auth import hash_token

    assert stored == hash_token(token) and token not in stored
    assert token not in audit_text

    r = await client.get(f"/v1/accounts/{A}/tokens", headers=admin_headers)
    (meta,) = r.json()["items"]
    assert meta["id"] == token_id and "token" not in meta and "token_hash" not in meta
    assert token not in r.text

    user = bearer(token)
    assert (await client.get(f"/v1/accounts/{A}", headers=user)).status_code == 200
    assert (await client.delete(f"/v1/tokens/{token_id}", headers=admin_headers)).status_code == 204
    assert_error(await client.get(f"/v1/accounts/{A}", headers=user), 401)
    assert (await client.delete(f"/v1/tokens/{token_id}", headers=admin_headers)).status_code == 204
    r = await client.get(f"/v1/accounts/{A}/tokens", headers=admin_headers)
    assert r.json()["items"][0]["revoked_at"] is not None

    assert_error(await client.post("/v1/accounts/nobody@example.org/tokens",
                                   headers=admin_headers), 404)
    assert_error(await client.post(f"/v1/accounts/{A}/tokens", json={"label": 5},
                                   headers=admin_headers), 422)


async def test_deleting_an_account_revokes_its_tokens(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_account(client, admin_headers, A)
    user = bearer(await user_token(client, admin_headers, A))
    assert (await client.get(f"/v1/accounts/{A}", headers=user)).status_code == 200
    assert (await client.delete(f"/v1/accounts/{A}", headers=admin_headers)).status_code == 204
    await make_account(client, admin_headers, A)
    assert_error(await client.get(f"/v1/accounts/{A}", headers=user), 401)


async def test_a_user_reads_the_status_without_the_account_count(
    client: httpx.AsyncClient, admin_headers: dict[str, str], world: dict[str, dict[str, str]]
) -> None:
    r = await client.get("/v1/status", headers=world["alice"])
    assert r.status_code == 200, r.text
    assert r.json() == {"program_delivery": "enabled", "mode": "secure", "suspended": False,
                        "programs": 1, "accounts": None}
    assert (await client.get("/v1/status", headers=admin_headers)).json()["accounts"] == 2


async def test_a_user_reads_its_own_account_and_nothing_else(
    client: httpx.AsyncClient, admin_headers: dict[str, str], world: dict[str, dict[str, str]]
) -> None:
    r = await client.get(f"/v1/accounts/{A}", headers=world["alice"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["owner"]["name"] == "Bob" and body["mailbox_delivery"] is True
    assert body["program_delivery"] == {"enabled": True, "programs": ["mymail"]}
    assert r.json() == (await client.get(f"/v1/accounts/{A}", headers=admin_headers)).json()
    assert_error(await client.get(f"/v1/accounts/{B}", headers=world["alice"]), 403,
                 "wrong_account")
    for method, path, body in (("PUT", f"/v1/accounts/{A}", account_body()),
                               ("DELETE", f"/v1/accounts/{A}", None),
                               ("GET", "/v1/accounts", None)):
        assert_error(await send(client, method, path, body, world["alice"]), 403, "wrong_role")
