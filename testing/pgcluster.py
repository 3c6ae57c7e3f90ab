"""A private, throwaway PostgreSQL cluster: what the chaos run restarts for real.

The machine's shared server (cluster ``15/main`` on 5432, used by every test) must never
be restarted, so the chaos run creates its own cluster with Debian's postgresql-common
(``pg_createcluster``, ``pg_ctlcluster``, ``pg_dropcluster``), points the services at it
and, for the "restart postgresql" fault, stops it (``-m fast``: every backend is
terminated with 57P01, new connections get 57P03 and then ECONNREFUSED) and starts it
again: a new postmaster, every client connection gone.

Guarantees: the cluster listens on 127.0.0.1 only (no Unix-socket-only or wildcard
listener), trusts local and loopback connections (``initdb --auth=trust``), is never
started at boot (``start.conf`` manual), and is dropped by :meth:`PrivateCluster.drop`.
Its name is ``mxchaos_<pid>_<hex>``; :func:`drop_leftovers` drops clusters with that
prefix whose creating process is gone (a run killed before its teardown), never one
whose creator still runs (another chaos run at the same time), never any other cluster.

Settings: ``CHAOS_PG_VERSION`` (default 15, the major version whose tools are installed).
Needs root (the tools switch to the ``postgres`` user themselves).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

PREFIX = "mxchaos_"
VERSION = os.environ.get("CHAOS_PG_VERSION", "15")
_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True,
                          timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clusters() -> list[tuple[str, str]]:
    out = _run("pg_lsclusters", "--no-header").stdout
    return [(f[0], f[1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 2]


def drop_leftovers() -> list[str]:
    """Drop ``mxchaos_<pid>_…`` clusters whose creating process no longer exists."""
    dropped = []
    for version, name in _clusters():
        m = re.fullmatch(rf"{PREFIX}(\d+)_[0-9a-f]+", name)
        if m is None or _alive(int(m.group(1))):
            continue
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True,
                       timeout=120)
        dropped.append(f"{version}/{name}")
    return dropped


class PrivateCluster:
    def __init__(self, port: int) -> None:
        if shutil.which("pg_createcluster") is None:
            raise RuntimeError("CHAOS_PG=real needs Debian's postgresql-common "
                               "(pg_createcluster); set CHAOS_PG=proxy to cut a TCP proxy "
                               "in front of the shared server instead")
        self.version = VERSION
        self.name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
        self.port = port
        self.created_s = 0.0
        self._created = False

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def conf_dir(self) -> Path:
        return Path(f"/etc/postgresql/{self.version}/{self.name}")

    @property
    def log_file(self) -> Path:
        return Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")

    def postmaster_pid(self) -> int | None:
        try:
            data = Path(f"/var/lib/postgresql/{self.version}/{self.name}/postmaster.pid")
            return int(data.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def create(self, settings: str = "") -> None:
        """Create and start the cluster; ``created_s`` is how long both took.
        ``settings``: postgresql.conf lines added to the defaults."""
        t = time.monotonic()
        self._created = True  # a half-created cluster is dropped too
        _run("pg_createcluster", "--quiet", "--start-conf=manual", "-p", str(self.port),
             self.version, self.name, "--", "--auth=trust")
        # Debian's postgresql.conf includes conf.d/; pg_createcluster -o would write the
        # address unquoted, which the server then refuses to parse.
        (self.conf_dir / "conf.d" / "chaos.conf").write_text(
            "listen_addresses = '127.0.0.1'\n" + (settings.rstrip("\n") + "\n" if settings else ""))
        self.start()
        self.created_s = time.monotonic() - t

    def start(self) -> None:
        _run(*_CTL, self.version, self.name, "start")  # pg_ctl waits until it accepts

    def stop(self) -> None:
        _run(*_CTL, self.version, self.name, "stop", "-m", "fast")

    def drop(self, keep_log_in: Path | None = None) -> None:
        if not self._created:
            return
        if keep_log_in is not None and self.log_file.exists():
            shutil.copy(self.log_file, keep_log_in / "postgresql.log")
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name],
                       capture_output=True, timeout=120)
        self._created = False
