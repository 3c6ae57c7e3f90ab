"""`mailexec programs set/show`: an admin grants a program network and describes it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.cli.helpers import mx, mx_json


def test_set_and_show_network_and_description(env: dict[str, str], tmp_path: Path) -> None:
    prog = tmp_path / "fetcher"
    shutil.copy2("/bin/true", prog)
    os.chmod(prog, 0o755)
    assert mx(env, "programs", "add", "fetcher", str(prog)).returncode == 0

    shown = mx(env, "programs", "show", "fetcher")
    assert shown.returncode == 0, shown.stderr
    assert "network" in shown.stdout and "none" in shown.stdout
    assert "(none)" in shown.stdout  # no description yet, said so

    r = mx(env, "programs", "set", "fetcher", "--network", "egress",
           "--description", "posts each message to the ticket system")
    assert r.returncode == 0, r.stderr
    assert "egress" in r.stdout and "NET_ADMIN" in r.stderr
    shown = mx(env, "programs", "show", "fetcher")
    assert "egress" in shown.stdout
    assert "posts each message to the ticket system" in shown.stdout
    meta = mx_json(env, "programs", "show", "fetcher")
    assert (meta["network"], meta["description"]) == (
        "egress", "posts each message to the ticket system")
    assert "egress" in mx(env, "programs", "list").stdout

    # replacing the bytes keeps both
    assert mx(env, "programs", "add", "fetcher", str(prog)).returncode == 0
    meta = mx_json(env, "programs", "show", "fetcher")
    assert meta["network"] == "egress" and meta["description"]

    meta = mx_json(env, "programs", "set", "fetcher", "--network", "none", "--no-description")
    assert (meta["network"], meta["description"]) == ("none", None)
    assert "(none)" in mx(env, "programs", "show", "fetcher").stdout


def test_set_refuses_bad_input_without_asking_policy(env: dict[str, str]) -> None:
    r = mx(env, "programs", "set", "fetcher", "--network", "open")
    assert r.returncode == 2 and "open" in (r.stderr + r.stdout)
    r = mx(env, "programs", "set", "fetcher")
    assert r.returncode == 64 and "nothing to change" in r.stderr
    r = mx(env, "programs", "set", "fetcher", "--description", "x", "--no-description")
    assert r.returncode == 64
    r = mx(env, "programs", "set", "nosuch", "--network", "egress")
    assert r.returncode == 66 and "HTTP 404" in r.stderr


def test_a_user_lists_and_reads_programs_but_cannot_set_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    prog = tmp_path / "mymail"
    shutil.copy2("/bin/true", prog)
    os.chmod(prog, 0o755)
    assert mx(env, "programs", "add", "mymail", str(prog)).returncode == 0
    assert mx(env, "programs", "set", "mymail", "--description", "files by subject").returncode == 0
    r = mx(env, "accounts", "set", "bob@example.org", "--uid", "1000", "--gid", "1000",
           "--home", "/tmp", "--shell", "/bin/sh", "--owner-name", "bob")
    assert r.returncode == 0, r.stderr
    user_token = mx_json(env, "tokens", "issue", "bob@example.org")["token"]

    listed = mx_json(env, "programs", "list", "--token", user_token)
    assert [(p["name"], p["description"]) for p in listed] == [("mymail", "files by subject")]
    assert mx_json(env, "programs", "show", "mymail", "--token", user_token)["network"] == "none"
    r = mx(env, "programs", "set", "mymail", "--network", "egress", "--token", user_token)
    assert r.returncode == 77 and "HTTP 403" in r.stderr
    assert mx_json(env, "programs", "show", "mymail")["network"] == "none"
