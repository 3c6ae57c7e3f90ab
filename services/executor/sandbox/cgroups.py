"""Per-run cgroups (v2), where a writable subtree exists: placement, kill, leftovers.

What it does
    Finds the cgroup v2 directory to work under: ``sandbox_cgroup_root`` when set,
    else this process's own cgroup (``/proc/self/cgroup`` line ``0::PATH``, under the
    cgroup2 mount found in ``/proc/self/mountinfo``) plus ``mailexec``. Under it, one
    directory per executor *instance* (``executor_instance``, the host name by
    default), in it one directory per executor process, locked with ``flock`` while
    that executor lives, and in that one child cgroup per run, born there (clone3
    ``CLONE_INTO_CGROUP``) and pooled for reuse.

What it guarantees
    - Leftovers of a dead executor are killed (``cgroup.kill``) when the next
      executor of the *same* instance starts; another instance's runs, and those of
      any live executor, are never touched: each executor holds an ``flock`` on its
      own directory, which the kernel releases however it dies
      (test_containment: test_restart_kills_only_its_own_instances_leftovers).
    - A timed-out run's cgroup is ``cgroup.kill``\\ ed on top of its slot's pid 1
      (and with it the PID namespace) being killed.

What it does not
    Memory or pids limits (no controllers are enabled; this host's v1 ones are left
    alone). Without a writable v2 subtree nothing here is used: the PID namespace
    alone kills a run's tree, and a dead executor's runs die with its spawner
    (PDEATHSIG), so nothing is left for a successor to find.

Trusts
    The cgroup filesystem; root (this process, before any privilege drop) to create
    the instance directory.

Settings
    ``sandbox_cgroup_root``, ``executor_instance``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from services.executor.errors import LaunchFailed

log = logging.getLogger(__name__)

POOL_MAX = 1024  # empty run cgroups kept for reuse
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def discover_v2_dir() -> Path | None:
    """This process's own cgroup v2 directory, or None when there is no cgroup2 mount."""
    try:
        own = next((line[3:].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::")), None)
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    if own is None:
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split()
        mount_root, mount_point = fields[3], fields[4]
        if own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
            relative = own[len(mount_root.rstrip("/")):].lstrip("/")
            return Path(mount_point) / relative
    return None


def instance_dir_name(instance: str) -> str:
    return "instance-" + (_SAFE_NAME.sub("_", instance)[:64] or "default")


def populated(cgroup: Path, dir_fd: int | None = None) -> bool:
    """Whether a process is still in the cgroup or below it."""
    try:
        if dir_fd is None:
            fd = os.open(cgroup / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        return b"populated 1" in os.read(fd, 4096)
    finally:
        os.close(fd)


def kill(cgroup: Path) -> None:
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except OSError:
        pass


class RunCgroups:
    """The executor instance's cgroup directory, its lock, and the pool of run cgroups."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.dir = directory
        self._lock_fd = lock_fd  # flock held for this executor's lifetime
        self._counter = 0
        self._pool: list[tuple[Path, int]] = []
        self.closed = False

    @classmethod
    def open(cls, root_setting: str, instance: str) -> RunCgroups | None:
        """This executor's locked directory; first kill what dead executors of the
        same instance left. None when no writable cgroup v2 subtree with
        ``cgroup.kill`` is here.

        Layout: ``<root>/instance-<name>/executor-<pid>-<random>/run-<n>``. Each executor
        holds an ``flock`` on its ``executor-*`` directory for its lifetime (released by
        the kernel however it dies); an ``executor-*`` directory whose lock can be taken
        belongs to a dead executor. Live executors, of this instance or another, are
        never touched.
        """
        if root_setting:
            root = Path(root_setting)
        else:
            own = discover_v2_dir()
            if own is None:
                log.info("no cgroup v2 hierarchy; runs are killed through their PID namespace")
                return None
            root = own / "mailexec"
        instance_dir = root / instance_dir_name(instance)
        mine = instance_dir / f"executor-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            instance_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            if not (instance_dir / "cgroup.kill").exists():
                log.info("cgroup v2 at %s has no cgroup.kill; runs are killed through their "
                         "PID namespace", root)
                return None
            mine.mkdir(mode=0o755)
            lock_fd = os.open(mine, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("cgroup v2 tree %s not usable (%s); runs are killed through their PID "
                     "namespace", root, exc)
            return None
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else has it
        killed = reap_dead_executors(instance_dir, keep=mine)
        if killed:
            log.warning("killed the runs dead executors of instance %r left behind (%d cgroups "
                        "under %s)", instance, killed, instance_dir)
        return cls(mine, lock_fd)

    def take(self) -> tuple[Path, int]:
        """An empty run cgroup from the pool, or a new one: (path, directory fd)."""
        if self._pool:
            return self._pool.pop()
        self._counter += 1
        path = self.dir / f"run-{os.getpid()}-{self._counter}"
        try:
            path.mkdir()
        except OSError as exc:
            raise LaunchFailed(f"cannot create the run's cgroup {path}: {exc}") from exc
        try:
            return path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            path.rmdir()
            raise LaunchFailed(f"cannot open the run's cgroup {path}: {exc}") from exc

    async def give_back(self, cgroup: tuple[Path, int], killed: bool) -> None:
        """Back to the pool when empty and never killed; else removed once empty.

        A cgroup that has seen ``cgroup.kill`` is never reused: on this kernel (6.18)
        every later clone3(CLONE_INTO_CGROUP) into it is born SIGKILLed (measured).
        """
        path, fd = cgroup
        if not killed and populated(path, fd):  # impossible: the slot reaps all before "done"
            log.error("run cgroup %s still populated after its run ended; killing it", path)
            kill(path)
            killed = True
        if killed or self.closed or len(self._pool) >= POOL_MAX:
            os.close(fd)
            await _remove(path, killed)
            return
        self._pool.append(cgroup)

    def close(self) -> None:
        """Kill whatever is left, remove the run cgroups, release the instance lock."""
        if self.closed:
            return
        self.closed = True
        for _, fd in self._pool:
            os.close(fd)
        self._pool = []
        _kill_runs(self.dir)
        try:
            self.dir.rmdir()
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", self.dir, exc)
        os.close(self._lock_fd)


def _kill_runs(directory: Path) -> int:
    """Kill and remove every run cgroup under ``directory``; how many held processes."""
    try:
        runs = [child for child in directory.iterdir() if child.is_dir()]
    except OSError:
        return 0
    alive = [child for child in runs if populated(child)]
    # Each run's cgroup, never a parent: a cgroup that has seen cgroup.kill poisons later
    # clone3(CLONE_INTO_CGROUP) into it and, through the kill sequence new children
    # inherit, into cgroups made under it.
    for child in alive:
        kill(child)
    deadline = time.monotonic() + 5.0
    while any(populated(child) for child in alive) and time.monotonic() < deadline:
        time.sleep(0.01)
    for child in runs:
        try:
            child.rmdir()
        except OSError as exc:
            log.warning("cannot remove leftover cgroup %s: %s", child, exc)
    return len(alive)


def reap_dead_executors(instance_dir: Path, keep: Path) -> int:
    """Kill the runs of every dead executor's ``executor-*`` directory; count the cgroups."""
    killed = 0
    for proc_dir in instance_dir.iterdir():
        if not proc_dir.is_dir() or proc_dir == keep or not proc_dir.name.startswith("executor-"):
            continue
        try:
            fd = os.open(proc_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live executor holds it
            os.close(fd)
            continue
        try:
            killed += _kill_runs(proc_dir)
            proc_dir.rmdir()
        except OSError as exc:
            log.warning("cannot remove a dead executor's cgroup %s: %s", proc_dir, exc)
        finally:
            os.close(fd)
    return killed


async def _remove(cgroup: Path, killed: bool) -> None:
    delay = 0.001
    deadline = time.monotonic() + 5.0
    while True:
        try:
            os.rmdir(cgroup)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s (left for close())", cgroup, exc)
                return
        if not killed:
            kill(cgroup)
            killed = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
