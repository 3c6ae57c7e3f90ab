"""Client mistakes: every one a 4xx in the SPEC error shape, nothing changed, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.policy.conftest import account_body, assert_error, put_program

BAD_PROGRAM_PATHS = [
    "/v1/programs/..%2Fx",
    "/v1/programs/a%2Fb",
    "/v1/programs/a/b",
    "/v1/programs/x%00y",
    "/v1/programs/" + "a" * 65,
    "/v1/programs/.hidden",
    "/v1/programs/-dash",
    "/v1/programs/sp%20ace",
    "/v1/programs/caf%C3%A9",
    "/v1/programs/INSECURE-PROGRAM-DELIVERIES",
    "/v1/programs/SUSPEND-PROGRAM-DELIVERIES",
    "/v1/programs/..",
]


@pytest.mark.parametrize("path", BAD_PROGRAM_PATHS)
async def test_bad_program_names(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str
) -> None:
    headers = {**admin_headers, "Content-Type": "application/octet-stream"}
    r = await client.put(path, content=b"#!/bin/true\n", headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert_error(r, r.status_code)
    for method in ("GET", "DELETE"):
        r = await client.request(method, path, headers=admin_headers)
        assert 400 <= r.status_code < 500, (method, r.text)
        assert_error(r, r.status_code)
    assert (await client.get("/v1/programs", headers=admin_headers)).json()["count"] == 0


async def test_messages_say_what_to_fix(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    err = assert_error(await put_program(client, admin_headers, "a" * 65), 400, "invalid_name")
    assert "at most 64" in err["message"]
    err = assert_error(await put_program(client, admin_headers, "..%2Fx"), 400, "invalid_name")
    assert "path" in err["message"]
    err = assert_error(await put_program(client, admin_headers, "INSECURE-PROGRAM-DELIVERIES"), 400)
    assert "/v1/settings" in err["message"]
    err = assert_error(await put_program(client, admin_headers, "x%00y"), 400)
    assert "NUL" in err["message"]
    assert (await put_program(client, admin_headers, "a" * 64)).status_code == 201


BAD_ADDRESSES = ["nobody", "@example.org", "bob@", "bob@@example.org", "bo b@example.org",
                 "bob%00@example.org", "bob%0D%0A@example.org", "a%2Fb@example.org",
                 "bob@exa_mple.org", "bob@-example.org", "x" * 65 + "@example.org",
                 "bob@" + "a" * 250 + ".org", ".bob@example.org", "bo..b@example.org"]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
async def test_bad_addresses(
    client: httpx.AsyncClient, admin_headers: dict[str, str], address: str
) -> None:
    r = await client.put(f"/v1/accounts/{address}", json=account_body(), headers=admin_headers)
    err = assert_error(r, 400, "invalid_address")
    assert "address" in err["message"]
    for path in (f"/v1/accounts/{address}", f"/v1/accounts/{address}/programs",
                 f"/v1/accounts/{address}/tokens"):
        r = await client.get(path, headers=admin_headers)
        assert_error(r, 400)
    assert (await client.get("/v1/accounts", headers=admin_headers)).json()["items"] == []


@pytest.mark.parametrize(
    ("owner", "field"),
    [
        ({"home": "home/bob"}, "home"),
        ({"home": ""}, "home"),
        ({"home": "/home/bo\x00b"}, "home"),
        ({"shell": "sh"}, "shell"),
        ({"uid": -1}, "uid"),
        ({"uid": "1000"}, "uid"),
        ({"uid": 10.5}, "uid"),
        ({"uid": True}, "uid"),
        ({"uid": 2**32}, "uid"),
        ({"gid": -5}, "gid"),
        ({"gid": None}, "gid"),
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_owner(
    client: httpx.AsyncClient, admin_headers: dict[str, str], owner: dict, field: str
) -> None:
    r = await client.put("/v1/accounts/bob@example.org", json=account_body(**owner),
                         headers=admin_headers)
    err = assert_error(r, 422)
    assert field in err["message"]
    assert_error(await client.get("/v1/accounts/bob@example.org", headers=admin_headers), 404)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"owner": "bob"},
        {"owner": None},
        {"owner": account_body()["owner"], "mailbox_delivery": "yes"},
        {"owner": account_body()["owner"], "program_delivery": {"enabled": "true"}},
        {"owner": account_body()["owner"], "program_delivery": {"programs": "mymail"}},
        {"owner": account_body()["owner"], "unknown": 1},
        [1, 2],
    ],
)
async def test_bad_account_bodies(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: object
) -> None:
    r = await client.put("/v1/accounts/bob@example.org", json=body, headers=admin_headers)
    assert_error(r, 422)
    r = await client.put("/v1/accounts/bob@example.org", content=b"{oops",
                         headers={**admin_headers, "Content-Type": "application/json"})
    assert_error(r, 422)
    assert_error(await client.get("/v1/accounts/bob@example.org", headers=admin_headers), 404)


async def test_bad_token_ids_and_audit_params(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for token_id in ("not-a-uuid", "1", "00000000-0000-0000-0000-00000000000g"):
        assert_error(await client.delete(f"/v1/tokens/{token_id}", headers=admin_headers), 422)
    r = await client.delete("/v1/tokens/6f1c3c36-4b0e-4d39-9d0e-0d5b8f6f1a11", headers=admin_headers)
    assert_error(r, 404)
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "%%%"}, {"cursor": "e30"},
                   {"kind": "banana"}, {"target": "a\x00b"}):
        r = await client.get("/v1/audit", params=params, headers=admin_headers)
        assert 400 <= r.status_code < 500, (params, r.text)
        assert_error(r, r.status_code)


async def test_unknown_endpoint_and_method(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert_error(await client.get("/v1/nothing", headers=admin_headers), 404)
    assert_error(await client.post("/v1/settings", json={}, headers=admin_headers), 405)
