"""The executor's Python process gives up root for good, once the spawner runs.

What it does
    ``mailexec serve executor`` starts as uid 0 only to set up what needs privilege:
    the network namespaces, its cgroup directory, the trusted directory and the
    spawner (``spawner.c``, the one helper that keeps the power to change uid).
    Then :func:`drop_to_service_user`, before any connection to AMQP, PostgreSQL or
    HTTP is made, hands the Python process over to the service user
    (``MAILEXEC_EXECUTOR_USER``, :func:`resolve_service_user`):

    1. refuses unless the process is single-threaded (capabilities, no_new_privs
       and the bounding set are per thread: a thread started earlier would keep
       them);
    2. gives the service user what it must keep doing (as root, still):
       the trusted directory becomes its own when it was root's
       (:func:`adopt_trusted_dir`); the executor instance's cgroup directory and
       its ``cgroup.procs``/``cgroup.threads``/``cgroup.subtree_control``/
       ``cgroup.kill`` become its own, so it can make, kill and remove run cgroups
       (:func:`delegate_cgroup`; cgroup v2 delegation); every import path it could
       not read (an interpreter under a 0700 ``/root``, as pyenv's here) is
       anchored to a directory descriptor opened now, ``/proc/self/fd/N/...``, so
       imports made later keep working (:func:`anchor_import_paths`);
    3. drops (:func:`drop_privileges`): the bounding set emptied with
       ``PR_CAPBSET_DROP`` while ``CAP_SETPCAP`` is still held, the ambient set
       cleared, ``setgroups([])``, ``setresgid``, ``setresuid`` (real, effective,
       saved), the inheritable set cleared with ``capset`` (setuid clears the
       effective and permitted sets, not the inheritable one),
       ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_DUMPABLE`` 0 (set after setuid, which
       resets it); ``HOME`` becomes the service user's home (its passwd entry's,
       else ``/nonexistent``): libraries read their files there (asyncpg's
       ``~/.pgpass``), and root's is unreadable now;
    4. verifies through ``/proc/self/status`` (Uid and Gid: the service ids on all
       four fields; Groups empty; CapInh, CapPrm, CapEff, CapBnd, CapAmb zero;
       NoNewPrivs 1), ``PR_GET_DUMPABLE`` and a ``setuid(0)`` that must fail, and
       raises :class:`PrivDropError` (the executor refuses to go on, exit 78)
       when anything is left.

    :func:`forbidden_uids` lists the uids the spawner must never run a program as:
    0, the service uid, and the owners of the PostgreSQL and RabbitMQ processes on
    this host (found in ``/proc``: ``postgres``, ``postmaster``, ``beam.smp``,
    ``epmd``). The spawner takes the list on its command line at start
    (``--forbid-uid``, through ``Sandbox.start(forbidden_uids=...)``).

What it trusts
    Root's view of ``/proc``, ``/etc/passwd`` (for a service user given by name),
    and the parents of the trusted directory being root's (checked by
    ``ProgramStore``). The spawner, started before the drop, is the one process
    left with privilege.

What it defends against (and which test shows it: tests/executor/test_privsep.py)
    - A compromised executor (a bug in the AMQP, HTTP or database clients, a
      hostile policy answer) running as root or with capabilities:
      ``test_executor_python_process_holds_no_privilege`` (all four uids and gids,
      all five capability sets, NoNewPrivs, not dumpable), and
      ``test_drop_*`` for the drop in isolation.
    - Account uids tracing or reading the executor's memory (tokens, bodies):
      dumpable 0 makes ``/proc/PID/mem`` and ptrace need CAP_SYS_PTRACE;
      ``test_account_uid_cannot_read_the_executors_memory``.
    - Programs run as the service uid, root, or the database's or broker's owner
      (who could read their data files): :func:`forbidden_uids`,
      ``test_forbidden_uids_*``; the spawner enforces the list.
    - A trusted directory an account uid could write: the executor refuses to
      start (``test_trusted_dir_writable_by_an_account_uid_refuses_start``) and
      refuses to write copies (``ProgramStore``).
    - A drop that silently left something behind (threads, a kernel that ignores
      a call): the /proc verification, ``test_drop_refuses_with_threads``.

What it does not do
    - Narrow the spawner's own capabilities: that is ``sandbox/capset.h``
      (``narrow_capabilities``), for ``sandbox/spawner.c`` to call at its start.
    - Re-start a dead spawner: after the drop nobody can (``SpawnerClient`` says
      so); the executor must exit and be restarted by its supervisor.
    - Check ACLs on the trusted directory (mode bits and owner only).

Settings
    ``executor_user`` (``MAILEXEC_EXECUTOR_USER``): a passwd name, or ``uid[:gid]``;
    empty (default) = the passwd entry ``mailexec`` if there is one, else
    10001:10001, the image's ``mailexec`` user (deploy/Dockerfile), so ownership of
    volumes agrees between a host install and the container. ``trusted_dir``,
    ``sandbox_cgroup_root`` (through the sandbox's cgroup directory).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from services.executor.errors import SandboxUnavailable

log = logging.getLogger(__name__)

DEFAULT_USER_NAME = "mailexec"
FALLBACK_UID = FALLBACK_GID = 10001  # deploy/Dockerfile's mailexec user
# Commands whose owners hold the control plane's data: a program must never run as them.
DATA_PLANE_COMMANDS = frozenset({"postgres", "postmaster", "beam.smp", "epmd"})
# What a delegated cgroup v2 subtree's owner needs (Documentation/admin-guide/cgroup-v2.rst,
# "Delegation"), plus cgroup.kill to end a run's escapees.
DELEGATED_CGROUP_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control",
                          "cgroup.kill")
_CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class PrivDropError(SandboxUnavailable):
    """The executor can't become (or didn't fully become) its unprivileged service user."""


@dataclass(frozen=True)
class ServiceUser:
    uid: int
    gid: int
    name: str
    home: str = "/nonexistent"

    def __str__(self) -> str:
        return f"{self.name} ({self.uid}:{self.gid})"


def resolve_service_user(spec: str) -> ServiceUser:
    """``MAILEXEC_EXECUTOR_USER`` as ids: a passwd name, ``uid`` or ``uid:gid``; never 0."""
    spec = spec.strip()
    if not spec:
        try:
            entry = pwd.getpwnam(DEFAULT_USER_NAME)
            user = ServiceUser(entry.pw_uid, entry.pw_gid, DEFAULT_USER_NAME, entry.pw_dir)
        except KeyError:
            user = ServiceUser(FALLBACK_UID, FALLBACK_GID, f"uid {FALLBACK_UID}")
    elif spec.replace(":", "").isdigit() and spec.count(":") <= 1 and not spec.startswith(":"):
        uid_text, _, gid_text = spec.partition(":")
        uid = int(uid_text)
        try:
            known: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            known = None
        # no gid given: the primary group of that uid's passwd entry, else the same number
        gid = int(gid_text) if gid_text else known.pw_gid if known else uid
        user = ServiceUser(uid, gid, f"uid {uid}", known.pw_dir if known else "/nonexistent")
    else:
        try:
            entry = pwd.getpwnam(spec)
        except KeyError:
            raise PrivDropError(
                f"MAILEXEC_EXECUTOR_USER={spec!r}: no such user (give a passwd name, "
                "or uid[:gid])") from None
        user = ServiceUser(entry.pw_uid, entry.pw_gid, spec, entry.pw_dir)
    if user.uid == 0 or user.gid == 0:
        raise PrivDropError(f"MAILEXEC_EXECUTOR_USER={spec!r} is uid or gid 0: the executor's "
                            "service user must be unprivileged")
    if user.uid >= 0xFFFFFFFF or user.gid >= 0xFFFFFFFF:
        raise PrivDropError(f"MAILEXEC_EXECUTOR_USER={spec!r}: uid or gid out of range")
    return user


# ---- /proc ------------------------------------------------------------------------------

def _status_fields(pid: int | str = "self") -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def privileges_of(pid: int | str = "self") -> dict[str, str]:
    """Uid, Gid, Groups, the five capability sets and NoNewPrivs from /proc/PID/status."""
    fields = _status_fields(pid)
    return {key: fields.get(key, "") for key in ("Uid", "Gid", "Groups", *_CAP_SETS,
                                                 "NoNewPrivs")}


def forbidden_uids(service_uid: int, proc: Path = Path("/proc")) -> list[int]:
    """Uids no program may run as: 0, the service uid, the database's and broker's owners.

    Every uid (real, effective, saved, filesystem) of every ``postgres``,
    ``postmaster``, ``beam.smp`` and ``epmd`` process running now. A service that
    starts later, or runs on another host, is not seen: ``MAILEXEC_MIN_UID`` covers
    system users generally.
    """
    uids = {0, service_uid}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in DATA_PLANE_COMMANDS:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.update(int(field) for field in line.split()[1:])
                    break
        except (OSError, ValueError):  # gone meanwhile
            continue
    return sorted(uids)


# ---- what the service user keeps --------------------------------------------------------

def can_reach(path: str, user: ServiceUser, *, read: bool = True) -> bool:
    """Whether ``user`` (no supplementary groups) can search down to ``path`` and read it."""
    real = Path(os.path.realpath(path))
    chain = [*reversed(real.parents), real]
    for position, current in enumerate(chain):
        try:
            st = os.stat(current)
        except OSError:
            return False
        last = position == len(chain) - 1
        if last and not stat.S_ISDIR(st.st_mode):
            need = 4 if read else 0
        else:
            need = 1 | (4 if last and read else 0)
        if st.st_uid == user.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == user.gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & need != need:
            return False
    return True


def anchor_import_paths(user: ServiceUser) -> dict[str, str]:
    """Keep every import path the service user can't reach readable through an fd.

    For each ``sys.path`` entry (directory or zip file) the user could not read, a
    descriptor is opened now, as root (``O_PATH``: it grants no read by itself, only
    a starting point for lookups, which are then checked against the user), and the
    entry becomes ``/proc/self/fd/N``; packages already imported get their
    ``__path__`` rewritten likewise, so their lazy submodule imports work too.
    Returns {old path: new path}. Nothing is done when everything is readable (the
    image: /opt/venv and the base image's Python are world-readable).
    """
    anchors: dict[str, str] = {}
    for index, entry in enumerate(list(sys.path)):
        if not entry or entry.startswith("/proc/self/fd/") or not os.path.exists(entry):
            continue
        if can_reach(entry, user):
            continue
        flags = os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if os.path.isdir(entry) else 0)
        fd = os.open(entry, flags)
        anchors[entry] = f"/proc/self/fd/{fd}"
        sys.path[index] = anchors[entry]
    if not anchors:
        return anchors
    ordered = sorted(anchors.items(), key=lambda item: -len(item[0]))  # deepest first
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if not isinstance(search, list):  # namespace packages recompute from sys.path
            continue
        for index, entry in enumerate(search):
            if not isinstance(entry, str):
                continue
            for old, new in ordered:
                if entry == old or entry.startswith(old + "/"):
                    search[index] = new + entry[len(old):]
                    break
    sys.path_importer_cache.clear()
    return anchors


def adopt_trusted_dir(dir_fd: int, path: str, user: ServiceUser) -> None:
    """Make a root-owned trusted directory the service user's (it writes the copies).

    Done on the store's open descriptor (no path race). A directory already owned
    by the service user is left alone; any other owner was refused by the store.
    """
    st = os.fstat(dir_fd)
    if st.st_uid == user.uid:
        return
    if st.st_uid != 0:
        raise PrivDropError(f"trusted dir {path} is owned by uid {st.st_uid}, neither root nor "
                            f"the service user {user}")
    try:
        os.fchown(dir_fd, user.uid, user.gid)
    except OSError as exc:
        raise PrivDropError(
            f"cannot give the trusted dir {path} to the service user {user}: {exc.strerror}; "
            f"chown it to {user.uid}:{user.gid} (mode 0755) before starting the executor"
        ) from None
    log.info("trusted dir %s now belongs to the service user %s", path, user)


def delegate_cgroup(cgroup_dir: str | Path | None, user: ServiceUser) -> None:
    """Delegate the executor instance's cgroup v2 directory to the service user.

    Only this instance's directory (``executor-<pid>-<random>``), never the
    configured root it lives in, which other executors share.
    """
    if cgroup_dir is None:
        return
    directory = Path(cgroup_dir)
    if not directory.name.startswith("executor-"):
        raise PrivDropError(f"refusing to delegate {directory}: not an executor instance's "
                            "cgroup directory")
    try:
        os.chown(directory, user.uid, user.gid, follow_symlinks=False)
        for name in DELEGATED_CGROUP_FILES:
            target = directory / name
            if target.exists():
                os.chown(target, user.uid, user.gid, follow_symlinks=False)
    except OSError as exc:
        raise PrivDropError(
            f"cannot delegate the cgroup {directory} to the service user {user}: "
            f"{exc.strerror} (the executor needs CAP_CHOWN at start, or set "
            "MAILEXEC_SANDBOX_CGROUP_ROOT to a directory that does not exist to run without "
            "per-run cgroups)") from None


# ---- the drop ---------------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _prctl(option: int, arg: int = 0, what: str = "") -> int:
    result: int = _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0),
                              ctypes.c_ulong(0), ctypes.c_ulong(0))
    if result < 0:
        code = ctypes.get_errno()
        raise PrivDropError(f"prctl {what or option}: {os.strerror(code)}")
    return result


def _clear_capabilities() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: effective, permitted, inheritable
    if _libc.capset(ctypes.byref(header), data) != 0:
        code = ctypes.get_errno()
        raise PrivDropError(f"capset: {os.strerror(code)}")


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63  # PR_CAPBSET_DROP answers EINVAL past the last one; ignored below


def _threads() -> list[str]:
    return os.listdir("/proc/self/task")


def drop_privileges(user: ServiceUser) -> None:
    """Become ``user`` for good with every capability set empty; verify; else raise."""
    if len(threads := _threads()) != 1:
        raise PrivDropError(
            f"the executor has {len(threads)} threads at the privilege drop; capabilities and "
            "no_new_privs are per thread, so the drop must come before any thread starts")
    # Bounding set first: PR_CAPBSET_DROP needs CAP_SETPCAP, which setuid takes away.
    for cap in range(_last_cap() + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            code = ctypes.get_errno()
            if code != 22:  # EINVAL: past this kernel's last capability
                raise PrivDropError(f"PR_CAPBSET_DROP {cap}: {os.strerror(code)}")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    try:
        os.setgroups([])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise PrivDropError(f"cannot change to the service user {user}: {exc}") from None
    _clear_capabilities()  # setuid emptied effective and permitted, not inheritable
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(_PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")  # after setuid, which resets it
    # root's HOME (/root, 0700) would make libraries that look there fail: asyncpg's
    # ~/.pgpass check raises PermissionError, which its pool retries as "unreachable".
    os.environ["HOME"] = user.home
    for name in ("USER", "LOGNAME"):
        if name in os.environ:
            os.environ[name] = user.name if user.name != f"uid {user.uid}" else str(user.uid)
    problems = dropped_problems(user)
    if problems:
        raise PrivDropError("the privilege drop left something behind: " + "; ".join(problems))


def dropped_problems(user: ServiceUser, pid: int | str = "self") -> list[str]:
    """What is not as it must be after the drop, read back from /proc (empty: all good)."""
    problems = []
    privileges = privileges_of(pid)
    ids = {"Uid": user.uid, "Gid": user.gid}
    for key, want in ids.items():
        got = privileges[key].split()
        if got != [str(want)] * 4:
            problems.append(f"{key} is {' '.join(got)}, not {want} on all four fields")
    if privileges["Groups"]:
        problems.append(f"supplementary groups left: {privileges['Groups']}")
    for key in _CAP_SETS:
        if int(privileges[key] or "0", 16) != 0:
            problems.append(f"{key} is {privileges[key]}, not empty")
    if privileges["NoNewPrivs"] != "1":
        problems.append("NoNewPrivs is not set")
    if pid == "self":
        if _prctl(_PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE") != 0:
            problems.append("the process is still dumpable")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            problems.append("setuid(0) succeeded")
    return problems


def drop_to_service_user(
    user: ServiceUser,
    *,
    trusted_dir_fd: int,
    trusted_dir: str,
    cgroup_dir: str | Path | None,
) -> dict[str, object]:
    """Everything in the module docstring, in order; returns what was done, for the log."""
    adopt_trusted_dir(trusted_dir_fd, trusted_dir, user)
    delegate_cgroup(cgroup_dir, user)
    anchors = anchor_import_paths(user)
    drop_privileges(user)
    return {"service_user": str(user), "uid": user.uid, "gid": user.gid,
            "import_paths_anchored": sorted(anchors)}


def describe_capabilities(mask: int) -> list[str]:
    """Names of the capabilities in a CapXxx mask (for reports and tests)."""
    return [_CAP_NAMES.get(bit, f"cap_{bit}") for bit in range(64) if mask >> bit & 1]


_CAP_NAMES = dict(enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)))
