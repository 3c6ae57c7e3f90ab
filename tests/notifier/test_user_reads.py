"""A user token on /v1/notifications (issue 15): the DSNs about its own account's
recipients, for one message at a time; never a postmaster notice, never a DSN that
reports another account's recipient; other ids are 404 as unknown ones are."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.notifier.app import create_app
from shared.auth import hash_token
from tests.conftest import db_conn
from tests.notifier.conftest import (
    Publish,
    SmtpSink,
    StartNotifier,
    make_event,
    notifications,
    program_failed_notice,
    recipient,
    store_message,
    wait_for,
)

BOB, CAROL = "bob@example.org", "carol@example.org"
TOKENS = {BOB: "tok-notifier-bob", CAROL: "tok-notifier-carol"}


def as_user(account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[account]}"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(run_background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://notifier") as c:
        yield c


@pytest.fixture
async def world(notifier: StartNotifier, sink: SmtpSink, publish: Publish) -> dict[str, Any]:
    """Message ``own``: a bounce and a delay warning for bob, a postmaster notice about bob.
    Message ``shared``: one bounce reporting bob's and carol's recipients together."""
    conn = await db_conn()
    try:
        for account, token in TOKENS.items():
            await conn.execute(
                "INSERT INTO policy.tokens (id, token_hash, role, account, created_by) "
                "VALUES ($1, $2, 'user', $3, 'test')", uuid.uuid4(), hash_token(token), account)
    finally:
        await conn.close()
    await notifier(sink.url, postmaster="postmaster@mx.test.example")
    own, shared = uuid.uuid4(), uuid.uuid4()
    await store_message(own, sender="alice@example.net")
    await store_message(shared, sender="alice@example.net")
    await publish(make_event("bounce", own, [recipient("Bob@example.org")]))
    await publish(make_event("delayed", own, [recipient(BOB, "delayed")],
                             notify=["FAILURE", "DELAY"]))
    await publish(make_event("admin_notice", own, [recipient(BOB, "admin_notice")],
                             notice=program_failed_notice(BOB)))
    await publish(make_event("bounce", shared, [recipient(BOB), recipient(CAROL)]))

    async def all_stored() -> bool:
        return len(await notifications(own)) == 3 and len(await notifications(shared)) == 1

    await wait_for(all_stored, what="four notifications stored")
    rows = {(r["message_id"], r["kind"]): r["id"]
            for r in await notifications(own) + await notifications(shared)}
    return {"own": own, "shared": shared, "ids": rows}


async def test_a_user_lists_the_dsns_about_its_own_recipients(
    client: httpx.AsyncClient, world: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    own, shared, ids = world["own"], world["shared"], world["ids"]
    r = await client.get("/v1/notifications", params={"message_id": str(own)},
                         headers=as_user(BOB))
    assert r.status_code == 200, r.text
    listed = r.json()["items"]
    assert {i["kind"] for i in listed} == {"bounce", "delayed"}  # no admin notice
    assert all(i["message_id"] == str(own) and "content" not in i for i in listed)
    # paging over what the user may read
    r = await client.get("/v1/notifications", params={"message_id": str(own), "limit": 1},
                         headers=as_user(BOB))
    first = r.json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    r = await client.get("/v1/notifications", params={"message_id": str(own), "limit": 1,
                                                      "cursor": first["next_cursor"]},
                         headers=as_user(BOB))
    second = r.json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    assert {first["items"][0]["id"], second["items"][0]["id"]} == {i["id"] for i in listed}

    # carol has nothing on bob's message; nobody but the admin reads the shared bounce
    for account, mid in ((CAROL, own), (BOB, shared), (CAROL, shared)):
        r = await client.get("/v1/notifications", params={"message_id": str(mid)},
                             headers=as_user(account))
        assert r.status_code == 200 and r.json()["items"] == [], (account, mid)
    r = await client.get("/v1/notifications", params={"message_id": str(shared)},
                         headers=admin_headers)
    assert [i["kind"] for i in r.json()["items"]] == ["bounce"]
    r = await client.get("/v1/notifications", params={"message_id": str(own)},
                         headers=admin_headers)
    assert len(r.json()["items"]) == 3

    # a user must name the message
    r = await client.get("/v1/notifications", headers=as_user(BOB))
    assert r.status_code == 400 and r.json()["error"]["code"] == "message_id_required"
    # ids: their own DSNs readable, everything else 404 exactly as an unknown id
    bounce = ids[(own, "bounce")]
    r = await client.get(f"/v1/notifications/{bounce}", headers=as_user(BOB))
    assert r.status_code == 200 and "multipart/report" in r.json()["content"]
    assert "Bob@example.org" in r.json()["content"]
    unknown = await client.get(f"/v1/notifications/{uuid.uuid4()}", headers=as_user(BOB))
    assert unknown.status_code == 404
    for account, key in ((BOB, (own, "admin_notice")), (BOB, (shared, "bounce")),
                         (CAROL, (own, "bounce")), (CAROL, (shared, "bounce"))):
        r = await client.get(f"/v1/notifications/{ids[key]}", headers=as_user(account))
        assert r.status_code == 404, (account, key)
        body = r.json()
        assert body["error"]["code"] == "notification_not_found"
        assert body["error"]["message"].replace(str(ids[key]), "ID") == \
            unknown.json()["error"]["message"].replace(unknown.url.path.rsplit("/", 1)[1], "ID")
    r = await client.get(f"/v1/notifications/{ids[(own, 'admin_notice')]}",
                         headers=admin_headers)
    assert r.status_code == 200


async def test_roles(
    client: httpx.AsyncClient, world: dict[str, Any], mta_headers: dict[str, str],
    service_headers: dict[str, str],
) -> None:
    bounce = world["ids"][(world["own"], "bounce")]
    for path in ("/v1/notifications", f"/v1/notifications/{bounce}"):
        params = {"message_id": str(world["own"])}
        assert (await client.get(path, params=params)).status_code == 401
        r = await client.get(path, params=params, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        for headers in (mta_headers, service_headers):
            r = await client.get(path, params=params, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_role"
