"""End to end: every failure path of the guide, with the recorded state and the event."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.executor.helpers import EventTap, Homes, Pipeline, message


async def deliver(
    pipe: Pipeline, homes: Homes, programs: list[str], *, body: bytes | None = None,
    shell: str = "/bin/sh", enabled: bool = True, notify: str | None = None,
) -> tuple[str, str, Path, dict]:
    uid, gid, home = homes.make()
    address = f"user{uid}@example.org"
    await pipe.account(address, uid, gid, home, programs, shell=shell, enabled=enabled)
    mid = await pipe.submit(address, body or message(), notify=notify)
    rcpt = await pipe.wait_state(mid)
    return mid, address, home, rcpt


def ran(home: Path) -> list[str]:
    log = home / "order.log"
    return log.read_text().split() if log.exists() else []


async def test_unknown_account_bounces_511(pipe: Pipeline, tap: EventTap) -> None:
    mid = await pipe.submit("nobody-here@example.org", message())
    rcpt = await pipe.wait_state(mid)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.1.1")
    ev = await tap.event(mid, "bounce")
    r = ev["recipients"][0]
    assert (r["address"], r["action"], r["status"]) == ("nobody-here@example.org", "failed", "5.1.1")
    assert ev["envelope"]["sender"] == "alice@example.net"
    assert ev["envelope"]["notify"] == ["FAILURE", "DELAY"]


async def test_not_configured_bounces_530(pipe: Pipeline, homes: Homes, tap: EventTap) -> None:
    mid, _, home, rcpt = await deliver(pipe, homes, ["probe"], enabled=False)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert "not configured" in rcpt["diagnostic"]
    assert ran(home) == []
    await tap.event(mid, "bounce")
    assert not tap.matching(mid, "admin_notice")


async def test_bad_shell_fails_with_admin_notice(pipe: Pipeline, homes: Homes, tap: EventTap) -> None:
    mid, _, home, rcpt = await deliver(pipe, homes, ["probe"], shell="/usr/sbin/nologin")
    assert rcpt["state"] == "bounced" and rcpt["status"].startswith("5.")
    assert ran(home) == []
    await tap.event(mid, "bounce")
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "bad_shell"


async def test_root_owner_without_safe_user_fails(pipe: Pipeline, homes: Homes, tap: EventTap) -> None:
    _, _, home = homes.make(0, 0)
    await pipe.account("rootish@example.org", 0, 0, home, ["probe"])
    mid = await pipe.submit("rootish@example.org", message())
    rcpt = await pipe.wait_state(mid)
    assert rcpt["state"] == "bounced"
    assert ran(home) == []
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "root_without_safe_user"


async def test_root_owner_with_safe_user_runs_as_safe_user(pipe: Pipeline, homes: Homes) -> None:
    safe_uid, safe_gid, home = homes.make()
    await pipe.settings(safe_user={"uid": safe_uid, "gid": safe_gid})
    try:
        await pipe.account("root2@example.org", 0, 0, home, ["probe"])
        mid = await pipe.submit("root2@example.org", message())
        rcpt = await pipe.wait_state(mid)
        assert rcpt["state"] == "delivered", rcpt
        assert (home / "probe.id").read_text().split() == [str(safe_uid), str(safe_gid)] * 2
    finally:
        await pipe.settings(safe_user=None)


async def test_unregistered_program_bounces_with_admin_notice(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    mid, _, home, rcpt = await deliver(pipe, homes, ["probe", "no-such-program"])
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert "no-such-program" in rcpt["diagnostic"]
    assert ran(home) == []  # nothing runs unless the whole chain resolves
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "unresolved_program"


async def test_output_fails_and_leading_status_code_is_used(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    mid, _, home, rcpt = await deliver(pipe, homes, ["say", "probe"])
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.7.1")
    assert "5.7.1 go away" in rcpt["diagnostic"] and "second line" in rcpt["diagnostic"]
    assert ran(home) == ["say"]  # the chain stops at the failure
    assert rcpt["programs"][0]["output_excerpt"].startswith("5.7.1 go away")
    bounce = await tap.event(mid, "bounce")
    b = bounce["recipients"][0]
    assert (b["program"], b["exit_status"], b["status"]) == ("say", 0, "5.7.1")
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "program_failed"
    assert "second line" in notice["recipients"][0]["output_excerpt"]


async def test_stderr_output_fails_530(pipe: Pipeline, homes: Homes) -> None:
    _, _, _, rcpt = await deliver(pipe, homes, ["chatty"])
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert "hello" in rcpt["diagnostic"]


@pytest.mark.parametrize(("program", "status"), [("exit1", "5.3.0"), ("exit65", "5.6.0"),
                                                  ("exit67", "5.1.1")])
async def test_nonzero_exit_maps_sysexits(
    pipe: Pipeline, homes: Homes, tap: EventTap, program: str, status: str
) -> None:
    mid, _, _, rcpt = await deliver(pipe, homes, [program])
    assert (rcpt["state"], rcpt["status"]) == ("bounced", status)
    assert rcpt["programs"][0]["exit_status"] == int(program[4:])
    ev = await tap.event(mid, "bounce")
    assert ev["recipients"][0]["exit_status"] == int(program[4:])


async def test_signal_fails(pipe: Pipeline, homes: Homes, tap: EventTap) -> None:
    mid, _, _, rcpt = await deliver(pipe, homes, ["sig"])
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert rcpt["programs"][0]["signal"] == 15
    assert "signal 15" in rcpt["diagnostic"]
    ev = await tap.event(mid, "bounce")
    assert ev["recipients"][0]["signal"] == 15


async def test_timeout_kills_and_fails(pipe: Pipeline, homes: Homes, tap: EventTap) -> None:
    await pipe.settings(program_timeout_s=1)
    try:
        mid, _, _, rcpt = await deliver(pipe, homes, ["sleeper"])
    finally:
        await pipe.settings(program_timeout_s=60)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert rcpt["programs"][0]["timed_out"] is True
    assert "timed out" in rcpt["diagnostic"]
    ev = await tap.event(mid, "bounce")
    assert ev["recipients"][0]["timed_out"] is True


async def test_tempfail_defers_then_resumes_at_the_failed_program(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    uid, gid, home = homes.make()
    address = f"flaky{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe", "flaky", "probe3"])
    mid = await pipe.submit(address, message(), notify="SUCCESS,FAILURE")
    rcpt = await pipe.wait_state(mid, ("deferred", "delivered"))
    if rcpt["state"] == "deferred":
        assert rcpt["status"] == "4.3.0"
    rcpt = await pipe.wait_state(mid, ("delivered", "bounced"), timeout=20)
    assert rcpt["state"] == "delivered", rcpt
    assert rcpt["attempts"] == 2
    assert ran(home) == ["probe", "flaky", "flaky", "probe3"]  # probe did not run again
    runs = [(p["program"], p["attempt"], p["exit_status"]) for p in rcpt["programs"]]
    assert runs == [("probe", 0, 0), ("flaky", 0, 75), ("flaky", 1, 0), ("probe3", 1, 0)]
    await tap.event(mid, "delivered")
    assert not tap.matching(mid, "bounce")


async def test_mail_loop_bounces_546_without_running(pipe: Pipeline, homes: Homes) -> None:
    uid, gid, home = homes.make()
    address = f"loop{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe"])
    body = message(extra_headers=f"Delivered-To: {address.upper()}\n")
    mid = await pipe.submit(address, body)
    rcpt = await pipe.wait_state(mid)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.4.6")
    assert ran(home) == []


async def test_large_message_exact_stdin_crlf_and_early_exit(pipe: Pipeline, homes: Homes) -> None:
    body = message(body="x" * 200 + "\n", crlf=True) + b"y" * (1 << 20) + b"\r\n"
    uid, gid, home = homes.make()
    address = f"big{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["early", "probe"])
    mid = await pipe.submit(address, body)
    rcpt = await pipe.wait_state(mid)
    assert rcpt["state"] == "delivered", rcpt
    prefix = f"Return-Path: <alice@example.net>\r\nDelivered-To: {address}\r\n".encode()
    assert (home / "probe.stdin").read_bytes() == prefix + body


async def test_dsn_include_output_false_keeps_output_for_postmaster(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    await pipe.settings(dsn_include_output=False)
    try:
        mid, _, _, rcpt = await deliver(pipe, homes, ["chatty"])
    finally:
        await pipe.settings(dsn_include_output=True)
    assert "hello" not in rcpt["diagnostic"]
    bounce = await tap.event(mid, "bounce")
    assert "hello" not in bounce["recipients"][0]["diagnostic"]
    assert bounce["recipients"][0]["output_excerpt"] == ""
    notice = await tap.event(mid, "admin_notice")
    assert "hello" in notice["recipients"][0]["output_excerpt"]


async def test_suspended_holds_then_resume_runs_promptly(pipe: Pipeline, homes: Homes) -> None:
    uid, gid, home = homes.make()
    address = f"held{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe"])
    await pipe.settings(suspended=True)
    try:
        mid = await pipe.submit(address, message())
        rcpt = await pipe.wait_state(mid, ("suspended",))
        assert rcpt["attempts"] == 0
        assert ran(home) == []
    finally:
        await pipe.settings(suspended=False)
    rcpt = await pipe.wait_state(mid, timeout=5)
    assert rcpt["state"] == "delivered"
    assert ran(home) == ["probe"]


async def test_suspended_delay_warning_then_expiry_447(
    pipe: Pipeline, homes: Homes, tap: EventTap
) -> None:
    uid, gid, home = homes.make()
    address = f"expire{uid}@example.org"
    await pipe.account(address, uid, gid, home, ["probe"])
    await pipe.settings(suspended=True, delay_warning_after_s=1, max_queue_lifetime_s=4)
    try:
        mid = await pipe.submit(address, message())
        delayed = await tap.event(mid, "delayed", timeout=10)
        r = delayed["recipients"][0]
        assert r["action"] == "delayed" and r["status"].startswith("4.")
        assert r["will_retry_until"] is not None
        rcpt = await pipe.wait_state(mid, ("bounced",), timeout=15)
    finally:
        await pipe.settings(suspended=False, delay_warning_after_s=14400, max_queue_lifetime_s=432000)
    assert rcpt["status"] == "4.4.7"
    bounce = await tap.event(mid, "bounce")
    assert bounce["recipients"][0]["status"] == "4.4.7"
    assert len(tap.matching(mid, "delayed")) == 1
    assert ran(home) == []


async def test_insecure_mode_absolute_paths_and_symlinks(
    pipe: Pipeline, homes: Homes, tap: EventTap, tprog: bytes
) -> None:
    bindir = homes.base / "bin"
    bindir.mkdir(mode=0o755, exist_ok=True)
    exe = bindir / "probe"
    exe.write_bytes(tprog)
    os.chmod(exe, 0o755)
    link = bindir / "probe-link"
    if not link.exists():
        link.symlink_to(exe)
    await pipe.settings(mode="insecure")
    try:
        # no path: fails
        mid, _, home, rcpt = await deliver(pipe, homes, ["probe"])
        assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
        assert ran(home) == []
        assert (await tap.event(mid, "admin_notice"))["notice"]["reason"] == "unresolved_program"
        # bad path: fails
        _, _, home, rcpt = await deliver(pipe, homes, [str(bindir / "missing")])
        assert rcpt["state"] == "bounced" and ran(home) == []
        # absolute path and a symlink to it: run
        _, _, home, rcpt = await deliver(pipe, homes, [str(exe), str(link)])
        assert rcpt["state"] == "delivered", rcpt
        assert ran(home) == ["probe", "probe-link"]
    finally:
        await pipe.settings(mode="secure")


async def test_disabled_secure_mode_without_programs_bounces_with_notice(
    pipe: Pipeline, homes: Homes, tap: EventTap, tprog: bytes
) -> None:
    names = await pipe.programs()
    for name in names:
        await pipe.unregister(name)
    try:
        mid, _, home, rcpt = await deliver(pipe, homes, ["probe"])
    finally:
        for name in names:
            await pipe.register(name, tprog)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0")
    assert ran(home) == []
    notice = await tap.event(mid, "admin_notice")
    assert notice["notice"]["reason"] == "disabled"


