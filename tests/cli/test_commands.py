"""Operator commands against real policy/ingest processes (no mocked HTTP)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.cli.helpers import mx, mx_json
from tests.conftest import free_port


def _true_copy(path: Path) -> Path:
    shutil.copy2("/bin/true", path)
    os.chmod(path, 0o755)
    return path


def test_programs_accounts_tokens_settings(env: dict[str, str], tmp_path: Path) -> None:
    prog = _true_copy(tmp_path / "mymail")
    r = mx(env, "programs", "add", "mymail", str(prog))
    assert r.returncode == 0, r.stderr
    assert "registered mymail" in r.stdout
    meta = mx_json(env, "programs", "show", "mymail")
    assert meta["size"] == prog.stat().st_size and len(meta["sha256"]) == 64
    assert [p["name"] for p in mx_json(env, "programs", "list")] == ["mymail"]
    listing = mx(env, "programs", "list")
    assert "mymail" in listing.stdout and "1 trusted program(s)" in listing.stdout

    # an interpreter is refused with the reason, unless told
    sh = tmp_path / "dash-copy"
    shutil.copy2(os.path.realpath("/bin/sh"), sh)
    r = mx(env, "programs", "add", "mysh", str(sh))
    assert r.returncode == 65, r
    assert "HTTP 422" in r.stderr and "interpreter" in r.stderr.lower()
    r = mx(env, "programs", "add", "mysh", str(sh), "--allow-interpreter")
    assert r.returncode == 0 and "command interpreter" in r.stderr
    assert mx(env, "programs", "remove", "mysh").returncode == 0
    r = mx(env, "programs", "show", "mysh")
    assert r.returncode == 66 and "HTTP 404" in r.stderr

    # accounts: set (with a warning for an unregistered program), show, list across pages
    r = mx(
        env,
        "accounts",
        "set",
        "Bob@Example.org",
        "--uid",
        "1001",
        "--gid",
        "1001",
        "--home",
        "/home/bob",
        "--shell",
        "/bin/sh",
        "--owner-name",
        "bob",
        "--program",
        "mymail",
        "--program",
        "sort_mail",
        "--no-mailbox",
    )
    assert r.returncode == 0, r.stderr
    assert "sort_mail" in r.stderr and "warning" in r.stderr
    acct = mx_json(env, "accounts", "show", "bob@example.org")
    assert acct["program_delivery"] == {"enabled": True, "programs": ["mymail", "sort_mail"]}
    assert acct["mailbox_delivery"] is False and acct["owner"]["uid"] == 1001
    for i in range(5):
        assert (
            mx(
                env,
                "accounts",
                "set",
                f"u{i}@example.org",
                "--uid",
                str(2000 + i),
                "--gid",
                "100",
                "--home",
                f"/home/u{i}",
                "--shell",
                "/bin/sh",
                "--owner-name",
                f"u{i}",
                "--disable",
            ).returncode
            == 0
        )
    addresses = [a["address"] for a in mx_json(env, "accounts", "list", "--limit", "2")]
    assert sorted(addresses) == sorted(["bob@example.org"] + [f"u{i}@example.org" for i in range(5)])
    table_out = mx(env, "accounts", "list", "--limit", "4").stdout
    assert "6 account(s)" in table_out

    # a user token may change its own program list, nothing else
    issued = mx_json(env, "tokens", "issue", "bob@example.org", "--label", "bob's laptop")
    user_token = issued["token"]
    r = mx(env, "accounts", "programs", "bob@example.org", "--set", "mymail", "--token", user_token)
    assert r.returncode == 0, r.stderr
    assert "program delivery enabled" in r.stdout and "1. mymail" in r.stdout
    r = mx(env, "accounts", "programs", "bob@example.org", "--disable", "--token", user_token)
    assert r.returncode == 0 and "disabled" in r.stdout
    assert mx_json(env, "accounts", "programs", "bob@example.org")["enabled"] is False
    r = mx(env, "accounts", "programs", "u1@example.org", "--token", user_token)
    assert r.returncode == 77 and "HTTP 403" in r.stderr
    r = mx(env, "programs", "list", "--token", user_token)  # to choose among them
    assert r.returncode == 0 and "mymail" in r.stdout, r.stderr
    r = mx(env, "programs", "remove", "mymail", "--token", user_token)
    assert r.returncode == 77 and "role" in r.stderr

    # settings: typed parsing of key=value
    r = mx(
        env,
        "settings",
        "set",
        "program_timeout_s=120",
        "dsn_include_output=no",
        "valid_shells=/bin/sh,/bin/bash",
        "tempfail_exit_codes=[71,75,69]",
        "safe_user=1500:1500",
        "postmaster=root@example.org",
    )
    assert r.returncode == 0, r.stderr
    s = mx_json(env, "settings", "show")
    assert s["program_timeout_s"] == 120 and s["dsn_include_output"] is False
    assert s["valid_shells"] == ["/bin/sh", "/bin/bash"] and s["tempfail_exit_codes"] == [71, 75, 69]
    assert s["safe_user"] == {"uid": 1500, "gid": 1500} and s["postmaster"] == "root@example.org"
    r = mx(env, "settings", "set", "program_timeout_s=-5")
    assert r.returncode == 65 and "HTTP 4" in r.stderr
    assert mx(env, "settings", "set", "nonsense").returncode == 64

    # suspend / resume / status (with queue depths from RabbitMQ)
    assert "suspended" in mx(env, "suspend").stdout
    st = mx_json(env, "status")
    assert st["program_delivery"] == "suspended"
    assert set(st["queues"]) >= {"deliveries", "deliveries.held", "deliveries.dead"}
    assert mx(env, "resume").returncode == 0
    st = mx_json(env, "status")
    assert st["program_delivery"] == "enabled" and st["mode"] == "secure"
    human = mx(env, "status").stdout
    assert "program delivery: enabled" in human and "deliveries.held" in human

    assert mx(env, "accounts", "remove", "u0@example.org").returncode == 0
    assert mx(env, "accounts", "show", "u0@example.org").returncode == 66


def test_errors_explain_the_status(env: dict[str, str]) -> None:
    r = mx(env, "programs", "list", "--token", "wrong")
    assert r.returncode == 77
    assert "HTTP 401" in r.stderr and "set MAILEXEC_ADMIN_TOKEN or --token" in r.stderr
    r = mx(env, "programs", "list", extra_env={"MAILEXEC_ADMIN_TOKEN": ""})
    assert r.returncode == 77
    r = mx(env, "status", extra_env={"MAILEXEC_POLICY_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.returncode == 69
    assert "cannot reach policy" in r.stderr and "mailexec serve policy" in r.stderr


def test_token_from_config_file(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'policy_url = "{env["MAILEXEC_POLICY_URL"]}"\ntoken = "{env["MAILEXEC_ADMIN_TOKEN"]}"\n')
    env = {k: v for k, v in env.items() if k not in ("MAILEXEC_ADMIN_TOKEN", "MAILEXEC_POLICY_URL")}
    r = mx(env, "programs", "list", extra_env={"MAILEXEC_CLI_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    cfg.write_text("token = [unclosed")
    r = mx(env, "programs", "list", extra_env={"MAILEXEC_CLI_CONFIG": str(cfg)})
    assert r.returncode == 78 and "cannot parse" in r.stderr
