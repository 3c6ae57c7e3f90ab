"""``Sandbox``: runs one delivery program safely, through the persistent spawner.

What it does
    :meth:`Sandbox.start` (as root, before any privilege drop) checks the installed
    helper (``spawner.py``), makes the empty network namespace, opens this
    instance's cgroup directory (``cgroups.py``) and starts ``mailexec-spawner``.
    :meth:`Sandbox.run` sends one request per run (the exec fd, three pipes, the
    run's cgroup) and drives its I/O (``runio.py``) until the spawner reports
    its wait status. There is one run path; if the spawner can't be started the
    executor refuses to start (``SandboxUnavailable``), it never falls back to
    something weaker.

What it guarantees (per run)
    - Never uid/gid 0, never below ``min_uid``, never a forbidden uid (checked here,
      and enforced again by the spawner whatever this process asks); no
      supplementary groups, real=effective=saved ids, ``no_new_privs``, umask 077,
      own session, rlimits CPU/AS/NPROC/FSIZE/NOFILE and CORE=0, cwd = home else
      the private /tmp, environment exactly ``TZ`` and ``AGENT=mailexec``, only
      fds 0-2 (plus, for ``#!`` scripts, the script's fd).
    - A PID namespace and a mount namespace (private /tmp, /run, /var/run, /dev/shm,
      /proc) of its own while it runs: the spawner's slots (slot.h) are reused one run
      at a time, everything of a run is killed and unmounted before the next; the
      program is a child of the slot's pid 1 (killing that pid 1 kills the run); the
      network namespace the program's registry entry grants (``none``: empty, lo down).
    - Nothing of a run outlives it: the timeout, the end of the main process, a
      cancelled delivery, the spawner's or the executor's death (any signal) all end
      the PID namespace; a writable cgroup v2 subtree adds ``cgroup.kill`` and lets
      the next executor of the same instance kill what a dead one left.
    - Failures before exec come back as ``RunResult.launch_error`` (from the status
      pipe), never as program output; ``launch.temporary`` marks EAGAIN, ENOMEM,
      EMFILE, ENFILE, ETXTBSY (retry later, SPEC §3.7 4.3.0).

What it does not do
    Memory/pids cgroup limits, seccomp, a read-only root filesystem. Runs sharing a
    network namespace share its abstract Unix socket names.

Cost (CPU per run of a static /bin/true-like program, 3,000 runs, 16 in flight, 2 cores;
``bench/spawn_rate.py --helper``, three builds one after the other, three rounds)
    A spawner without namespaces or per-run mounts: 0.86 ms machine-wide (0.63 ms the
    spawner's tree). The first design, a new PID and mount namespace per run with three
    mounts: 1.08 ms (+0.21). Slots (slot.h), which keep the namespaces and the run's
    /tmp and /dev/shm while runs leave them empty: 0.91 ms (+0.05). Measured with the
    program as pid 1 instead: ~0.1 ms less in the first design, but a namespace init
    ignores its own SIGTERM, abort() and SIGPIPE (child_recipe.h).

Settings
    ``sandbox_network``, ``sandbox_cgroup_root``, ``sandbox_tmp_bytes``,
    ``executor_instance``, ``min_uid``, ``tz`` and the ``rlimit_*`` fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from services.executor.errors import IdentityRefused, LaunchFailed, SandboxUnavailable
from services.executor.sandbox import cgroups as cg
from services.executor.sandbox.namespaces import NETWORKS, create_empty_netns
from services.executor.sandbox.runio import RunIO, RunLimits, RunResult, read_status_pipe
from services.executor.sandbox.spawner import SpawnerClient, spawner_path, verify_helper
from shared.settings import Settings

log = logging.getLogger(__name__)

_REQUIRED_CAPS = {5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 21: "CAP_SYS_ADMIN"}


def _missing_capabilities() -> list[str]:
    """Required capabilities absent from this process's effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
                    return [name for bit, name in _REQUIRED_CAPS.items() if not eff >> bit & 1]
    except OSError:
        pass
    return []


class EgressHolder(Protocol):
    """What the sandbox needs of the egress namespace (``egress.EgressNamespace``)."""

    fd: int

    def close(self) -> None: ...


class Sandbox:
    """Runs delivery programs; one per executor process. Use :meth:`start`."""

    def __init__(
        self, *, spawner: SpawnerClient, tz: str, netns_fds: list[int],
        cgroups: cg.RunCgroups | None, min_uid: int, forbidden_uids: Sequence[int],
        egress: EgressHolder | None = None,
    ) -> None:
        self._egress = egress
        self._spawner: SpawnerClient | None = spawner
        self._tz = tz
        self._netns_fds = netns_fds
        self._cgroups = cgroups
        self.min_uid = min_uid
        self.forbidden_uids = frozenset(forbidden_uids)
        self._closed = False
        self.isolation: dict[str, object] = {
            "spawner": str(spawner.path),
            "privilege_drop": True,
            "no_new_privs": True,
            "pid_namespace": True,
            "mount_namespace": True,
            "network_namespace": bool(netns_fds),
            "egress_network": len(netns_fds) > 1,
            "cgroup_kill": cgroups is not None,
            "cgroup_dir": str(cgroups.dir) if cgroups else None,
        }

    @classmethod
    def start(
        cls, settings: Settings, *, egress: EgressHolder | None = None,
        forbidden_uids: Sequence[int] = (), helper: Path | None = None,
    ) -> Sandbox:
        """Everything the runs share; SandboxUnavailable (refuse to start) if not possible.

        ``egress``: the namespace of ``network="egress"`` runs (``egress.py``), owned by
        the sandbox from here on (closed with it, also when this start fails);
        without it such runs fail with a temporary LaunchFailed. ``forbidden_uids``:
        uids the spawner must never run programs as (the service uid, the owners of
        PostgreSQL and RabbitMQ), on top of uid 0 and those below ``min_uid``.
        """
        try:
            return cls._start(settings, egress, forbidden_uids, helper)
        except BaseException:
            if egress is not None:
                egress.close()
            raise

    @classmethod
    def _start(cls, settings: Settings, egress: EgressHolder | None,
               forbidden_uids: Sequence[int], helper: Path | None) -> Sandbox:
        if os.geteuid() != 0:
            raise SandboxUnavailable("the executor sandbox needs root (to start its spawner)")
        missing = _missing_capabilities()
        if missing:
            raise SandboxUnavailable(
                f"the executor lacks {', '.join(missing)}: its spawner needs CAP_SETUID and "
                "CAP_SETGID to drop to account uids, CAP_KILL to stop programs and "
                "CAP_SYS_ADMIN for each run's namespaces; grant them (Kubernetes: "
                "securityContext.capabilities.add)")
        if settings.min_uid < 1:
            raise SandboxUnavailable("MAILEXEC_MIN_UID must be at least 1 (never uid 0)")
        path = verify_helper(helper or spawner_path())
        netns_fds: list[int] = []
        cgroups = None
        try:
            if settings.sandbox_network:
                netns_fds.append(create_empty_netns())
                if egress is not None:
                    netns_fds.append(os.dup(egress.fd))
            elif egress is not None:
                raise SandboxUnavailable("an egress namespace needs sandbox_network on")
            cgroups = cg.RunCgroups.open(settings.sandbox_cgroup_root, settings.executor_instance)
            spawner = SpawnerClient(path, netns_fds, settings.min_uid, forbidden_uids)
        except BaseException:
            for fd in netns_fds:
                os.close(fd)
            if cgroups is not None:
                cgroups.close()
            raise
        return cls(spawner=spawner, tz=settings.tz, netns_fds=netns_fds, cgroups=cgroups,
                   min_uid=settings.min_uid, forbidden_uids=forbidden_uids, egress=egress)

    @property
    def spawner(self) -> SpawnerClient | None:
        return self._spawner

    def refuses(self, uid: int, gid: int) -> str | None:
        """Why the spawner will refuse to run as uid/gid, or None (the same rule as spawner.c)."""
        if uid == 0 or gid == 0:
            return "uid 0 and gid 0 are never used"
        if uid < self.min_uid:
            return f"uid {uid} is below MAILEXEC_MIN_UID ({self.min_uid})"
        if uid in self.forbidden_uids:
            return f"uid {uid} is reserved (a service's own uid)"
        return None

    async def run(
        self,
        exec_fd: int,
        argv0: str,
        uid: int,
        gid: int,
        home: str,
        stdin_prefix: bytes,
        stdin_body: bytes | memoryview,
        limits: RunLimits,
        *,
        network: str = "none",
    ) -> RunResult:
        """Run the program behind ``exec_fd`` once, as uid/gid, and report what happened.

        Raises IdentityRefused (never temporary) for a uid the spawner refuses, and
        LaunchFailed (temporary) when nothing could be started.
        """
        if self._closed or self._spawner is None:
            raise LaunchFailed("sandbox is closed")
        why = self.refuses(uid, gid)
        if why:
            raise IdentityRefused(f"refusing to run a program as uid {uid} gid {gid}: {why}")
        if network not in NETWORKS:
            raise LaunchFailed(f"unknown network {network!r} (known: {', '.join(NETWORKS)})")
        netns = NETWORKS[network]
        if netns and netns >= len(self._netns_fds):
            raise LaunchFailed(f"the program's network is {network!r} but this executor has "
                               "no egress namespace (MAILEXEC_SANDBOX_EGRESS, and why in "
                               "the executor's start-up log); retrying")
        spawner = self._spawner
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        opened: list[int] = []
        cgroup: tuple[Path, int] | None = None
        try:
            for _ in range(3):
                opened += os.pipe()
            stdin_r, stdin_w, output_r, output_w, status_r, status_w = opened
            cgroup = self._cgroups.take() if self._cgroups is not None else None
            rid, pid, pidfd, exited = await spawner.spawn(
                exec_fd, stdin_r, output_w, status_w, cgroup[1] if cgroup else None,
                uid, gid, home, argv0, self._tz, limits, netns)
        except BaseException as exc:
            for fd in opened:
                os.close(fd)
            if cgroup is not None and self._cgroups is not None:
                cg.kill(cgroup[0])  # whatever may have started in it must die first
                await self._cgroups.give_back(cgroup, True)
            if isinstance(exc, OSError):
                raise LaunchFailed(f"cannot start the program through the spawner: {exc}") \
                    from exc
            raise
        os.close(pidfd)  # the spawner kills and reaps; the pid stays ours until EXITED
        for fd in (stdin_r, output_w, status_w):  # the child's ends belong to it now
            os.close(fd)

        def kill_run() -> None:
            if not spawner.kill(rid):  # unreachable spawner: it is dying, and its runs with it
                log.warning("cannot ask the spawner to kill run pid %d", pid)

        def on_timeout() -> None:
            kill_run()
            if cgroup is not None:
                cg.kill(cgroup[0])

        chunks = [memoryview(part) for part in (stdin_prefix, stdin_body) if len(part)]
        io = RunIO(loop, stdin_w, output_r, chunks, limits.max_output_bytes, exited, kill_run)
        timed_out = False
        try:
            status, timed_out = await io.wait(limits.timeout_s, on_timeout)
        finally:
            report = read_status_pipe(status_r)
            if cgroup is not None and self._cgroups is not None:
                done = exited.done() and exited.exception() is None
                await self._cgroups.give_back(cgroup, timed_out or not done)
        return io.result(status, report, timed_out, time.monotonic() - started)

    async def open_as(self, path: str, uid: int, gid: int) -> int:
        """``path`` opened read-only with uid/gid's rights by the spawner (insecure mode).

        OSError when that user can't open it, errno ENOEXEC when it is not a regular
        file; IdentityRefused for a uid programs never run as.
        """
        if self._closed or self._spawner is None:
            raise LaunchFailed("sandbox is closed")
        why = self.refuses(uid, gid)
        if why:
            raise IdentityRefused(f"refusing to open a program as uid {uid} gid {gid}: {why}")
        return await self._spawner.open_as(path, uid, gid)

    def close(self) -> None:
        """Kill every run in flight, stop the spawner, release the cgroups and namespaces."""
        if self._closed:
            return
        self._closed = True
        if self._spawner is not None:
            self._spawner.close()
        if self._cgroups is not None:
            self._cgroups.close()
        for fd in self._netns_fds:
            os.close(fd)
        self._netns_fds = []
        if self._egress is not None:
            self._egress.close()
            self._egress = None
