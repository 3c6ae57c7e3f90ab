"""The audit trail (who, what, when, old → new) and the policy-changed broadcast."""

from __future__ import annotations

import hashlib

import httpx

from tests.policy.conftest import (
    SAMPLE_ELF,
    SAMPLE_SCRIPT,
    EventTap,
    assert_error,
    bearer,
    make_account,
    put_program,
    user_token,
)


async def test_audit_trail_old_to_new(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await put_program(client, admin_headers, "mymail")
    await put_program(client, admin_headers, "mymail", SAMPLE_ELF)
    await client.patch("/v1/settings", json={"suspended": True, "program_timeout_s": 30},
                       headers=admin_headers)
    await make_account(client, admin_headers, "bob@example.org", programs=["mymail"])
    token = await user_token(client, admin_headers, "bob@example.org")
    await client.put("/v1/accounts/bob@example.org/programs",
                     json={"enabled": False, "programs": []}, headers=bearer(token))
    await client.delete("/v1/programs/mymail", headers=admin_headers)

    r = await client.get("/v1/audit", headers=admin_headers)
    assert r.status_code == 200
    items = r.json()["items"]
    summary = [(e["actor"], e["target_kind"], e["action"], e["target"]) for e in items]
    token_id = items[2]["target"]
    assert summary == [
        ("admin", "program", "delete", "mymail"),
        ("user:bob@example.org", "account", "put_programs", "bob@example.org"),
        ("admin", "token", "create", token_id),
        ("admin", "account", "put", "bob@example.org"),
        ("admin", "settings", "patch", "settings"),
        ("admin", "program", "put", "mymail"),
        ("admin", "program", "put", "mymail"),
    ]
    script_sha = hashlib.sha256(SAMPLE_SCRIPT).hexdigest()
    elf_sha = hashlib.sha256(SAMPLE_ELF).hexdigest()
    first, replace = items[6], items[5]
    assert first["old"] is None
    assert first["new"] == {"sha256": script_sha, "size": len(SAMPLE_SCRIPT), "interpreter": False}
    assert replace["old"]["sha256"] == script_sha and replace["new"]["sha256"] == elf_sha
    assert items[0]["old"]["sha256"] == elf_sha and items[0]["new"] is None
    assert items[4]["old"] == {"suspended": False, "program_timeout_s": 60}
    assert items[4]["new"] == {"suspended": True, "program_timeout_s": 30}
    assert items[3]["old"] is None and items[3]["new"]["owner"]["uid"] == 1000
    assert items[2]["new"] == {"account": "bob@example.org", "role": "user", "label": None}
    assert token not in r.text
    assert items[1]["old"] == {"enabled": True, "programs": ["mymail"]}
    assert items[1]["new"] == {"enabled": False, "programs": []}
    assert all(e["at"] for e in items)

    # filters and pagination
    r = await client.get("/v1/audit", params={"target": "BOB@example.org"}, headers=admin_headers)
    assert [e["action"] for e in r.json()["items"]] == ["put_programs", "put"]
    r = await client.get("/v1/audit", params={"kind": "program"}, headers=admin_headers)
    assert len(r.json()["items"]) == 3
    seen, cursor = [], None
    while True:
        r = await client.get("/v1/audit", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                             headers=admin_headers)
        seen += [e["id"] for e in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert seen == [e["id"] for e in items]


async def test_refusals_change_nothing_and_leave_no_audit(
    client: httpx.AsyncClient, admin_headers: dict[str, str], mta_headers: dict[str, str]
) -> None:
    assert_error(await put_program(client, admin_headers, "sh"), 422)
    assert_error(await client.patch("/v1/settings", json={"mode": "x"}, headers=admin_headers), 422)
    assert_error(await client.patch("/v1/settings", json={"mode": "insecure"}, headers=mta_headers), 403)
    assert (await client.get("/v1/audit", headers=admin_headers)).json()["items"] == []


async def test_every_change_is_broadcast(
    client: httpx.AsyncClient, admin_headers: dict[str, str], events: EventTap
) -> None:
    await events.drain()
    await put_program(client, admin_headers, "mymail")
    ev = await events.next()
    assert ev["v"] == 1 and ev["what"] == "program" and ev["key"] == "mymail"
    assert ev["action"] == "put" and ev["suspended"] is False and ev["at"]

    await client.patch("/v1/settings", json={"suspended": True}, headers=admin_headers)
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"], ev["suspended"]) == ("settings", None, "patch", True)

    await make_account(client, admin_headers, "bob@example.org")
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"], ev["suspended"]) == (
        "account", "bob@example.org", "put", True)

    token = await user_token(client, admin_headers, "bob@example.org")
    ev = await events.next()
    assert (ev["what"], ev["action"]) == ("token", "put")
    token_id = ev["key"]

    await client.put("/v1/accounts/bob@example.org/programs",
                     json={"enabled": True, "programs": ["mymail"]}, headers=bearer(token))
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"]) == ("account", "bob@example.org", "put")

    await client.patch("/v1/settings", json={"suspended": False}, headers=admin_headers)
    assert (await events.next())["suspended"] is False

    await client.delete(f"/v1/tokens/{token_id}", headers=admin_headers)
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"]) == ("token", token_id, "delete")
    await client.delete("/v1/programs/mymail", headers=admin_headers)
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"]) == ("program", "mymail", "delete")
    await client.delete("/v1/accounts/bob@example.org", headers=admin_headers)
    ev = await events.next()
    assert (ev["what"], ev["key"], ev["action"]) == ("account", "bob@example.org", "delete")

    # refusals publish nothing
    await put_program(client, admin_headers, "bash")
    await client.patch("/v1/settings", json={}, headers=admin_headers)
    assert await events.queue.get(fail=False, no_ack=True) is None


async def test_metrics_exposed(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await put_program(client, admin_headers, "mymail")
    text = (await client.get("/metrics")).text
    assert "mailexec_policy_programs 1.0" in text
    assert 'mailexec_policy_changes_total{action="put",what="program"}' in text
