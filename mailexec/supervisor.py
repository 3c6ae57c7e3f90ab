"""`mailexec up`: run every service on this machine under one supervisor.

Like Postfix's master(8), in small: each service is its own process (`mailexec serve X`),
restarted with a back-off if it dies; Ctrl-C (SIGINT) or SIGTERM stops them all cleanly.

What a service's exit status means (``shared.service``) decides whether it is restarted:
one that refused to start over something only an operator can fix (78 bad settings,
77 the executor not root, 64 a bad command line) is not started again, since it would
refuse again every 30 s; the others keep running, and `mailexec up` exits with that
status when none is left (or at Ctrl-C). Any other exit (a crash, a signal, 69 a database or broker not
reachable, 71 a port in use) is restarted with a back-off.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from shared.sysexits import EX_CONFIG, EX_NOPERM, EX_USAGE, describe

SERVICES = ("policy", "ingest", "executor", "notifier", "console")
# Secrets a service never uses and so never gets (issue 13). The executor runs account
# owners' programs: a flaw there must not hand out the admin or mta token; it talks to
# policy with the service token only. Their ``_FILE`` forms are withheld too.
# The console acts only with the signed-in person's token and keeps no data: it gets no
# token, no database and no broker.
# Only the console gets the key of its session cookies.
WITHHELD = {
    "executor": ("MAILEXEC_ADMIN_TOKEN", "MAILEXEC_INGEST_TOKEN", "MAILEXEC_CONSOLE_SECRET"),
    "policy": ("MAILEXEC_CONSOLE_SECRET",),
    "ingest": ("MAILEXEC_CONSOLE_SECRET",),
    "notifier": ("MAILEXEC_CONSOLE_SECRET",),
    "console": ("MAILEXEC_ADMIN_TOKEN", "MAILEXEC_INGEST_TOKEN", "MAILEXEC_SERVICE_TOKEN",
                "MAILEXEC_DATABASE_URL", "MAILEXEC_AMQP_URL", "MAILEXEC_SMTP_URL"),
}
# exits a restart can't cure: the operator must change something first
NOT_RESTARTED = frozenset({EX_USAGE, EX_NOPERM, EX_CONFIG})


def service_env(name: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment service ``name`` is started with: ours minus what it must not hold."""
    env = dict(os.environ if environ is None else environ)
    for var in WITHHELD.get(name, ()):
        env.pop(var, None)
        env.pop(f"{var}_FILE", None)
    return env


def available_services() -> list[str]:
    return [s for s in SERVICES if importlib.util.find_spec(f"services.{s}.main") is not None]


def _spawn(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mailexec", "serve", name],
                            env=service_env(name))


def run(services: list[str] | None = None) -> int:
    names = services or available_services()
    procs = {name: _spawn(name) for name in names}
    restarts = {name: 0.0 for name in names}
    stopping = False
    refused = 0  # the status of the first service that can't be restarted

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"mailexec up: running {', '.join(names)} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while not stopping and procs:
            time.sleep(0.2)
            for name, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None or stopping:
                    continue
                if rc in NOT_RESTARTED:
                    print(f"mailexec up: {name} refused to start (status {describe(rc)}); "
                          "not restarting it: fix what its message says, then start it again",
                          file=sys.stderr, flush=True)
                    del procs[name]
                    refused = refused or rc
                    continue
                delay = min(30.0, max(1.0, restarts[name] * 2))
                print(
                    f"mailexec up: {name} exited with status {describe(rc)}; restarting in {delay:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(delay)
                restarts[name] = delay
                procs[name] = _spawn(name)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    return refused
