"""A program's metadata: description and network (SPEC §2 PATCH /v1/programs/{name}).

What an admin or a user notices: the admin grants or withdraws network with one PATCH,
the audit log says who changed it from what to what, executors hear of it on
``policy.changed``, replacing the bytes keeps it, and a user can read what programs
there are (never their bytes) to choose among them.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.policy.conftest import (
    SAMPLE_ELF,
    EventTap,
    assert_error,
    bearer,
    make_account,
    put_program,
    user_token,
)

USER = "alice@example.org"


async def patch(client: httpx.AsyncClient, headers: dict[str, str], name: str,
                body: Any) -> httpx.Response:
    return await client.patch(f"/v1/programs/{name}", json=body, headers=headers)


async def program_audit(client: httpx.AsyncClient, admin: dict[str, str],
                        name: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/audit", params={"target": name, "kind": "program"}, headers=admin)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_a_new_program_has_no_network_and_no_description(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await put_program(client, admin_headers, "mymail")
    assert r.status_code == 201, r.text
    assert r.json()["network"] == "none" and r.json()["description"] is None
    listed = (await client.get("/v1/programs", headers=admin_headers)).json()["items"]
    assert [(p["name"], p["network"], p["description"]) for p in listed] == [
        ("mymail", "none", None)]


async def test_grant_egress_audited_announced_and_kept_across_new_bytes(
    client: httpx.AsyncClient, admin_headers: dict[str, str], events: EventTap
) -> None:
    await put_program(client, admin_headers, "fetcher")
    await events.drain()

    r = await patch(client, admin_headers, "fetcher",
                    {"network": "egress", "description": "posts the message to our ticket system"})
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["network"] == "egress"
    assert meta["description"] == "posts the message to our ticket system"

    event = await events.next()
    assert (event["what"], event["key"], event["action"]) == ("program", "fetcher", "patch")

    for path in ("/v1/programs/fetcher",):
        got = (await client.get(path, headers=admin_headers)).json()
        assert (got["network"], got["description"]) == ("egress", meta["description"])
    listed = (await client.get("/v1/programs", headers=admin_headers)).json()["items"]
    assert listed[0]["network"] == "egress"

    entry = (await program_audit(client, admin_headers, "fetcher"))[0]
    assert (entry["actor"], entry["action"]) == ("admin", "patch")
    assert entry["old"] == {"network": "none", "description": None}
    assert entry["new"] == {"network": "egress", "description": meta["description"]}

    # New bytes: the grant and the description stay with the name.
    r = await put_program(client, admin_headers, "fetcher", SAMPLE_ELF)
    assert r.status_code == 200, r.text
    assert (r.json()["network"], r.json()["description"]) == ("egress", meta["description"])

    # Withdraw it; only what changed is audited; null clears the description.
    r = await patch(client, admin_headers, "fetcher", {"network": "none"})
    assert r.status_code == 200 and r.json()["network"] == "none"
    assert r.json()["description"] == meta["description"]
    entry = (await program_audit(client, admin_headers, "fetcher"))[0]
    assert (entry["old"], entry["new"]) == ({"network": "egress"}, {"network": "none"})
    r = await patch(client, admin_headers, "fetcher", {"description": None})
    assert r.status_code == 200 and r.json()["description"] is None


async def test_a_patch_that_changes_nothing_leaves_no_audit_and_no_event(
    client: httpx.AsyncClient, admin_headers: dict[str, str], events: EventTap
) -> None:
    await put_program(client, admin_headers, "mymail")
    before = await program_audit(client, admin_headers, "mymail")
    await events.drain()
    for body in ({}, {"network": "none"}, {"description": None}):
        r = await patch(client, admin_headers, "mymail", body)
        assert r.status_code == 200, r.text
    assert await program_audit(client, admin_headers, "mymail") == before
    with pytest.raises(AssertionError, match="no policy-changed event"):
        await events.next(timeout=0.5)


@pytest.mark.parametrize("body", [
    {"network": "open"},
    {"network": "EGRESS"},
    {"network": None},
    {"network": True},
    {"description": 42},
    {"description": "line\rbreak"},
    {"description": "x" * 2001},
    {"network": "egress", "owner": "root"},  # unknown fields are refused, not ignored
    ["egress"],
    "egress",
])
async def test_bad_bodies_refused_with_the_error_shape_and_nothing_changes(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: Any
) -> None:
    await put_program(client, admin_headers, "mymail")
    before = await program_audit(client, admin_headers, "mymail")
    err = assert_error(await patch(client, admin_headers, "mymail", body), 422)
    assert err["message"]
    got = (await client.get("/v1/programs/mymail", headers=admin_headers)).json()
    assert (got["network"], got["description"]) == ("none", None)
    assert await program_audit(client, admin_headers, "mymail") == before


async def test_unknown_program_and_bad_name(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert_error(await patch(client, admin_headers, "nosuch", {"network": "egress"}), 404,
                 "no_such_program")
    assert_error(await patch(client, admin_headers, ".hidden", {"network": "egress"}), 400)
    r = await client.patch("/v1/programs/mymail", content=b"{not json",
                           headers={**admin_headers, "Content-Type": "application/json"})
    assert r.status_code in (400, 422)
    assert set(r.json()) == {"error"}


async def test_only_the_admin_may_change_metadata(
    client: httpx.AsyncClient, admin_headers: dict[str, str], mta_headers: dict[str, str],
    service_headers: dict[str, str],
) -> None:
    await put_program(client, admin_headers, "mymail")
    await make_account(client, admin_headers, USER, programs=["mymail"])
    alice = bearer(await user_token(client, admin_headers, USER))
    for headers in (alice, mta_headers, service_headers):
        assert_error(await patch(client, headers, "mymail", {"network": "egress"}), 403)
    assert_error(await patch(client, {}, "mymail", {"network": "egress"}), 401)
    assert_error(await patch(client, bearer("wrong"), "mymail", {"network": "egress"}), 401)
    got = (await client.get("/v1/programs/mymail", headers=admin_headers)).json()
    assert got["network"] == "none"


async def test_a_user_reads_the_list_and_metadata_but_never_the_bytes(
    client: httpx.AsyncClient, admin_headers: dict[str, str], mta_headers: dict[str, str]
) -> None:
    await put_program(client, admin_headers, "mymail")
    await patch(client, admin_headers, "mymail", {"description": "files mail by subject"})
    await make_account(client, admin_headers, USER, programs=["mymail"])
    alice = bearer(await user_token(client, admin_headers, USER))

    r = await client.get("/v1/programs", headers=alice)
    assert r.status_code == 200, r.text
    assert [(p["name"], p["description"], p["network"]) for p in r.json()["items"]] == [
        ("mymail", "files mail by subject", "none")]
    r = await client.get("/v1/programs/mymail", headers=alice)
    assert r.status_code == 200 and r.json()["description"] == "files mail by subject"

    assert_error(await client.get("/v1/programs/mymail/content", headers=alice), 403)
    assert_error(await client.get("/v1/programs/mymail/content", headers=mta_headers), 403)
    assert_error(await client.get("/v1/programs", headers=mta_headers), 403)
