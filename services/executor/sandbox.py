"""Running ONE delivery program safely: privilege drop, limits, timeout, capture.

What it does
    By default :meth:`Sandbox.run` hands each run to the **persistent spawner**
    (``spawner.c``, built on first use into ``<sys.prefix>/libexec/mailexec-spawner``):
    one root helper per Sandbox, started by :meth:`Sandbox.start` inside the empty
    network namespace, talking over a SOCK_SEQPACKET socketpair. A request carries
    the exec fd, the stdin read end, the output write end, the status pipe's write
    end and the run's cgroup directory fd (SCM_RIGHTS) plus uid, gid, rlimits, home,
    argv0 and TZ; the spawner clone3()s the child straight into that cgroup
    (CLONE_INTO_CGROUP, no migration) with a pidfd (CLONE_PIDFD), the child does
    exactly the launcher's steps and fexecve()s; the reply carries the pid and the
    pidfd, and later the wait status (the spawner is the parent and reaps; it kills
    the run's process group first, while the zombie still reserves the pgid). Run
    cgroups come from a pool: one that ends empty and was never killed is reused.
    If the spawner dies (EOF), in-flight runs fail with LaunchFailed (retryable)
    and the next run starts a new one. ``sandbox_bwrap`` mode, ``spawner=False``,
    or a spawner that can't be built or started use the launcher path below.

    Launcher path: :meth:`Sandbox.run` spawns the C launcher (``launcher.c``, built on first use
    into ``<sys.prefix>/libexec/mailexec-launch``) with ``subprocess.Popen`` and
    no ``preexec_fn`` (CPython's vfork fast path); the launcher does the
    privileged set-up and ``fexecve``\\ s the program's descriptor (see
    ``programs.py``). From the asyncio loop, without threads, it streams stdin
    (prefix, then the body in chunks: never concatenated, never copied per run),
    reads stdout+stderr from one pipe, watches the process through a pidfd and
    enforces the wall-clock timeout. Many runs share one loop.

What it guarantees (per run)
    - Never uid/gid 0 (refused here and again in the launcher or spawner child), no
      supplementary groups, real=effective=saved ids (verified: setuid(0) fails in the child),
      ``no_new_privs``, own session and process group, rlimits CPU/AS/NPROC/FSIZE/
      NOFILE and CORE=0, cwd = home else /tmp, environment exactly ``TZ`` and
      ``AGENT=mailexec``, only fds 0-2 (plus, for ``#!`` scripts, the script's fd).
    - With ``sandbox_network`` (default): the program runs in one empty network
      namespace created at start, whose ``lo`` is left *down*: no network at all,
      not even loopback (runs share that namespace; an "up" lo would let
      concurrent programs of different users talk to each other). The spawning
      thread enters it just around the vfork and returns at once, so the child
      is born inside it (cheaper than the launcher's own ``--netns-fd`` setns,
      which measured ~2x slower with 64 runs in flight); the executor's sockets
      are never created there.
    - With a writable cgroup v2 tree (``sandbox_cgroup_root``): each run gets its
      own child cgroup; on timeout and after the main process exits,
      ``cgroup.kill`` kills everything left, setsid'd double-fork escapees
      included, and the child cgroup is removed. Without it, only the run's
      process group is killed (an escapee that calls setsid survives: reported as
      ``isolation["cgroup_kill"] = False``).
    - Output is captured up to ``max_output_bytes``, the rest read and discarded;
      output never kills a program. Early-closed stdin (EPIPE) is not a failure.
    - Failures before exec come back as ``RunResult.launch_error`` (read from the
      status pipe the launcher or spawner child writes), never as program output;
      ``exit_status`` and ``signal`` are then ``None``.

What it does not do
    - Memory/pids cgroup limits (the v1 controllers are left alone), seccomp,
      filesystem isolation (only in ``sandbox_bwrap`` mode: bubblewrap started by
      the launcher *after* the drop, unprivileged, with --unshare-all, read-only
      /usr and /etc, private /tmp, the home bound read-write when the user can
      reach it; there the program's argv[0] is ``/proc/self/fd/N`` because
      bwrap 0.8 has no --argv0, it is started through ``/usr/bin/env -u PWD``
      because bwrap always exports PWD, and a program killed by a signal shows
      as bwrap's exit status).
    - Reap children with a waitpid(-1) watcher running in the same process: such
      a watcher would steal exit statuses (asyncio's default watcher is fine).

Settings
    ``sandbox_network``, ``sandbox_bwrap``, ``sandbox_cgroup_root``, ``tz``, and
    the ``rlimit_*`` fields (via :meth:`RunLimits.from_settings`).

Cost (``bench/spawn_rate.py``, trivial C program, 64 in flight, 2 cores)
    ~0.3 ms of executor CPU and ~1.0 ms of launcher+program CPU per run without
    cgroups; the per-run cgroup (mkdir, join, rmdir) adds ~0.2 + 0.2 ms and, on a
    busy machine, halves runs/s (the kernel serialises forks behind cgroup
    migrations). Reusing empty run cgroups plus clone3(CLONE_INTO_CGROUP) in the
    launcher measured back at the no-cgroup rate. The spawner does both, and saves
    the launcher's exec and Popen's blocking fork: same run, same load, 3,000 runs,
    64 in flight, 1.0 ms instead of 1.6-1.85 ms CPU per run (executor 0.23 instead
    of 0.5 ms) and 1,290-1,556 instead of 588-635 runs/s (bench/README.md).
    Kernel pitfall measured here (6.18): after a cgroup has seen ``cgroup.kill``,
    every clone3(CLONE_INTO_CGROUP) into it is born SIGKILLed, so killed run
    cgroups are removed, never pooled.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.executor.errors import LaunchFailed, SandboxUnavailable
from services.executor.programs import check_root_owned_path, sealed_memfd
from shared.settings import Settings

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(__file__).with_name("launcher.c")
SPAWNER_SOURCE = Path(__file__).with_name("spawner.c")
_CLONE_NEWNET = 0x40000000
_WRITE_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
_OUTPUT_EOF_GRACE_S = 2.0
_POOL_MAX = 1024  # empty run cgroups kept for reuse (spawner mode)


def launcher_path() -> Path:
    return Path(sys.prefix) / "libexec" / "mailexec-launch"


def spawner_path() -> Path:
    return Path(sys.prefix) / "libexec" / "mailexec-spawner"


def find_or_build_launcher() -> Path:
    """The launcher binary, compiled from launcher.c when missing or older than it or a header."""
    return _find_or_build(LAUNCHER_SOURCE, launcher_path(), "launcher")


def find_or_build_spawner() -> Path:
    """The spawner binary, compiled from spawner.c when missing or older than it or a header."""
    return _find_or_build(SPAWNER_SOURCE, spawner_path(), "spawner")


def _build_inputs(source: Path) -> list[Path]:
    """The .c file and the local headers it includes (``#include "x.h"``, next to it)."""
    local = re.findall(r'^#include "([^"]+)"', source.read_text(), flags=re.M)
    return [source, *(source.with_name(name) for name in local)]


def _find_or_build(source: Path, target: Path, what: str) -> Path:
    try:
        st = target.stat()
        # a header newer than the binary (child_recipe.h) rebuilds it like the .c file does
        fresh = all(st.st_mtime >= path.stat().st_mtime for path in _build_inputs(source))
        safe = st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if fresh and safe:
            check_root_owned_path(target.parent, f"{what} dir")
            return target
    except FileNotFoundError:
        pass
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SandboxUnavailable(
            f"no C compiler (cc or gcc) to build the {what} {target} from {source}; "
            "install gcc, or build it once with: cc -O2 -Wall -Werror -o "
            f"{target} {source}"
        )
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # root executes this file: nobody else may be able to replace it
    check_root_owned_path(target.parent, f"{what} dir")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, "-O2", "-Wall", "-Werror", "-o", tmp, str(source)]
        # Static when the C library allows it: no dynamic loader at each launch
        # (measured: ~15 % more runs/s); otherwise the ordinary dynamic build.
        built = subprocess.run([*command, "-static"], capture_output=True, text=True,
                               check=False)
        if built.returncode != 0:
            built = subprocess.run(command, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise SandboxUnavailable(f"building the {what} failed:\n{built.stderr}")
        os.chown(tmp, 0, 0)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float
    max_output_bytes: int
    cpu_s: int
    as_bytes: int
    nproc: int
    fsize_bytes: int
    nofile: int

    @classmethod
    def from_settings(
        cls, settings: Settings, *, timeout_s: float, max_output_bytes: int
    ) -> RunLimits:
        """Rlimits from the process settings; timeout and output cap come from policy."""
        return cls(
            timeout_s=timeout_s,
            max_output_bytes=max_output_bytes,
            cpu_s=settings.rlimit_cpu_s,
            as_bytes=settings.rlimit_as_bytes,
            nproc=settings.rlimit_nproc,
            fsize_bytes=settings.rlimit_fsize_bytes,
            nofile=settings.rlimit_nofile,
        )


@dataclass(frozen=True)
class RunResult:
    exit_status: int | None
    signal: int | None
    timed_out: bool
    output: bytes
    output_bytes_total: int
    duration_s: float
    launch_error: str | None

    @property
    def ok(self) -> bool:
        """SPEC §3.7: exit 0, no signal, no timeout, not a single byte of output."""
        return (
            self.exit_status == 0
            and self.signal is None
            and not self.timed_out
            and self.output_bytes_total == 0
            and self.launch_error is None
        )


def _describe_launch_error(report: bytes) -> str:
    step, _, number = report.decode("ascii", "replace").strip().partition(" ")
    try:
        code = int(number)
    except ValueError:
        return f"launcher failed: {report!r}"
    if step == "refuse-root":
        return "launcher refused to run the program as uid 0 or gid 0"
    name = errno.errorcode.get(code, str(code))
    return f"launcher failed at {step}: {os.strerror(code)} ({name})"


def _create_empty_netns() -> int:
    """An fd of a fresh network namespace (only a down ``lo``), made in a throwaway thread.

    Namespaces are per thread, so unsharing in a thread that then ends leaves the
    executor's own network untouched; the fd keeps the namespace alive.
    """
    outcome: dict[str, int] = {}

    def make() -> None:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            outcome["errno"] = ctypes.get_errno()
            return
        outcome["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    thread = threading.Thread(target=make, name="mailexec-netns")
    thread.start()
    thread.join()
    if "fd" not in outcome:
        code = outcome.get("errno", 0)
        raise SandboxUnavailable(
            f"sandbox_network is on but creating a network namespace failed: "
            f"{os.strerror(code)}; set MAILEXEC_SANDBOX_NETWORK=false to run without it"
        )
    return outcome["fd"]


_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _populated(cgroup: Path, dir_fd: int | None = None) -> bool:
    """Whether a process is still in the cgroup (``dir_fd``: an open fd of its directory,
    which spares the path walk on the per-run hot path)."""
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


def _kill_cgroup(cgroup: Path) -> None:
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except OSError:
        pass


def _is_stale_executor_dir(path: Path) -> bool:
    """executor-<pid>-<random>, its process gone and nothing left running in it."""
    parts = path.name.split("-")
    if len(parts) != 3 or parts[0] != "executor" or not parts[1].isdigit():
        return False
    return not os.path.exists(f"/proc/{parts[1]}") and not _populated(path)


_REQUIRED_CAPS = {5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID"}


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


def _prepare_cgroup_parent(root: Path) -> Path | None:
    """This worker's cgroup v2 directory, or None when the tree isn't usable."""
    try:
        root.mkdir(mode=0o755, exist_ok=True)
        for stale in root.iterdir():  # empty leftovers of executors that are gone
            if _is_stale_executor_dir(stale):
                for child in stale.iterdir():
                    if child.is_dir():
                        child.rmdir()
                stale.rmdir()
        mine = root / f"executor-{os.getpid()}-{os.urandom(4).hex()}"
        mine.mkdir(mode=0o755)
    except OSError as exc:
        log.info("cgroup v2 tree %s not usable (%s); killing by process group only", root, exc)
        return None
    if not (mine / "cgroup.kill").exists():
        mine.rmdir()
        log.info("cgroup v2 at %s has no cgroup.kill; killing by process group only", root)
        return None
    return mine


def _uid_can_enter(path: str, uid: int, gid: int) -> bool:
    """Whether uid/gid (no supplementary groups) can search every directory of ``path``."""
    real = Path(os.path.realpath(path))
    for directory in (*reversed(real.parents), real):
        try:
            st = os.stat(directory)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _bwrap_args(program_fd: int, home: str, uid: int, gid: int) -> list[str]:
    args = ["bwrap", "--unshare-all", "--share-net", "--die-with-parent",
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if home and os.path.isabs(home) and _uid_can_enter(home, uid, gid):
        # bwrap keeps the launcher's cwd (the home) when it exists inside.
        args += ["--bind", home, home]
    # bwrap always exports PWD; env(1) removes it so the environment stays exactly TZ+AGENT.
    args += ["--", "/usr/bin/env", "-u", "PWD", f"/proc/self/fd/{program_fd}"]
    return args


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap a launcher we can't watch (the wait is microseconds)."""
    os.kill(proc.pid, signal.SIGKILL)
    os.waitpid(proc.pid, 0)
    proc.returncode = -signal.SIGKILL


class _Run:
    """The I/O state of one running program, driven by loop callbacks.

    Launcher mode (``proc`` given): our own child, watched through a pidfd and
    reaped here. Spawner mode: the spawner's child; ``exit_status`` resolves to
    its wait status when the spawner has reaped it, and ``on_kill`` asks the
    spawner to kill its process group (the pgid stays reserved until then).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        proc: subprocess.Popen[bytes] | None,
        stdin_fd: int,
        output_fd: int,
        chunks: list[memoryview],
        max_output: int,
        *,
        pid: int | None = None,
        pidfd: int | None = None,
        exit_status: asyncio.Future[int] | None = None,
        on_kill: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.proc = proc
        real_pid = proc.pid if proc is not None else pid
        assert real_pid is not None
        self.pid: int = real_pid
        self.pidfd = os.pidfd_open(self.pid) if pidfd is None else pidfd
        self.stdin_fd: int | None = stdin_fd
        self.output_fd: int | None = output_fd
        self.chunks = chunks
        self.max_output = max_output
        self.captured = bytearray()
        self.output_total = 0
        self.on_kill = on_kill
        self.exited: asyncio.Future[int] | asyncio.Future[None] = (
            exit_status if exit_status is not None else loop.create_future())
        self.output_done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(stdin_fd, False)
        os.set_blocking(output_fd, False)
        if proc is not None:
            loop.add_reader(self.pidfd, self._on_exit)
        loop.add_reader(output_fd, self._on_output)
        self._feed()

    def _feed(self) -> None:
        assert self.stdin_fd is not None
        while self.chunks:
            head = self.chunks[0]
            try:
                written = os.write(self.stdin_fd, head[:_WRITE_CHUNK])
            except BlockingIOError:
                self.loop.add_writer(self.stdin_fd, self._on_writable)
                return
            except OSError:  # EPIPE: the program stopped reading; not a failure
                break
            if written == len(head):
                self.chunks.pop(0)
            else:
                self.chunks[0] = head[written:]
        self._close_stdin()

    def _on_writable(self) -> None:
        assert self.stdin_fd is not None
        self.loop.remove_writer(self.stdin_fd)
        self._feed()

    def _close_stdin(self) -> None:
        if self.stdin_fd is not None:
            self.loop.remove_writer(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None
            self.chunks = []

    def _on_output(self) -> None:
        assert self.output_fd is not None
        try:
            data = os.read(self.output_fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            self.output_total += len(data)
            room = self.max_output - len(self.captured)
            if room > 0:
                self.captured += data[:room]
            return
        self.close_output()

    def close_output(self) -> None:
        if self.output_fd is not None:
            self.loop.remove_reader(self.output_fd)
            os.close(self.output_fd)
            self.output_fd = None
        if not self.output_done.done():
            self.output_done.set_result(None)

    def _on_exit(self) -> None:
        self.loop.remove_reader(self.pidfd)
        if not self.exited.done():  # launcher mode: the status comes from reap()
            self.exited.set_result(None)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL the main process and its process group (the pgid is its pid)."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # start() checks CAP_KILL; say so loudly if it was lost
            log.error("cannot kill program pid %d: CAP_KILL missing", self.pid)
        if self.on_kill is not None:  # the spawner kills the group while it is reserved
            self.on_kill()
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.error("cannot kill process group %d: CAP_KILL missing", self.pid)

    def reap(self) -> int | None:
        """The wait status; the pid stays reserved (zombie) until this call."""
        self._close_stdin()
        if self.proc is None:  # the spawner reaped it
            os.close(self.pidfd)
            if self.exited.done() and not self.exited.cancelled() \
                    and self.exited.exception() is None:
                result = self.exited.result()
                return None if result is None else int(result)
            return None
        try:
            _, status = os.waitpid(self.proc.pid, 0)
        except ChildProcessError:  # someone else reaped it
            status = None
        os.close(self.pidfd)
        self.proc.returncode = -1 if status is None else os.waitstatus_to_exitcode(status)
        return status


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# keep in sync with struct req_spawn / struct reply in spawner.c
_REQ = struct.Struct("=4I5q")
_REPLY = struct.Struct("=2I2i")
_OP_SPAWN, _OP_KILL = 1, 2
_OP_SPAWNED, _OP_EXITED = 1, 2
_FD_SIZE = struct.calcsize("i")


class _Spawner:
    """The executor's end of one ``mailexec-spawner`` process (see spawner.c).

    ``spawn`` sends a request with the run's fds over a SOCK_SEQPACKET socketpair
    and resolves to (pid, pidfd, exit future) without blocking the loop; replies
    are read by a loop reader. EOF (the spawner died) fails every in-flight run
    with LaunchFailed (retryable); the next ``spawn`` starts a new spawner.
    """

    def __init__(self, path: Path, netns_fd: int | None, own_netns_fd: int | None) -> None:
        self.path = path
        self._netns_fd = netns_fd
        self._own_netns_fd = own_netns_fd
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = 0
        # id -> (spawned future, exit-status future)
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, int]], asyncio.Future[int]]] = {}
        self.starts = 0
        self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if self._netns_fd is not None:  # born in the empty netns: so are its children
                _enter_netns(self._netns_fd)
            try:
                self._proc = subprocess.Popen(
                    [str(self.path), str(theirs.fileno()), str(os.getpid())], executable=self.path,
                    stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env={},
                    close_fds=True,
                )
            finally:
                if self._own_netns_fd is not None:
                    try:
                        _enter_netns(self._own_netns_fd)
                    except OSError as exc:  # never seen; can't work in the empty netns
                        log.critical("cannot return to the executor's network namespace: %s",
                                     exc)
                        os.abort()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._loop = None
        self.starts += 1

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        assert self._sock is not None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        loop.add_reader(self._sock.fileno(), self._on_readable)
        self._loop = loop

    async def spawn(
        self, exec_fd: int, stdin_r: int, output_w: int, status_w: int, cgroup_fd: int | None,
        uid: int, gid: int, home: str, argv0: str, tz: str, limits: RunLimits,
    ) -> tuple[int, int, int, asyncio.Future[int]]:
        """(request id, pid, pidfd, exit-status future); LaunchFailed if nothing was started."""
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._start()
        self._attach(loop)
        assert self._sock is not None
        self._ids = (self._ids + 1) & 0xFFFFFFFF
        rid = self._ids
        strings = b"\0".join(part.encode() for part in (home, argv0, tz)) + b"\0"
        data = _REQ.pack(_OP_SPAWN, rid, uid, gid, limits.cpu_s, limits.as_bytes, limits.nproc,
                         limits.fsize_bytes, limits.nofile) + strings
        fds = [exec_fd, stdin_r, output_w, status_w]
        if cgroup_fd is not None:
            fds.append(cgroup_fd)
        spawned: asyncio.Future[tuple[int, int]] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._pending[rid] = (spawned, exited)
        try:
            await self._send(data, fds)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        try:
            pid, pidfd = await spawned
        except asyncio.CancelledError:
            # the reply, if it comes, kills the orphan (see _on_readable)
            raise
        return rid, pid, pidfd, exited

    async def _send(self, data: bytes, fds: list[int]) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        while True:
            sock = self._sock
            if sock is None:
                raise LaunchFailed("the spawner died")
            try:
                sock.sendmsg([data], ancillary)
                return
            except BlockingIOError:
                pass
            except OSError as exc:  # EPIPE/ECONNRESET: it died; the next spawn restarts it
                self._died()
                raise LaunchFailed(f"cannot reach the spawner: {exc}") from exc
            assert self._loop is not None
            ready: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_writer(sock.fileno(), _set_once, ready)
            try:
                await ready
            finally:
                if self._sock is sock:
                    self._loop.remove_writer(sock.fileno())

    def kill(self, rid: int) -> bool:
        """Ask the spawner to SIGKILL run ``rid``'s process group; False if it can't be asked."""
        if self._sock is None:
            return False
        try:
            self._sock.send(_REQ.pack(_OP_KILL, rid, 0, 0, 0, 0, 0, 0, 0))
            return True
        except OSError:
            return False

    def _on_readable(self) -> None:
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                data, ancdata, _, _ = sock.recvmsg(_REPLY.size, socket.CMSG_SPACE(_FD_SIZE))
            except BlockingIOError:
                return
            except OSError:
                data, ancdata = b"", []
            if not data:
                self._died()
                return
            fds = [fd for level, kind, raw in ancdata
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(raw) // _FD_SIZE}i",
                                           raw[: len(raw) - len(raw) % _FD_SIZE])]
            op, rid, pid, value = _REPLY.unpack(data)
            entry = self._pending.get(rid)
            if op == _OP_SPAWNED:
                pidfd = fds.pop(0) if fds else None
                if entry is None or entry[0].done():  # nobody waits: don't leave it running
                    if pidfd is not None:
                        try:
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        except OSError:
                            pass
                    self.kill(rid)
                elif pid < 0 or pidfd is None:
                    self._pending.pop(rid, None)
                    entry[0].set_exception(LaunchFailed(
                        f"the spawner could not start the program: {os.strerror(value)}"))
                else:
                    entry[0].set_result((pid, pidfd))
                    pidfd = None
                if pidfd is not None:
                    os.close(pidfd)
            elif op == _OP_EXITED and entry is not None:
                del self._pending[rid]
                if not entry[1].done():
                    entry[1].set_result(value)
            for fd in fds:
                os.close(fd)

    def _died(self) -> None:
        """EOF: fail everything in flight (retryable), reap it; the next spawn restarts it."""
        self._detach()
        code = self._reap(timeout=2.0)
        log.error("the spawner exited (status %s); failing %d in-flight runs, restarting it",
                  code, len(self._pending))
        self._fail_pending("the spawner died during the run")

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for spawned, exited in pending.values():
            for future in (spawned, exited):
                if not future.done() and not future.get_loop().is_closed():
                    future.set_exception(LaunchFailed(why))
                    future.exception()  # retrieved: no "never retrieved" noise when unawaited

    def _detach(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
                self._loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._loop = None

    def _reap(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._proc = None
        return code

    def close(self) -> None:
        """Closing the socket makes the spawner kill every live run's group and exit."""
        self._detach()
        self._reap(timeout=2.0)
        self._fail_pending("the sandbox was closed during the run")


class Sandbox:
    """Runs delivery programs; one per worker process. Use :meth:`start`."""

    def __init__(
        self,
        *,
        launcher: Path,
        tz: str,
        netns_fd: int | None,
        cgroup_dir: Path | None,
        bwrap_fd: int | None,
        spawner_binary: Path | None = None,
    ) -> None:
        self.launcher = launcher
        self._env = {"TZ": tz, "AGENT": "mailexec"}
        self._netns_fd = netns_fd
        # the namespace the executor's own sockets live in, to come back to
        self._own_netns_fd = (
            os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if netns_fd is not None else None
        )
        self._cgroup_dir = cgroup_dir
        self._bwrap_fd = bwrap_fd
        self._counter = 0
        self._closed = False
        self._pool: list[tuple[Path, int]] = []  # empty run cgroups (path, dir fd), spawner mode
        self._spawner: _Spawner | None = None
        if spawner_binary is not None and bwrap_fd is None:
            try:
                self._spawner = _Spawner(spawner_binary, netns_fd, self._own_netns_fd)
            except OSError as exc:
                log.warning("cannot start the spawner %s (%s); using the launcher per run",
                            spawner_binary, exc)
        self.isolation: dict[str, object] = {
            "launcher": str(launcher),
            "privilege_drop": True,
            "no_new_privs": True,
            "network_namespace": netns_fd is not None,
            "cgroup_kill": cgroup_dir is not None,
            "cgroup_dir": str(cgroup_dir) if cgroup_dir else None,
            "bwrap": bwrap_fd is not None,
            "spawner": str(spawner_binary) if self._spawner is not None else None,
        }

    @classmethod
    def start(cls, settings: Settings, *, spawner: bool | None = None) -> Sandbox:
        """Build the launcher and the shared isolation; SandboxUnavailable if not possible.

        ``spawner``: None (auto) = use the persistent spawner unless bwrap mode is on
        or it can't be built/started (then the launcher per run, logged); False = the
        launcher per run; True = like auto (bwrap still forces the launcher).
        """
        if os.geteuid() != 0:
            raise SandboxUnavailable("the executor sandbox needs root (to drop to account uids)")
        missing = _missing_capabilities()
        if missing:
            raise SandboxUnavailable(
                f"the executor lacks {', '.join(missing)}: it needs CAP_SETUID and CAP_SETGID to "
                "drop to account uids and CAP_KILL to stop programs that overrun their timeout; "
                "grant them (Kubernetes: securityContext.capabilities.add)"
            )
        launcher = find_or_build_launcher()
        netns_fd = _create_empty_netns() if settings.sandbox_network else None
        bwrap_fd = None
        if settings.sandbox_bwrap:
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                if netns_fd is not None:
                    os.close(netns_fd)
                raise SandboxUnavailable("sandbox_bwrap is on but bwrap is not installed")
            bwrap_fd = os.open(bwrap, os.O_RDONLY | os.O_CLOEXEC)
        cgroup_dir = _prepare_cgroup_parent(Path(settings.sandbox_cgroup_root))
        spawner_binary = None
        if spawner is not False and bwrap_fd is None:
            try:
                spawner_binary = find_or_build_spawner()
            except SandboxUnavailable as exc:
                log.warning("no spawner (%s); using the launcher per run", exc)
        return cls(launcher=launcher, tz=settings.tz, netns_fd=netns_fd,
                   cgroup_dir=cgroup_dir, bwrap_fd=bwrap_fd, spawner_binary=spawner_binary)

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
    ) -> RunResult:
        """Run the program behind ``exec_fd`` once, as uid/gid, and report what happened."""
        if self._closed:
            raise LaunchFailed("sandbox is closed")
        if uid == 0 or gid == 0:
            raise LaunchFailed("refusing to run a program as uid 0 or gid 0")
        if self._spawner is not None:
            return await self._run_spawned(exec_fd, argv0, uid, gid, home, stdin_prefix,
                                           stdin_body, limits)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        proc, stdin_w, output_r, status_r, cgroup = self._spawn(
            exec_fd, argv0, uid, gid, home, limits
        )
        chunks = [memoryview(part) for part in (stdin_prefix, stdin_body) if len(part)]
        try:
            run = _Run(loop, proc, stdin_w, output_r, chunks, limits.max_output_bytes)
        except OSError as exc:  # e.g. no fd left for the pidfd: don't leave it running
            _kill_and_reap(proc)
            for fd in (stdin_w, output_r, status_r):
                os.close(fd)
            if cgroup is not None:
                _kill_cgroup(cgroup)
                await self._remove_cgroup(cgroup, True)
            raise LaunchFailed(f"cannot watch the launched program: {exc}") from exc
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            run.kill()
            if cgroup is not None:
                _kill_cgroup(cgroup)

        timer = loop.call_later(limits.timeout_s, on_timeout)
        try:
            await run.exited
        finally:
            timer.cancel()
            # A program must not outlive its delivery: kill whatever it left behind.
            run.kill()
            leftovers = cgroup is not None and _populated(cgroup)
            if leftovers:
                assert cgroup is not None
                _kill_cgroup(cgroup)
            status = run.reap()
            duration = time.monotonic() - started
            report = self._read_status(status_r)
            if run.output_fd is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(run.output_done), _OUTPUT_EOF_GRACE_S)
                except TimeoutError:  # an escapee we could not kill still holds the pipe
                    log.warning("output pipe still open after the program and its group died")
                run.close_output()
            if cgroup is not None:
                await self._remove_cgroup(cgroup, leftovers)
        return self._result(status, report, timed_out, run, duration)

    async def _run_spawned(
        self, exec_fd: int, argv0: str, uid: int, gid: int, home: str,
        stdin_prefix: bytes, stdin_body: bytes | memoryview, limits: RunLimits,
    ) -> RunResult:
        """``run`` through the persistent spawner, in a pooled cgroup (same guarantees)."""
        assert self._spawner is not None
        spawner = self._spawner
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        opened: list[int] = []
        cgroup: tuple[Path, int] | None = None
        try:
            for _ in range(3):
                opened += os.pipe()
            stdin_r, stdin_w, output_r, output_w, status_r, status_w = opened
            cgroup = self._take_cgroup()
            rid, pid, pidfd, exit_status = await spawner.spawn(
                exec_fd, stdin_r, output_w, status_w, cgroup[1] if cgroup else None,
                uid, gid, home, argv0, self._env["TZ"], limits)
        except BaseException as exc:
            for fd in opened:
                os.close(fd)
            if cgroup is not None:  # whatever may have started in it must die first
                _kill_cgroup(cgroup[0])
                await self._recycle_cgroup(cgroup, True)
            if isinstance(exc, OSError):
                raise LaunchFailed(f"cannot start the program through the spawner: {exc}") \
                    from exc
            raise
        for fd in (stdin_r, output_w, status_w):  # the child's ends belong to it now
            os.close(fd)

        def kill_group() -> None:
            if not spawner.kill(rid):
                try:  # spawner unreachable: the group may outlive the reservation; best effort
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass

        chunks = [memoryview(part) for part in (stdin_prefix, stdin_body) if len(part)]
        run = _Run(loop, None, stdin_w, output_r, chunks, limits.max_output_bytes,
                   pid=pid, pidfd=pidfd, exit_status=exit_status, on_kill=kill_group)
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            run.kill()
            if cgroup is not None:
                _kill_cgroup(cgroup[0])

        timer = loop.call_later(limits.timeout_s, on_timeout)
        try:
            await run.exited
        finally:
            timer.cancel()
            if not run.exited.done() or run.exited.cancelled() \
                    or run.exited.exception() is not None:
                run.kill()  # cancelled, or the spawner died: the program must not go on
            leftovers = cgroup is not None and _populated(*cgroup)
            if leftovers:
                assert cgroup is not None
                _kill_cgroup(cgroup[0])
            status = run.reap()
            duration = time.monotonic() - started
            report = self._read_status(status_r)
            if run.output_fd is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(run.output_done), _OUTPUT_EOF_GRACE_S)
                except TimeoutError:
                    log.warning("output pipe still open after the program and its group died")
                run.close_output()
            if cgroup is not None:
                await self._recycle_cgroup(cgroup, leftovers or timed_out)
        return self._result(status, report, timed_out, run, duration)

    def _take_cgroup(self) -> tuple[Path, int] | None:
        """An empty run cgroup from the pool, or a new one (kept for reuse after the run)."""
        if self._cgroup_dir is None:
            return None
        if self._pool:
            return self._pool.pop()
        path = self._new_cgroup()
        assert path is not None
        try:
            return path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            path.rmdir()
            raise LaunchFailed(f"cannot open the run's cgroup {path}: {exc}") from exc

    async def _recycle_cgroup(self, cgroup: tuple[Path, int], killed: bool) -> None:
        """Back to the pool when nothing ran in it past the run and it was never killed.

        A cgroup that has seen ``cgroup.kill`` is removed instead (once empty): on
        this kernel (6.18) every later clone3(CLONE_INTO_CGROUP) into it is born
        SIGKILLed (the child's kill sequence is compared with the target cgroup's),
        measured here. Programs that leave nothing behind, the common case, reuse.
        """
        path, fd = cgroup
        if not killed and _populated(path, fd):
            _kill_cgroup(path)
            killed = True
        if killed or self._closed or len(self._pool) >= _POOL_MAX:
            os.close(fd)
            await self._remove_cgroup(path, killed)
            return
        self._pool.append(cgroup)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._spawner is not None:
            self._spawner.close()
        for _, pool_fd in self._pool:
            os.close(pool_fd)
        self._pool = []
        for fd in (self._netns_fd, self._own_netns_fd, self._bwrap_fd):
            if fd is not None:
                os.close(fd)
        if self._cgroup_dir is not None:
            for child in self._cgroup_dir.iterdir():
                if child.is_dir():
                    _kill_cgroup(child)
            deadline = time.monotonic() + 2.0
            for child in [c for c in self._cgroup_dir.iterdir() if c.is_dir()]:
                while _populated(child) and time.monotonic() < deadline:
                    time.sleep(0.01)
                try:
                    child.rmdir()
                except OSError as exc:
                    log.warning("cannot remove cgroup %s: %s", child, exc)
            try:
                self._cgroup_dir.rmdir()
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", self._cgroup_dir, exc)

    def _spawn(
        self, exec_fd: int, argv0: str, uid: int, gid: int, home: str, limits: RunLimits
    ) -> tuple[subprocess.Popen[bytes], int, int, int, Path | None]:
        """Start the launcher; returns (proc, stdin writer, output reader, status reader, cgroup).

        Synchronous on purpose: with no preexec_fn CPython vforks, so this returns
        as soon as the launcher has been exec'd (microseconds), not when it's done.
        """
        pass_fds = [fd for fd in (exec_fd, self._bwrap_fd) if fd is not None]
        opened: list[int] = []
        cgroup = None
        try:
            for _ in range(3):
                opened += os.pipe()
            stdin_r, stdin_w, output_r, output_w, status_r, status_w = opened
            cgroup = self._new_cgroup()
            argv = self._argv(status_w, exec_fd, argv0, uid, gid, home, limits, cgroup)
            if self._netns_fd is not None:
                # The child inherits this thread's network namespace. Entering it
                # here, around the vfork, costs two cheap setns calls; a setns in
                # every child measured ~2x slower with 64 concurrent runs.
                _enter_netns(self._netns_fd)
            try:
                proc = subprocess.Popen(
                    argv, executable=self.launcher, stdin=stdin_r, stdout=output_w,
                    stderr=output_w, pass_fds=(*pass_fds, status_w), env=self._env,
                    close_fds=True,
                )
            finally:
                if self._own_netns_fd is not None:
                    self._return_to_own_netns()
        except (OSError, LaunchFailed) as exc:
            for fd in opened:
                os.close(fd)
            if cgroup is not None:
                cgroup.rmdir()
            if isinstance(exc, LaunchFailed):
                raise
            raise LaunchFailed(f"cannot start the launcher {self.launcher}: {exc}") from exc
        # the child's ends of the pipes belong to the child now
        for fd in (stdin_r, output_w, status_w):
            os.close(fd)
        return proc, stdin_w, output_r, status_r, cgroup

    def _return_to_own_netns(self) -> None:
        assert self._own_netns_fd is not None
        try:
            _enter_netns(self._own_netns_fd)
        except OSError as exc:  # never seen; the executor can't work in the empty netns
            log.critical("cannot return to the executor's network namespace: %s", exc)
            os.abort()

    def _new_cgroup(self) -> Path | None:
        if self._cgroup_dir is None:
            return None
        self._counter += 1
        path = self._cgroup_dir / f"run-{self._counter}"
        try:
            path.mkdir()
        except OSError as exc:
            raise LaunchFailed(f"cannot create the run's cgroup {path}: {exc}") from exc
        return path

    def _argv(
        self, status_fd: int, exec_fd: int, argv0: str, uid: int, gid: int, home: str, limits: RunLimits,
        cgroup: Path | None,
    ) -> list[str]:
        target_fd = exec_fd if self._bwrap_fd is None else self._bwrap_fd
        argv = [
            "mailexec-launch", "--status-fd", str(status_fd), "--exec-fd", str(target_fd),
            "--uid", str(uid), "--gid", str(gid), "--home", home,
            "--rlimit-cpu", str(limits.cpu_s), "--rlimit-as", str(limits.as_bytes),
            "--rlimit-nproc", str(limits.nproc), "--rlimit-fsize", str(limits.fsize_bytes),
            "--rlimit-nofile", str(limits.nofile),
        ]
        if cgroup is not None:
            argv += ["--cgroup", str(cgroup)]
        if self._bwrap_fd is None:
            return argv + ["--", argv0]
        return argv + ["--keep-fd", str(exec_fd), "--"] + _bwrap_args(exec_fd, home, uid, gid)

    @staticmethod
    def _read_status(status_r: int) -> bytes:
        os.set_blocking(status_r, False)
        try:
            return os.read(status_r, 512)
        except BlockingIOError:
            return b""
        finally:
            os.close(status_r)

    @staticmethod
    async def _remove_cgroup(cgroup: Path, leftovers: bool) -> None:
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
            if not leftovers:
                _kill_cgroup(cgroup)
                leftovers = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _result(
        status: int | None, report: bytes, timed_out: bool, run: _Run, duration: float
    ) -> RunResult:
        exit_status = signum = None
        launch_error = _describe_launch_error(report) if report else None
        if status is not None and launch_error is None:
            if os.WIFSIGNALED(status):
                signum = os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                exit_status = os.WEXITSTATUS(status)
        return RunResult(
            exit_status=exit_status,
            signal=signum,
            timed_out=timed_out,
            output=bytes(run.captured),
            output_bytes_total=run.output_total,
            duration_s=duration,
            launch_error=launch_error,
        )


_CHECK_SCRIPT = b"""#!/bin/sh
grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/self/status
echo "ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
echo "uid_map: $(cat /proc/self/uid_map)"
setsid sleep 3117.5 </dev/null >/dev/null 2>&1 &
sleep 0.2
exit 0
"""
_CHECK_UID = 65534
_ESCAPEE_CMDLINE = b"sleep\x003117.5\x00"


def _escapees() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if cmdline.read() == _ESCAPEE_CMDLINE:
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def async_self_check(settings: Settings) -> dict[str, object]:
    """Run a ``#!/bin/sh`` probe as uid 65534 through the real path; report what works."""
    report: dict[str, object] = {"ok": False}
    try:
        sandbox = Sandbox.start(settings)
    except SandboxUnavailable as exc:
        report["error"] = str(exc)
        return report
    report["isolation"] = sandbox.isolation
    fd = sealed_memfd("self-check", _CHECK_SCRIPT)
    try:
        limits = RunLimits.from_settings(settings, timeout_s=10, max_output_bytes=65536)
        result = await sandbox.run(fd, "self-check", _CHECK_UID, _CHECK_UID, "/nonexistent",
                                   b"", b"", limits)
    finally:
        os.close(fd)
        sandbox.close()
    report["launch_error"] = result.launch_error
    lines = dict(line.partition(":")[::2] for line in result.output.decode().splitlines())
    ids = f"{_CHECK_UID}\t{_CHECK_UID}\t{_CHECK_UID}\t{_CHECK_UID}"
    report["privilege_drop"] = (lines.get("Uid", "").strip() == ids
                                and lines.get("Gid", "").strip() == ids
                                and lines.get("Groups", "").strip() == "")
    report["no_new_privs"] = lines.get("NoNewPrivs", "").strip() == "1"
    report["netns"] = lines.get("ifaces", "").split() == ["lo"] if settings.sandbox_network \
        else None
    # in bwrap's user namespace only the user's own uid is mapped
    report["bwrap"] = ("4294967295" not in lines.get("uid_map", "4294967295")
                       if settings.sandbox_bwrap else None)
    for _ in range(40):  # a SIGKILLed escapee disappears once init reaps it
        if not (leftovers := _escapees()):
            break
        await asyncio.sleep(0.05)
    report["escapee_killed"] = not leftovers
    for pid in leftovers:  # the check must not leave its own escapee behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report["cgroup_kill"] = bool(sandbox.isolation["cgroup_kill"]) and report["escapee_killed"]
    report["ok"] = (result.exit_status == 0 and result.launch_error is None
                    and all(report[k] is not False for k in
                            ("privilege_drop", "no_new_privs", "netns", "bwrap")))
    return report


def self_check(settings: Settings) -> dict[str, object]:
    """What the sandbox can do here, for ``mailexec serve executor --self-check``.

    Keys: ok, isolation, launch_error, privilege_drop, no_new_privs, netns (None
    when not configured), bwrap (None when not configured), escapee_killed,
    cgroup_kill, and error when the sandbox could not start at all.
    """
    return asyncio.run(async_self_check(settings))
