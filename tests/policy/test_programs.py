"""Trusted programs: register, replace, read, content, delete; interpreters refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tests.policy.conftest import SAMPLE_ELF, SAMPLE_SCRIPT, assert_error, put_program

DASH = Path("/bin/dash").read_bytes()
LS = Path("/bin/ls").read_bytes()
INTERPRETER_PATHS = ["/bin/bash", "/usr/bin/perl", "/usr/bin/python3", "/usr/bin/gawk"]
INSTALLED = {p: Path(p).resolve().read_bytes() for p in INTERPRETER_PATHS if Path(p).exists()}


async def test_register_read_replace_delete(
    client: httpx.AsyncClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    r = await put_program(client, admin_headers, "mymail")
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["sha256"] == hashlib.sha256(SAMPLE_SCRIPT).hexdigest()
    assert meta["size"] == len(SAMPLE_SCRIPT)
    assert meta["interpreter"] is False  # a #! script is allowed and is not an interpreter
    assert meta["registered_by"] == "admin"
    assert meta["registered_at"] and meta["updated_at"]

    for headers in (admin_headers, service_headers):
        r = await client.get("/v1/programs/mymail", headers=headers)
        assert r.status_code == 200 and r.json() == meta
        r = await client.get("/v1/programs/mymail/content", headers=headers)
        assert r.status_code == 200
        assert r.content == SAMPLE_SCRIPT
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-content-sha256"] == meta["sha256"]

    r = await put_program(client, admin_headers, "mymail", SAMPLE_ELF)
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert replaced["sha256"] == hashlib.sha256(SAMPLE_ELF).hexdigest()
    assert replaced["registered_at"] == meta["registered_at"]
    assert replaced["updated_at"] >= meta["updated_at"]

    await put_program(client, admin_headers, "Other.filter+1")
    r = await client.get("/v1/programs", headers=service_headers)
    assert r.status_code == 200
    assert [p["name"] for p in r.json()["items"]] == ["Other.filter+1", "mymail"]
    assert r.json()["count"] == 2

    r = await client.delete("/v1/programs/mymail", headers=admin_headers)
    assert r.status_code == 204
    assert_error(await client.get("/v1/programs/mymail", headers=admin_headers), 404)
    assert_error(await client.get("/v1/programs/mymail/content", headers=admin_headers), 404)
    assert_error(await client.delete("/v1/programs/mymail", headers=admin_headers), 404)


async def test_names_are_case_sensitive(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await put_program(client, admin_headers, "Filter")).status_code == 201
    assert_error(await client.get("/v1/programs/filter", headers=admin_headers), 404)


async def test_dash_bytes_under_another_name_refused_then_allowed_and_audited(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    err = assert_error(await put_program(client, admin_headers, "hello", DASH), 422,
                       "interpreter_refused")
    assert "allow_interpreter=true" in err["message"]
    assert "dash" in err["message"]
    assert_error(await client.get("/v1/programs/hello", headers=admin_headers), 404)

    r = await put_program(client, admin_headers, "hello", DASH, allow_interpreter="true")
    assert r.status_code == 201, r.text
    assert r.json()["interpreter"] is True

    r = await client.get("/v1/audit", params={"target": "hello"}, headers=admin_headers)
    (entry,) = r.json()["items"]
    assert entry["new"]["allow_interpreter"] is True
    assert entry["new"]["interpreter"] is True
    assert "dash" in entry["new"]["interpreter_reason"]
    assert "content" not in entry["new"]


@pytest.mark.parametrize("name", ["sh", "bash", "Bash", "perl", "perl5.36", "python3", "python3.11",
                                  "ruby", "php8.2", "node", "lua5.4", "awk", "gawk", "env",
                                  "busybox", "zsh", "tcsh", "ksh93", "fish", "tclsh8.6"])
async def test_interpreter_names_refused(
    client: httpx.AsyncClient, admin_headers: dict[str, str], name: str
) -> None:
    assert_error(await put_program(client, admin_headers, name, SAMPLE_ELF), 422,
                 "interpreter_refused")


@pytest.mark.parametrize("path", INTERPRETER_PATHS)
async def test_installed_interpreters_refused_by_content(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str
) -> None:
    if path not in INSTALLED:
        pytest.skip(f"{path} not installed here")
    content = INSTALLED[path]
    assert_error(await put_program(client, admin_headers, "innocent", content), 422,
                 "interpreter_refused")


def test_shell_heuristic_without_hash_match() -> None:
    from services.policy.interpreters import by_content

    assert by_content(DASH, "0" * 64) is not None  # recognised even if built elsewhere
    assert by_content(LS, "0" * 64) is None
    assert by_content(SAMPLE_SCRIPT, "0" * 64) is None


async def test_ordinary_binary_accepted(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await put_program(client, admin_headers, "lister", LS)
    assert r.status_code == 201, r.text
    assert r.json()["interpreter"] is False


async def test_oversize_upload_refused(
    client: httpx.AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_program_bytes", 1000)
    err = assert_error(await put_program(client, admin_headers, "big", b"x" * 1001), 413)
    assert "1000" in err["message"]

    async def chunks():  # no Content-Length: the stream itself is cut off
        for _ in range(3):
            yield b"y" * 400

    r = await client.put("/v1/programs/big", content=chunks(), headers=admin_headers)
    assert_error(r, 413)
    assert_error(await client.get("/v1/programs/big", headers=admin_headers), 404)
    assert (await put_program(client, admin_headers, "big", b"#!x\n" + b"z" * 996)).status_code == 201


async def test_upload_format_refused(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    assert_error(await put_program(client, admin_headers, "empty", b""), 400, "empty_program")
    r = await client.put("/v1/programs/form", content=b"abc",
                         headers={**admin_headers, "Content-Type": "application/json"})
    assert_error(r, 415)
    r = await client.put("/v1/programs/x", content=b"abc", params={"allow_interpreter": "maybe"},
                         headers=admin_headers)
    assert_error(r, 422)
    assert (await client.get("/v1/programs", headers=admin_headers)).json()["count"] == 0
