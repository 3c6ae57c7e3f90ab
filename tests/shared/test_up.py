"""`mailexec up`: runs the services under one supervisor; Ctrl-C stops them all cleanly;
a service that dies is restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.conftest import ROOT


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_up_runs_restarts_and_stops_on_ctrl_c(services: Any) -> None:
    env = dict(services.env)
    policy = f"http://127.0.0.1:{env['MAILEXEC_POLICY_PORT']}"
    ingest = f"http://127.0.0.1:{env['MAILEXEC_INGEST_PORT']}"
    up = subprocess.Popen([sys.executable, "-m", "mailexec", "up", "policy", "ingest"], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait(lambda: _ready(policy) and _ready(ingest), 60), "services did not become ready"
        children = _children(up.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)  # a crashed service comes back
        assert _wait(lambda: children[0] not in _children(up.pid) and len(_children(up.pid)) == 2, 30)
        assert _wait(lambda: _ready(policy) and _ready(ingest), 60)
        children = _children(up.pid)
        up.send_signal(signal.SIGINT)
        up.wait(30)
        assert up.returncode == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}"), f"service {pid} outlived mailexec up"
        assert not _ready(policy) and not _ready(ingest)
        stderr = up.stderr.read().decode() if up.stderr else ""
        assert "restarting" in stderr
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stderr:
            up.stderr.close()
