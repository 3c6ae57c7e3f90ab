"""Account program entries whose name could never be a program are refused when written.

SPEC §2: any program name may be entered, registered or not, but an entry whose
basename breaks the program name rule (``^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$``, not a
flag-file name) is refused with 400 naming the entry; absolute paths stay valid input
(insecure mode runs them) when their basename is a possible name. Both ways of writing
a list are covered (the admin's PUT of the account, the user's PUT of its programs),
and a refused write changes nothing.
"""

from __future__ import annotations

import httpx
import pytest

from tests.policy.conftest import account_body, assert_error, bearer, make_account, user_token

NEVER_A_PROGRAM = [
    "bad name",
    "/usr/local/bin/",
    "..",
    "/opt/..",
    "-dash",
    ".hidden",
    "/usr/bin/.profile",
    "p" * 65,
    "/bin/" + "p" * 65,
    "café",
    "INSECURE-PROGRAM-DELIVERIES",
    "/etc/mailexec/SUSPEND-PROGRAM-DELIVERIES",
    "a;rm -rf ~",
    "$(id)",
    "mymail\t",
]
POSSIBLE = ["mymail", "my.mail+v2_x-1", "/usr/local/bin/mymail", "bin/mymail", "9lives",
            "p" * 64]


@pytest.mark.parametrize("entry", NEVER_A_PROGRAM)
async def test_admin_put_refuses_an_impossible_entry(
    client: httpx.AsyncClient, admin_headers: dict[str, str], entry: str
) -> None:
    r = await client.put("/v1/accounts/bob@example.org",
                         json=account_body(programs=["mymail", entry]), headers=admin_headers)
    err = assert_error(r, 400, "invalid_program_entry")
    assert repr(entry) in err["message"]
    r = await client.get("/v1/accounts/bob@example.org", headers=admin_headers)
    assert r.status_code == 404  # nothing was created


@pytest.mark.parametrize("entry", NEVER_A_PROGRAM)
async def test_user_put_refuses_an_impossible_entry(
    client: httpx.AsyncClient, admin_headers: dict[str, str], entry: str
) -> None:
    await make_account(client, admin_headers, "bob@example.org", programs=["keep"])
    token = await user_token(client, admin_headers, "bob@example.org")
    r = await client.put("/v1/accounts/bob@example.org/programs",
                         json={"enabled": True, "programs": [entry]}, headers=bearer(token))
    err = assert_error(r, 400, "invalid_program_entry")
    assert repr(entry) in err["message"]
    r = await client.get("/v1/accounts/bob@example.org", headers=admin_headers)
    assert r.json()["program_delivery"]["programs"] == ["keep"]


async def test_possible_names_and_paths_stay_valid_input(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.patch("/v1/settings", json={"mode": "insecure"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    acct = await make_account(client, admin_headers, "bob@example.org", programs=POSSIBLE)
    assert acct["program_delivery"]["programs"] == POSSIBLE
    r = await client.put("/v1/accounts/bob@example.org/programs",
                         json={"enabled": True, "programs": POSSIBLE}, headers=admin_headers)
    assert r.status_code == 200, r.text
