"""Accounts: create/replace/read/delete, pagination, warnings, the per-account program list."""

from __future__ import annotations

import httpx
import pytest

from tests.policy.conftest import (
    account_body,
    assert_error,
    bearer,
    make_account,
    put_program,
    user_token,
)


async def test_crud_and_lowercased_key(
    client: httpx.AsyncClient, admin_headers: dict[str, str], service_headers: dict[str, str],
    mta_headers: dict[str, str],
) -> None:
    await put_program(client, admin_headers, "mymail")
    r = await client.put("/v1/accounts/Bob@Example.ORG", json=account_body(["mymail"]),
                         headers=admin_headers)
    assert r.status_code == 201, r.text
    acct = r.json()
    assert acct["address"] == "bob@example.org"
    assert acct["owner"] == {"name": "Bob", "uid": 1000, "gid": 1000, "home": "/home/bob",
                             "shell": "/bin/sh"}
    assert acct["program_delivery"] == {"enabled": True, "programs": ["mymail"]}
    assert acct["mailbox_delivery"] is True
    assert acct["warnings"] == []

    for headers in (admin_headers, service_headers, mta_headers):
        r = await client.get("/v1/accounts/BOB@example.org", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["address"] == "bob@example.org"
        assert "warnings" not in r.json()

    body = account_body(["mymail"], uid=1001)
    body["mailbox_delivery"] = False
    r = await client.put("/v1/accounts/bob@example.org", json=body, headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["owner"]["uid"] == 1001 and r.json()["mailbox_delivery"] is False
    assert r.json()["created_at"] == acct["created_at"]

    assert (await client.delete("/v1/accounts/bob@example.org", headers=admin_headers)).status_code == 204
    assert_error(await client.get("/v1/accounts/bob@example.org", headers=admin_headers), 404)
    assert_error(await client.delete("/v1/accounts/bob@example.org", headers=admin_headers), 404)


async def test_defaults_of_optional_parts(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    owner = account_body()["owner"]
    r = await client.put("/v1/accounts/a@b.example", json={"owner": owner}, headers=admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["program_delivery"] == {"enabled": False, "programs": []}
    assert r.json()["mailbox_delivery"] is True


async def test_warnings_secure_mode(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await put_program(client, admin_headers, "mymail")
    acct = await make_account(client, admin_headers, "w@example.org",
                              programs=["mymail", "unknown", "/usr/local/bin/mymail"],
                              shell="/bin/zsh", uid=0)
    text = "\n".join(acct["warnings"])
    assert "'unknown' is not a registered trusted program" in text
    assert "ignores the path in '/usr/local/bin/mymail'" in text
    assert "/bin/zsh is not in valid_shells" in text
    assert "safe_user" in text
    # still accepted, as the guide says
    assert acct["program_delivery"]["programs"] == ["mymail", "unknown", "/usr/local/bin/mymail"]


async def test_warnings_insecure_mode(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await client.patch("/v1/settings", json={"mode": "insecure"}, headers=admin_headers)
    acct = await make_account(client, admin_headers, "w@example.org",
                              programs=["mymail", "/usr/bin/mymail"])
    assert len(acct["warnings"]) == 1
    assert "'mymail' is not an absolute path" in acct["warnings"][0]


async def test_pagination(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    addresses = sorted(f"user{i:02d}@example.org" for i in range(7))
    for a in addresses:
        await make_account(client, admin_headers, a)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/accounts", params=params, headers=admin_headers)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [a["address"] for a in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == addresses and pages == 3
    r = await client.get("/v1/accounts", headers=admin_headers)
    assert len(r.json()["items"]) == 7 and r.json()["next_cursor"] is None


async def test_search_by_part_of_the_address(client: httpx.AsyncClient,
                                             admin_headers: dict[str, str]) -> None:
    """The console's account search: any part, any case, LIKE's wildcards taken literally."""
    for a in ("sales@example.org", "presales@example.org", "bob@sales.example.net",
              "s_a%les@example.org", "carol@example.org"):
        await make_account(client, admin_headers, a)

    async def search(q: str, **extra: object) -> list[str]:
        r = await client.get("/v1/accounts", params={"q": q, **extra}, headers=admin_headers)
        assert r.status_code == 200, r.text
        return [a["address"] for a in r.json()["items"]]

    assert await search("SALES") == ["bob@sales.example.net", "presales@example.org",
                                     "sales@example.org"]
    assert await search("_a%") == ["s_a%les@example.org"]
    assert await search("nobody") == []
    r = await client.get("/v1/accounts", params={"q": "sales", "limit": 2}, headers=admin_headers)
    page = r.json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert await search("sales", cursor=page["next_cursor"]) == ["sales@example.org"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"limit": "ten"},
                                    {"cursor": "garbage!"}, {"cursor": "eyJhZnRlciI6IDF9"},
                                    {"cursor": "bm90IGpzb24"}])
async def test_bad_paging_params(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict
) -> None:
    r = await client.get("/v1/accounts", params=params, headers=admin_headers)
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code)


async def test_user_manages_own_program_list(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await put_program(client, admin_headers, "mymail")
    await make_account(client, admin_headers, "bob@example.org", programs=["mymail"])
    user = bearer(await user_token(client, admin_headers, "bob@example.org"))

    r = await client.get("/v1/accounts/bob@example.org/programs", headers=user)
    assert r.json() == {"enabled": True, "programs": ["mymail"]}
    r = await client.put("/v1/accounts/Bob@example.org/programs",
                         json={"enabled": True, "programs": ["mymail", "sorter"]}, headers=user)
    assert r.status_code == 200, r.text
    assert r.json()["programs"] == ["mymail", "sorter"]
    assert r.json()["address"] == "bob@example.org"
    assert any("'sorter' is not a registered" in w for w in r.json()["warnings"])
    r = await client.get("/v1/accounts/bob@example.org", headers=user)
    assert r.json()["program_delivery"] == {"enabled": True, "programs": ["mymail", "sorter"]}

    r = await client.put("/v1/accounts/bob@example.org/programs",
                         json={"enabled": False, "programs": []}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert_error(await client.put("/v1/accounts/nobody@example.org/programs",
                                  json={"enabled": False, "programs": []},
                                  headers=admin_headers), 404)


@pytest.mark.parametrize(
    "programs",
    [[""], ["a\x00b"], ["a\nb"], ["a\rb"], ["x" * 4097], ["p"] * 65, "mymail", [1], [None]],
)
async def test_bad_program_lists(
    client: httpx.AsyncClient, admin_headers: dict[str, str], programs: object
) -> None:
    await make_account(client, admin_headers, "bob@example.org", programs=["keep"])
    r = await client.put("/v1/accounts/bob@example.org/programs",
                         json={"enabled": True, "programs": programs}, headers=admin_headers)
    assert_error(r, 422)
    r = await client.get("/v1/accounts/bob@example.org", headers=admin_headers)
    assert r.json()["program_delivery"]["programs"] == ["keep"]


async def test_limits_of_program_lists_accepted(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_account(client, admin_headers, "bob@example.org")
    r = await client.put("/v1/accounts/bob@example.org/programs",
                         json={"enabled": True,
                               "programs": ["/" + "x" * 4030 + "/" + "p" * 64] + ["p"] * 63},
                         headers=admin_headers)
    assert r.status_code == 200, r.text
