"""The persistent spawner (spawner.c) specifically: restarts, cgroup pool reuse, load,
the installed helper's checks.

The guarantees every run must have are in test_sandbox.py; the attacks in
tests/security/test_containment.py; these are the spawner's own failure modes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor.errors import LaunchFailed, SandboxUnavailable
from services.executor.programs import sealed_memfd
from services.executor.sandbox import RunLimits, RunResult, Sandbox, spawner_path, verify_helper
from tests.executor.sandboxing import test_settings
from tests.helpers import processes_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")

LIMITS = RunLimits(timeout_s=20, max_output_bytes=65536, cpu_s=10, as_bytes=1 << 30,
                   nproc=64, fsize_bytes=1 << 20, nofile=64)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox.start(test_settings())
    assert sandbox.isolation["cgroup_kill"], "this machine has a writable cgroup v2 tree"
    try:
        yield sandbox
    finally:
        sandbox.close()


async def script_run(box: Sandbox, text: bytes, uid: int, body: bytes = b"") -> RunResult:
    fd = sealed_memfd("test", text)
    try:
        return await box.run(fd, "prog", uid, uid, "/nonexistent", b"", body, LIMITS)
    finally:
        os.close(fd)


async def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def test_spawner_killed_mid_run_fails_retryably_and_restarts(box: Sandbox) -> None:
    spawner = box.spawner
    assert spawner is not None and spawner.pid is not None
    first_pid = spawner.pid
    task = asyncio.create_task(script_run(box, b"#!/bin/sh\nexec sleep 30\n", 64201))
    assert await wait_for(lambda: processes_of(64201) != [])
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(LaunchFailed, match="spawner died"):
        await asyncio.wait_for(task, 10)
    assert await wait_for(lambda: processes_of(64201) == []), "the orphaned program was killed"
    result = await script_run(box, b"#!/bin/sh\necho again\n", 64201)
    assert result.output == b"again\n" and result.exit_status == 0
    assert spawner.pid not in (None, first_pid)  # a new spawner took over


async def test_reused_cgroups_never_carry_a_previous_escapee(box: Sandbox) -> None:
    where = b"#!/bin/sh\ngrep ^0:: /proc/self/cgroup\n"
    first = await script_run(box, where, 64202)
    second = await script_run(box, where, 64202)
    assert first.output == second.output  # the empty cgroup was reused
    escapee = (b"#!/bin/sh\nsetsid sleep 3117.25 </dev/null >/dev/null 2>&1 &\n"
               b"sleep 0.2\ngrep ^0:: /proc/self/cgroup\n")
    escaped = await script_run(box, escapee, 64203)
    assert escaped.exit_status == 0
    assert processes_of(64203) == [], "cgroup.kill took the setsid'd escapee"
    census = (b"#!/bin/sh\ncg=$(grep ^0:: /proc/self/cgroup | cut -d: -f3)\n"
              b"echo $cg\nwc -l < /sys/fs/cgroup/unified$cg/cgroup.procs\n")
    for _ in range(3):
        after = await script_run(box, census, 64204)
        cgroup, count = after.output.decode().split()
        # the escapee was killed by its slot's pid 1 before the run was reported ended, so
        # its cgroup was left empty and may be reused; it holds only this run
        assert cgroup.startswith(escaped.output.decode()[3:].rsplit("/", 1)[0])
        assert count == "2"  # the shell and wc (the slot's pid 1 is not in the run's cgroup)
    assert processes_of(64203) == []


async def test_two_hundred_concurrent_runs(box: Sandbox) -> None:
    body = b"y" * 50_000
    fd = sealed_memfd("cat", b"#!/bin/sh\nexec cat\n")
    try:
        results = await asyncio.gather(*(
            box.run(fd, "cat", 64300 + i % 10, 64300 + i % 10, "/", b"P\n", body,
                    RunLimits(timeout_s=60, max_output_bytes=1 << 20, cpu_s=10,
                              as_bytes=1 << 30, nproc=256, fsize_bytes=1 << 20, nofile=64))
            for i in range(200)
        ))
    finally:
        os.close(fd)
    assert [r.launch_error for r in results] == [None] * 200
    assert all(r.output == b"P\n" + body and r.exit_status == 0 for r in results)
    assert box._cgroups is not None and len(box._cgroups._pool) <= 200
    assert all(processes_of(64300 + i) == [] for i in range(10))


async def test_launch_errors_come_from_the_status_pipe_not_output(box: Sandbox) -> None:
    fd = os.open("/etc/hostname", os.O_RDONLY | os.O_CLOEXEC)  # not executable
    try:
        result = await box.run(fd, "x", 64205, 64205, "/", b"", b"", LIMITS)
    finally:
        os.close(fd)
    assert result.launch_error is not None and "at exec:" in result.launch_error
    assert result.output == b"" and result.exit_status is None



async def test_close_kills_runs_in_flight_and_the_spawner() -> None:
    box = Sandbox.start(test_settings())
    assert box.spawner is not None
    pid = box.spawner.pid
    task = asyncio.create_task(script_run(box, b"#!/bin/sh\nexec sleep 30\n", 64206))
    assert await wait_for(lambda: processes_of(64206) != [])
    box.close()
    assert await wait_for(lambda: processes_of(64206) == [])
    assert pid is not None and not Path(f"/proc/{pid}").exists()  # noqa: ASYNC240
    task.cancel()
    with pytest.raises((asyncio.CancelledError, LaunchFailed)):
        await task


async def test_cancelled_run_leaves_nothing_running(box: Sandbox) -> None:
    task = asyncio.create_task(script_run(box, b"#!/bin/sh\nsleep 30 & exec sleep 31\n", 64207))
    assert await wait_for(lambda: len(processes_of(64207)) == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: processes_of(64207) == [])
    result = await script_run(box, b"#!/bin/sh\necho fine\n", 64207)
    assert result.output == b"fine\n" and result.exit_status == 0


def test_spawner_works_when_the_executor_is_pid_1(tmp_path: Path) -> None:
    """In a container without an init the executor is pid 1. The spawner used to take a
    parent pid of 1 for "my executor died before I armed PDEATHSIG" and exit, so every
    delivery failed in the image (found by `make image-check`)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    script = tmp_path / "pid1.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "from services.executor.programs import sealed_memfd\n"
        "from services.executor.sandbox import RunLimits, Sandbox\n"
        "from tests.executor.sandboxing import test_settings\n"
        "assert os.getpid() == 1, os.getpid()\n"
        "box = Sandbox.start(test_settings())\n"
        "limits = RunLimits(timeout_s=20, max_output_bytes=4096, cpu_s=10, as_bytes=1 << 30,\n"
        "                   nproc=64, fsize_bytes=1 << 20, nofile=64)\n"
        "fd = sealed_memfd('t', b'#!/bin/sh\\necho ran as $(id -u)\\n')\n"
        "res = asyncio.run(box.run(fd, 'prog', 64990, 64990, '/nonexistent', b'', b'', limits))\n"
        "print(res.exit_status, res.output.decode().strip())\n"
        "box.close()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", sys.executable,
                           str(script)], capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["0", "ran", "as", "64990"], done.stdout


def test_an_unsafe_or_missing_helper_is_refused(tmp_path: Path) -> None:
    """Root runs the helper: a copy root doesn't own, or others can write, is refused
    with the path and the command that builds it; nothing is ever compiled at run time."""
    with pytest.raises(SandboxUnavailable, match="not built.*make venv"):
        verify_helper(tmp_path / "mailexec-spawner")
    installed = spawner_path()
    assert verify_helper(installed) == installed  # make test built it, root's alone
    libexec = tmp_path / "libexec"
    libexec.mkdir(mode=0o755)
    copy = libexec / "mailexec-spawner"
    shutil.copy(installed, copy)
    os.chmod(copy, 0o775)
    with pytest.raises(SandboxUnavailable, match="writable by group or others.*make venv"):
        verify_helper(copy)
    os.chmod(copy, 0o755)
    os.chown(copy, 64990, 0)
    with pytest.raises(SandboxUnavailable, match="owned by uid 64990, not root"):
        verify_helper(copy)
    os.chown(copy, 0, 0)
    os.chmod(libexec, 0o777)
    with pytest.raises(SandboxUnavailable, match="writable by group or others"):
        verify_helper(copy)
    os.chmod(libexec, 0o755)
    with pytest.raises(SandboxUnavailable, match="not built"):
        Sandbox.start(test_settings(), helper=libexec / "absent")


def test_a_spawner_that_cannot_start_stops_the_executor_from_starting(tmp_path: Path) -> None:
    """No silent weaker fallback: a helper that exits instead of saying READY (here
    /bin/false standing in for one that can't make its namespaces) refuses the start."""
    libexec = tmp_path / "libexec"
    libexec.mkdir(mode=0o755)
    shutil.copy("/bin/false", libexec / "mailexec-spawner")
    os.chmod(libexec / "mailexec-spawner", 0o755)
    with pytest.raises(SandboxUnavailable, match="did not start.*cannot start"):
        Sandbox.start(test_settings(), helper=libexec / "mailexec-spawner")
