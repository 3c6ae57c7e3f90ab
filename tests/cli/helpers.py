"""Run the real `mailexec` console script against real service processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def mx(
    env: dict[str, str],
    *args: str,
    input: bytes | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`mailexec ARGS` in-process through typer's CliRunner (fast), or as a real process."""
    e = dict(env)
    e.setdefault("MAILEXEC_INGEST_URL", f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}")
    e["MAILEXEC_CLI_CONFIG"] = e.get("MAILEXEC_CLI_CONFIG", os.devnull)
    e["COLUMNS"] = "200"
    if extra_env:
        e.update(extra_env)
    if not subprocess_:
        return _in_process(e, list(args), input)
    proc = subprocess.run(
        [sys.executable, "-m", "mailexec", *args],
        env=e,
        cwd=ROOT,
        input=input,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def mx_json(env: dict[str, str], *args: str, **kw: Any) -> Any:
    r = mx(env, *args, "--json", **kw)
    assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def _in_process(
    env: dict[str, str], args: list[str], input: bytes | None
) -> subprocess.CompletedProcess[str]:
    from typer.testing import CliRunner

    from mailexec.cli import app
    from shared.settings import get_settings

    # CliRunner sets these for the call only; unset ones must be removed, not left over
    overrides: dict[str, str | None] = {
        k: v for k, v in env.items() if k.startswith(("MAILEXEC_", "COLUMNS"))
    }
    for k in os.environ:
        if k.startswith("MAILEXEC_") and k not in env:
            overrides[k] = None
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, args, input=input, env=overrides, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)
