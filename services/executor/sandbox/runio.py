"""The I/O of one run: stdin streaming, output capture, the timeout, the outcome.

Trusts
    The spawner's wait status and status-pipe report (it is the parent of the run).
    Nothing the program writes is interpreted: output is bytes, counted and capped.

Defends against (test)
    - A program that never reads stdin, or stops early: stdin is written without
      blocking from the loop; EPIPE is not a failure
      (test_sandbox: test_program_that_stops_reading_early_succeeds).
    - A program that floods stdout/stderr: captured up to ``max_output_bytes``, the
      rest read and discarded, never a reason to kill it
      (test_sandbox: test_huge_output_is_capped_not_killed_and_still_fails).
    - A program that sleeps forever: the wall-clock timeout kills its PID namespace
      (test_sandbox: test_sleep_forever_is_killed_by_the_timeout).
    - Launch errors posing as program output: they come from the status pipe
      (test_spawner: test_launch_errors_come_from_the_status_pipe_not_output).
    - A forged exit status: the status pipe is written only by the slot's pid 1
      (root) and by the child before exec (close-on-exec: the program never holds it).

Does not
    Start or reap anything (``spawner.py``), or decide what a failure means
    (``chain.py``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from shared.settings import Settings

log = logging.getLogger(__name__)

_WRITE_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
OUTPUT_EOF_GRACE_S = 2.0

# errno values at exec (or just before it) that pass: the per-uid process limit, memory,
# descriptor tables, a binary being written. SPEC §3.7: defer (4.3.0), never bounce.
TEMPORARY_EXEC_ERRNOS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                                   errno.ETXTBSY})


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float
    max_output_bytes: int
    cpu_s: int
    as_bytes: int
    nproc: int
    fsize_bytes: int
    nofile: int
    tmp_bytes: int = 64 << 20  # size of the run's private /tmp and /dev/shm (each)

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
            tmp_bytes=settings.sandbox_tmp_bytes,
        )


@dataclass(frozen=True)
class LaunchError:
    """A failure of the spawner's child before the program ran (read from the status pipe)."""

    step: str
    errno: int | None
    text: str

    @property
    def at_exec(self) -> bool:
        return self.step == "exec"

    @property
    def temporary(self) -> bool:
        """Worth retrying later: EAGAIN (process limit), ENOMEM, EMFILE, ENFILE, ETXTBSY."""
        return self.errno in TEMPORARY_EXEC_ERRNOS


def parse_launch_error(report: bytes) -> LaunchError:
    step, _, number = report.decode("ascii", "replace").strip().partition(" ")
    try:
        code = int(number)
    except ValueError:
        return LaunchError(step="?", errno=None, text=f"launch failed: {report!r}")
    if step == "refuse-root":
        return LaunchError(step, code, "the spawner refused to run the program as uid 0 or gid 0")
    name = errno.errorcode.get(code, str(code))
    return LaunchError(step, code, f"launch failed at {step}: {os.strerror(code)} ({name})")


@dataclass(frozen=True)
class RunResult:
    exit_status: int | None
    signal: int | None
    timed_out: bool
    output: bytes
    output_bytes_total: int
    duration_s: float
    launch: LaunchError | None = None

    @property
    def launch_error(self) -> str | None:
        """Why nothing ran (the launch report in words), None when the program ran."""
        return self.launch.text if self.launch else None

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


class RunIO:
    """Stdin, output and exit of one running program, driven by loop callbacks.

    ``exited`` resolves to the wait status the spawner reports; ``kill`` asks for
    the run's slot's pid 1 to be SIGKILLed (its whole PID namespace goes with it).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stdin_fd: int,
        output_fd: int,
        chunks: list[memoryview],
        max_output: int,
        exited: asyncio.Future[int],
        kill: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.stdin_fd: int | None = stdin_fd
        self.output_fd: int | None = output_fd
        self.chunks = chunks
        self.max_output = max_output
        self.captured = bytearray()
        self.output_total = 0
        self.exited = exited
        self.kill = kill
        self.output_done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(stdin_fd, False)
        os.set_blocking(output_fd, False)
        loop.add_reader(output_fd, self._on_output)
        self._feed()

    async def wait(self, timeout_s: float, on_timeout: Callable[[], None]) -> tuple[int | None, bool]:
        """(wait status or None, timed out); the run is dead and its output drained after."""
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            on_timeout()

        timer = self.loop.call_later(timeout_s, expire)
        try:
            await asyncio.shield(self.exited)
        finally:
            timer.cancel()
            if not self.exited.done() or self.exited.exception() is not None:
                self.kill()  # cancelled, or the spawner died: the program must not go on
            self._close_stdin()
            if self.output_fd is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self.output_done), OUTPUT_EOF_GRACE_S)
                except TimeoutError:  # every writer is dead with the PID namespace; never seen
                    log.warning("output pipe still open after the program's namespace died")
                self.close_output()
        return self.exited.result(), timed_out

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

    def result(self, status: int | None, report: bytes, timed_out: bool,
               duration: float) -> RunResult:
        exit_status = signum = None
        launch = None
        for line in report.splitlines():
            if line.startswith(b"status "):  # the program's own, from its slot's pid 1
                status = int(line[7:])
            elif line.strip():
                launch = launch or parse_launch_error(line)
        if status is not None and launch is None:
            if os.WIFSIGNALED(status):
                signum = os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                exit_status = os.WEXITSTATUS(status)
        return RunResult(
            exit_status=exit_status,
            signal=signum,
            timed_out=timed_out,
            output=bytes(self.captured),
            output_bytes_total=self.output_total,
            duration_s=duration,
            launch=launch,
        )


def read_status_pipe(status_r: int) -> bytes:
    """What the run's slot and the program's process wrote: "<step> <errno>" lines for
    a failure before exec, then "status <wait status>" when the program ended (absent
    when the slot was killed: timeout, cancellation)."""
    os.set_blocking(status_r, False)
    try:
        return os.read(status_r, 512)
    except BlockingIOError:
        return b""
    finally:
        os.close(status_r)
