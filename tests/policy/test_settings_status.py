"""Settings (defaults, PATCH, validation) and /v1/status transitions."""

from __future__ import annotations

import httpx
import pytest

from tests.policy.conftest import assert_error, put_program

DEFAULTS = {
    "mode": "secure",
    "suspended": False,
    "safe_user": None,
    "valid_shells": ["/bin/sh", "/bin/csh", "/bin/ksh", "/usr/bin/sh", "/usr/bin/csh", "/usr/bin/ksh"],
    "program_timeout_s": 60,
    "max_output_bytes": 65536,
    "tempfail_exit_codes": [71, 75],
    "dsn_include_output": True,
    "delay_warning_after_s": 14400,
    "max_queue_lifetime_s": 432000,
    "postmaster": None,
    "record_retention_days": 30,
}


async def test_defaults(
    client: httpx.AsyncClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    for headers in (admin_headers, service_headers):
        r = await client.get("/v1/settings", headers=headers)
        assert r.status_code == 200
        assert r.json() == DEFAULTS


async def test_patch_every_field(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    patch = {
        "mode": "insecure",
        "suspended": True,
        "safe_user": {"uid": 65534, "gid": 65534},
        "valid_shells": ["/bin/bash"],
        "program_timeout_s": 30,
        "max_output_bytes": 1024,
        "tempfail_exit_codes": [75],
        "dsn_include_output": False,
        "delay_warning_after_s": 60,
        "max_queue_lifetime_s": 120,
        "postmaster": "Postmaster@Example.org",
        "record_retention_days": 90,
    }
    r = await client.patch("/v1/settings", json=patch, headers=admin_headers)
    assert r.status_code == 200, r.text
    expected = {**patch, "postmaster": "postmaster@example.org"}
    assert r.json() == expected
    assert (await client.get("/v1/settings", headers=admin_headers)).json() == expected

    # null resets the nullable fields; other fields keep their values
    r = await client.patch("/v1/settings", json={"safe_user": None, "postmaster": None},
                           headers=admin_headers)
    assert r.json() == {**expected, "safe_user": None, "postmaster": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"mode": "paranoid"}, "mode"),
        ({"mode": None}, "mode"),
        ({"suspended": "yes"}, "suspended"),
        ({"suspended": 1}, "suspended"),
        ({"program_timeout_s": "60"}, "program_timeout_s"),
        ({"program_timeout_s": 1.5}, "program_timeout_s"),
        ({"program_timeout_s": 0}, "program_timeout_s"),
        ({"max_output_bytes": -1}, "max_output_bytes"),
        ({"safe_user": {"uid": 0, "gid": 10}}, "safe_user.uid"),
        ({"safe_user": {"uid": 10, "gid": -1}}, "safe_user.gid"),
        ({"safe_user": {"uid": 10}}, "safe_user.gid"),
        ({"safe_user": {"uid": 10, "gid": 10, "name": "x"}}, "safe_user.name"),
        ({"valid_shells": ["bin/sh"]}, "valid_shells"),
        ({"valid_shells": "/bin/sh"}, "valid_shells"),
        ({"tempfail_exit_codes": [0]}, "tempfail_exit_codes"),
        ({"tempfail_exit_codes": [256]}, "tempfail_exit_codes"),
        ({"tempfail_exit_codes": ["75"]}, "tempfail_exit_codes"),
        ({"dsn_include_output": "false"}, "dsn_include_output"),
        ({"max_queue_lifetime_s": 100}, "max_queue_lifetime_s"),
        ({"delay_warning_after_s": 500000}, "delay_warning_after_s"),
        ({"postmaster": "not an address"}, "postmaster"),
        ({"postmaster": "a@b\r\nBcc: x@y"}, "postmaster"),
        ({"record_retention_days": 0}, "record_retention_days"),
        ({"record_retention_days": "30"}, "record_retention_days"),
    ],
)
async def test_bad_settings_refused_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: dict, field: str
) -> None:
    err = assert_error(await client.patch("/v1/settings", json=body, headers=admin_headers), 422)
    assert field in err["message"], err
    assert (await client.get("/v1/settings", headers=admin_headers)).json() == DEFAULTS
    assert (await client.get("/v1/audit", headers=admin_headers)).json()["items"] == []


async def test_bad_json_bodies(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    for content in (b"{not json", b"[1,2]", b'"text"', b""):
        r = await client.patch("/v1/settings", content=content,
                               headers={**admin_headers, "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (content, r.text)
        assert_error(r, r.status_code)
    assert (await client.get("/v1/settings", headers=admin_headers)).json() == DEFAULTS


async def test_empty_patch_changes_nothing(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.patch("/v1/settings", json={}, headers=admin_headers)
    assert r.status_code == 200 and r.json() == DEFAULTS
    r = await client.patch("/v1/settings", json={"mode": "secure"}, headers=admin_headers)
    assert r.status_code == 200
    assert (await client.get("/v1/audit", headers=admin_headers)).json()["items"] == []


async def status(client: httpx.AsyncClient, headers: dict[str, str]) -> dict:
    r = await client.get("/v1/status", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_status_transitions(
    client: httpx.AsyncClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    s = await status(client, service_headers)
    assert s == {"program_delivery": "disabled", "mode": "secure", "suspended": False,
                 "programs": 0, "accounts": 0}

    # enabled by registering a trusted program ...
    assert (await put_program(client, admin_headers, "mymail")).status_code == 201
    s = await status(client, admin_headers)
    assert (s["program_delivery"], s["programs"]) == ("enabled", 1)

    # ... suspended wins over enabled ...
    await client.patch("/v1/settings", json={"suspended": True}, headers=admin_headers)
    assert (await status(client, admin_headers))["program_delivery"] == "suspended"
    await client.patch("/v1/settings", json={"suspended": False}, headers=admin_headers)
    assert (await status(client, admin_headers))["program_delivery"] == "enabled"

    # ... disabled again when the last program goes ...
    assert (await client.delete("/v1/programs/mymail", headers=admin_headers)).status_code == 204
    assert (await status(client, admin_headers))["program_delivery"] == "disabled"

    # ... enabled by insecure mode without any program ...
    await client.patch("/v1/settings", json={"mode": "insecure"}, headers=admin_headers)
    s = await status(client, admin_headers)
    assert (s["program_delivery"], s["mode"]) == ("enabled", "insecure")

    # ... and suspended wins over that too.
    await client.patch("/v1/settings", json={"suspended": True}, headers=admin_headers)
    s = await status(client, admin_headers)
    assert (s["program_delivery"], s["suspended"]) == ("suspended", True)
