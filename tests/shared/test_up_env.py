"""`mailexec up` (what `make run` starts) gives the executor the service token only.

The executor runs account owners' programs; the admin and mta tokens (and their
``_FILE`` forms) are not in its environment, as read from /proc/<pid>/environ of the
real child process. The other services still get what they need.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailexec.supervisor import service_env
from tests.conftest import ROOT

SECRETS = {
    "MAILEXEC_ADMIN_TOKEN": "admin-secret",
    "MAILEXEC_INGEST_TOKEN": "mta-secret",
    "MAILEXEC_ADMIN_TOKEN_FILE": "/run/secrets/admin",
    "MAILEXEC_INGEST_TOKEN_FILE": "/run/secrets/mta",
    "MAILEXEC_SERVICE_TOKEN": "service-secret",
}
CONSOLE_SECRET = {"MAILEXEC_CONSOLE_SECRET": "cookie-key",
                  "MAILEXEC_CONSOLE_SECRET_FILE": "/run/secrets/console"}
CONNECTIONS = {"MAILEXEC_DATABASE_URL": "postgresql+asyncpg://u:pw@db/mailexec",
               "MAILEXEC_AMQP_URL": "amqp://u:pw@mq/", "MAILEXEC_SMTP_URL": "smtp://relay"}


def test_env_builder_withholds_admin_and_mta_tokens_from_the_executor() -> None:
    env = service_env("executor", {**SECRETS, **CONSOLE_SECRET, "PATH": "/bin"})
    assert env == {"MAILEXEC_SERVICE_TOKEN": "service-secret", "PATH": "/bin"}
    for name in ("policy", "ingest", "notifier"):
        assert service_env(name, {**SECRETS, **CONSOLE_SECRET}) == SECRETS


def test_the_console_gets_its_cookie_key_and_no_token_database_or_broker() -> None:
    """It acts only with the signed-in person's token (issue 15)."""
    env = service_env("console", {**SECRETS, **CONSOLE_SECRET, **CONNECTIONS,
                                  "MAILEXEC_POLICY_URL": "http://policy:8026"})
    assert env == {**CONSOLE_SECRET, "MAILEXEC_POLICY_URL": "http://policy:8026"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_the_executor_process_gets_only_the_service_token(services: Any, tmp_path: Path
                                                         ) -> None:
    env = {**services.env, "MAILEXEC_ADMIN_TOKEN": "admin-secret",
           "MAILEXEC_INGEST_TOKEN": "mta-secret",
           "MAILEXEC_INGEST_TOKEN_FILE_UNRELATED": "kept",
           # never the shared cgroup root: a starting executor tidies executor-* there
           "MAILEXEC_SANDBOX_CGROUP_ROOT": str(tmp_path / "absent" / "cgroup")}
    up = subprocess.Popen([sys.executable, "-m", "mailexec", "up", "executor"], env=env,
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: dict[str, str] | None = None
        deadline = time.monotonic() + 30
        while seen is None and time.monotonic() < deadline:
            out = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True)
            for pid in (int(p) for p in out.stdout.split()):
                try:
                    if "executor" in _cmdline(pid):
                        seen = _environ(pid)
                except OSError:
                    continue
            time.sleep(0.05)
        assert seen is not None, "no executor child appeared"
        assert "MAILEXEC_ADMIN_TOKEN" not in seen and "MAILEXEC_INGEST_TOKEN" not in seen
        assert "admin-secret" not in seen.values() and "mta-secret" not in seen.values()
        assert seen["MAILEXEC_SERVICE_TOKEN"] == env["MAILEXEC_SERVICE_TOKEN"]
        assert seen["MAILEXEC_INGEST_TOKEN_FILE_UNRELATED"] == "kept"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
