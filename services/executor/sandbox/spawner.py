"""The executor's end of ``mailexec-spawner`` (spawner.c): finding it, starting it, speaking to it.

Trusts
    The helper binary only when root owns it and its directories and nobody else can
    write any of them (:func:`verify_helper`): root executes it, so a writable copy
    would be a root shell for whoever can write it. It is built at install time
    (``make venv``, the Dockerfile), never compiled here.
    The spawner's replies (it is root's own helper).

Defends against (test)
    - Running a helper someone else could have replaced: the executor refuses to start
      and names the path and the command that builds it
      (test_spawner: test_an_unsafe_or_missing_helper_is_refused).
    - Requests the spawner refuses (uid/gid 0, below ``min_uid``, forbidden uids):
      :class:`IdentityRefused`, never retried as if temporary
      (test_containment: test_spawner_refuses_*, which speak to the socket directly).
    - The spawner dying: every run in flight fails with :class:`LaunchFailed`
      (retryable); its runs die with it (PDEATHSIG in each slot's pid 1)
      (test_spawner: test_spawner_killed_mid_run_fails_retryably_and_restarts).

Protocol
    See spawner.c. ``_REQ``/``_REPLY`` mirror its structs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from services.executor.errors import IdentityRefused, LaunchFailed, SandboxUnavailable
from services.executor.programs import check_root_owned_path
from services.executor.sandbox.runio import RunLimits

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
SPAWNER_SOURCE = SOURCE_DIR / "spawner.c"
BUILD_COMMAND = "make venv   (from the source tree; or: make helpers)"

# keep in sync with struct req_spawn / struct reply in spawner.c
_REQ = struct.Struct("=6I6q")
_REPLY = struct.Struct("=2I2i")
_OP_SPAWN, _OP_KILL, _OP_OPEN = 1, 2, 3
_OP_SPAWNED, _OP_EXITED, _OP_OPENED, _OP_READY = 1, 2, 3, 4
_READY_TIMEOUT_S = 10.0
_FD_SIZE = struct.calcsize("i")


def spawner_path() -> Path:
    """Where the install puts the helper: ``<sys.prefix>/libexec/mailexec-spawner``."""
    return Path(sys.prefix) / "libexec" / "mailexec-spawner"


def compile_command(target: Path) -> str:
    return (f"cc -O2 -Wall -Werror -static -o {target} {SPAWNER_SOURCE} "
            f"&& chown 0:0 {target} && chmod 0755 {target}")


def verify_helper(path: Path) -> Path:
    """``path`` if it is a regular file root owns and only root can write; else refuse."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SandboxUnavailable(
            f"the sandbox helper {path} is not built; build it at install time with: "
            f"{BUILD_COMMAND} (or, as root: {compile_command(path)})") from None
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != 0:
        problem = f"is owned by uid {st.st_uid}, not root"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise SandboxUnavailable(
            f"refusing to run the sandbox helper {path}: it {problem}; rebuild it with: "
            f"{BUILD_COMMAND} (or, as root: {compile_command(path)})")
    check_root_owned_path(path.parent, "sandbox helper directory")
    return path


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SpawnerClient:
    """One ``mailexec-spawner`` process and the socket to it.

    ``spawn`` sends a request with the run's fds and resolves to (pid, pidfd, exit
    future) without blocking the loop; replies are read by a loop reader. EOF (the
    spawner died) fails every in-flight run with LaunchFailed; the next ``spawn``
    starts a new spawner while this process still may (it is root).
    """

    def __init__(self, path: Path, netns_fds: Sequence[int], min_uid: int,
                 forbidden_uids: Sequence[int]) -> None:
        self.path = path
        self._netns_fds = list(netns_fds)
        self._min_uid = min_uid
        self._forbidden = sorted(set(forbidden_uids))
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = 0
        # id -> (spawned future, exit-status future)
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, int]], asyncio.Future[int]]] = {}
        self._opening: dict[int, asyncio.Future[int]] = {}
        self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self, sock_fd: int) -> list[str]:
        argv = [str(self.path), "--sock", str(sock_fd), "--parent", str(os.getpid()),
                "--min-uid", str(self._min_uid)]
        for fd in self._netns_fds:
            argv += ["--netns", str(fd)]
        for uid in self._forbidden:
            argv += ["--forbid-uid", str(uid)]
        return argv

    def _start(self) -> None:
        if os.geteuid() != 0:
            raise LaunchFailed("the spawner is gone and this process may no longer start one "
                               "(it dropped its privileges): restart the executor")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                self.argv(theirs.fileno()), executable=self.path, stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *self._netns_fds), env={}, close_fds=True)
        except OSError as exc:
            ours.close()
            raise SandboxUnavailable(f"cannot start the sandbox helper {self.path}: {exc}") from exc
        finally:
            theirs.close()
        self._await_ready(ours)
        ours.setblocking(False)
        self._sock = ours
        self._loop = None

    def _await_ready(self, sock: socket.socket) -> None:
        """The spawner's READY, or SandboxUnavailable: no silent weaker fallback."""
        assert self._proc is not None
        sock.settimeout(_READY_TIMEOUT_S)
        try:
            data = sock.recv(_REPLY.size)
        except OSError:
            data = b""
        if len(data) == _REPLY.size and _REPLY.unpack(data)[0] == _OP_READY:
            return
        sock.close()
        code = self._reap(timeout=2.0)
        raise SandboxUnavailable(
            f"the sandbox helper {self.path} did not start (exit status {code}; its reason is "
            "on the executor's stderr, \"mailexec-spawner: cannot start: ...\"); the executor "
            "runs no program without its namespaces")

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
        uid: int, gid: int, home: str, argv0: str, tz: str, limits: RunLimits, netns: int,
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
        data = _REQ.pack(_OP_SPAWN, rid, uid, gid, netns, 0, limits.cpu_s, limits.as_bytes,
                         limits.nproc, limits.fsize_bytes, limits.nofile,
                         limits.tmp_bytes) + strings
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
        # cancelled while waiting: the reply, when it comes, kills the orphan (_on_readable)
        pid, pidfd = await spawned
        return rid, pid, pidfd, exited

    async def open_as(self, path: str, uid: int, gid: int) -> int:
        """An O_RDONLY fd of ``path`` opened with uid/gid's rights; a regular file only.

        OSError(errno) when the user can't open it; ENOEXEC: not a regular file;
        IdentityRefused for a uid the spawner never uses.
        """
        loop = asyncio.get_running_loop()
        if self._sock is None:
            self._start()
        self._attach(loop)
        self._ids = (self._ids + 1) & 0xFFFFFFFF
        rid = self._ids
        data = _REQ.pack(_OP_OPEN, rid, uid, gid, 0, 0, 0, 0, 0, 0, 0, 0) + path.encode() + b"\0"
        opened: asyncio.Future[int] = loop.create_future()
        self._opening[rid] = opened
        try:
            await self._send(data, [])
            return await opened
        finally:
            self._opening.pop(rid, None)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] \
            if fds else []
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
        """Ask the spawner to SIGKILL the pid 1 of run ``rid``'s slot; False if it can't
        be asked."""
        if self._sock is None:
            return False
        try:
            self._sock.send(_REQ.pack(_OP_KILL, rid, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
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
                    entry[0].set_exception(_refusal(value))
                else:
                    entry[0].set_result((pid, pidfd))
                    pidfd = None
                if pidfd is not None:
                    os.close(pidfd)
            elif op == _OP_OPENED:
                fd = fds.pop(0) if fds else None
                waiter = self._opening.pop(rid, None)
                if waiter is None or waiter.done():
                    pass
                elif pid < 0 or fd is None:
                    waiter.set_exception(IdentityRefused("the spawner refuses this uid/gid")
                                         if value == errno.EPERM else
                                         OSError(value, os.strerror(value)))
                else:
                    waiter.set_result(fd)
                    fd = None
                if fd is not None:
                    os.close(fd)
            elif op == _OP_EXITED and entry is not None:
                del self._pending[rid]
                if not entry[1].done():
                    entry[1].set_result(value)
            for fd in fds:
                os.close(fd)

    def _died(self) -> None:
        """EOF: fail everything in flight (retryable), reap it; the next spawn restarts it.

        After the executor dropped root nothing can start another spawner: then the
        executor is stopped (SIGTERM to itself: it drains and exits) so that its
        supervisor starts a whole new one, instead of deferring every delivery.
        """
        self._detach()
        code = self._reap(timeout=2.0)
        log.error("the spawner exited (status %s); failing %d in-flight runs",
                  code, len(self._pending))
        self._fail_pending("the spawner died during the run")
        if os.geteuid() != 0:
            log.critical("the spawner died and this executor can't start another one (it "
                         "dropped its privileges): stopping, to be restarted")
            os.kill(os.getpid(), signal.SIGTERM)

    def _fail_pending(self, why: str) -> None:
        opening, self._opening = self._opening, {}
        for waiter in opening.values():
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_exception(LaunchFailed(why))
                waiter.exception()
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
        """Closing the socket makes the spawner kill every live run and exit."""
        self._detach()
        self._reap(timeout=2.0)
        self._fail_pending("the sandbox was closed during the run")


def _refusal(value: int) -> LaunchFailed:
    if value == errno.EPERM:
        return IdentityRefused("the spawner refuses to run programs as this uid/gid "
                               "(0, below MAILEXEC_MIN_UID, or a reserved service uid)")
    if value == errno.ENONET:
        return LaunchFailed("the spawner has no such network namespace")
    return LaunchFailed(f"the spawner could not start the program: {os.strerror(value)}")
