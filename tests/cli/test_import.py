"""`mailexec import-trusted-dir` on a classic trusted directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.cli.helpers import mx, mx_json


def _classic_dir(tmp_path: Path) -> Path:
    d = tmp_path / "trusted"
    d.mkdir()
    shutil.copy2("/bin/true", d / "mymail")
    os.chmod(d / "mymail", 0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2("/bin/false", elsewhere / "sort_mail")
    os.chmod(elsewhere / "sort_mail", 0o755)
    (d / "sort_mail").symlink_to(elsewhere / "sort_mail")
    script = d / "notify.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    shutil.copy2(os.path.realpath("/bin/sh"), d / "mysh")  # a shell under another name
    os.chmod(d / "mysh", 0o755)
    (d / "README").write_text("inspected 1999\n")
    (d / "subdir").mkdir()
    (d / "dangling").symlink_to(tmp_path / "nowhere")
    (d / "INSECURE-PROGRAM-DELIVERIES").touch()
    (d / "SUSPEND-PROGRAM-DELIVERIES").write_text("any content\n")
    return d


def test_import_classic_directory(env: dict[str, str], tmp_path: Path) -> None:
    d = _classic_dir(tmp_path)

    dry = mx(env, "import-trusted-dir", str(d), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = {e["name"]: e for e in json.loads(dry.stdout)["entries"]}
    assert report["mymail"]["action"] == "would register"
    assert mx_json(env, "programs", "list") == []
    assert mx_json(env, "settings", "show")["mode"] == "secure"

    r = mx(env, "import-trusted-dir", str(d))
    assert r.returncode == 65, r  # the interpreter copy was refused
    out = r.stdout
    for line in ("mymail", "sort_mail", "notify.sh", "mysh", "README", "subdir", "dangling"):
        assert line in out
    assert "symlink" in r.stderr and "weaken security" in r.stderr
    assert "3 program(s) registered" in out and "1 refused" in out

    r = mx(env, "import-trusted-dir", str(d), "--json")
    entries = {e["name"]: e for e in json.loads(r.stdout)["entries"]}
    assert entries["mymail"]["action"] == "registered"
    assert entries["sort_mail"]["action"] == "registered" and "symlink" in entries["sort_mail"]["detail"]
    assert entries["notify.sh"]["action"] == "registered"
    assert entries["mysh"]["action"] == "refused" and "--allow-interpreter" in entries["mysh"]["detail"]
    assert entries["README"]["action"] == "skipped" and "not executable" in entries["README"]["detail"]
    assert entries["subdir"]["action"] == "skipped"
    assert entries["dangling"]["action"] == "skipped"
    assert "insecure" in entries["INSECURE-PROGRAM-DELIVERIES"]["detail"]

    names = {p["name"]: p for p in mx_json(env, "programs", "list")}
    assert set(names) == {"mymail", "sort_mail", "notify.sh"}
    # the symlink's target bytes were registered under the link's name
    assert names["sort_mail"]["size"] == os.path.getsize("/bin/false")
    settings = mx_json(env, "settings", "show")
    assert settings["mode"] == "insecure" and settings["suspended"] is True
    assert mx_json(env, "status")["program_delivery"] == "suspended"

    r = mx(env, "import-trusted-dir", str(d), "--allow-interpreter", "--json")
    assert r.returncode == 0, r.stdout
    assert "mysh" in {p["name"] for p in mx_json(env, "programs", "list")}


def test_import_without_flag_files_leaves_settings(env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    shutil.copy2("/bin/true", d / "only")
    os.chmod(d / "only", 0o700)
    assert mx(env, "settings", "set", "suspended=true").returncode == 0
    r = mx(env, "import-trusted-dir", str(d))
    assert r.returncode == 0, r
    assert "left unchanged" in r.stdout
    assert mx_json(env, "settings", "show")["suspended"] is True
    assert mx(env, "import-trusted-dir", str(tmp_path / "missing")).returncode == 66
