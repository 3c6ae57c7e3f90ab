"""Hostile programs, registered as trusted and run through the real pipeline
(ingest → RabbitMQ → executor → sandbox) as throwaway uids.

After every attack: the executor is ready (``/readyz`` 200), the next ordinary delivery
works, and no process of the attacker's uid is alive. Each test also checks what the
attack itself achieved, from the files the program wrote in its home. What stops each
attack, and what a deployment must add, is in docs/security.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServiceProcess
from tests.executor.helpers import Homes, Pipeline, message
from tests.helpers import processes_of
from tests.security.conftest import HOSTILE_EXECUTOR_ENV, wait_no_processes

pytestmark = pytest.mark.timeout(120)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def attack(stack: Pipeline, homes: Homes, executor: ServiceProcess, program: str,
                 body: bytes | None = None, states: tuple[str, ...] = ("delivered", "bounced"),
                 setup: Any = None, timeout: float = 40.0) -> tuple[dict[str, Any], Path, int]:
    """Deliver one message to an account running ``program``; then check the executor is
    healthy, nothing of the uid survives, and an ordinary delivery works."""
    uid, gid, home = homes.make()
    if setup:
        setup(home, uid, gid)
    addr = f"{program}-{uid}@example.org"
    await stack.account(addr, uid, gid, home, [program])
    mid = await stack.submit(addr, body or message(program))
    rcpt = await stack.wait_state(mid, states=states, timeout=timeout)
    left = await wait_no_processes(uid, timeout=10)
    assert not left, f"{program}: processes of uid {uid} still alive: {left}"
    r = httpx.get(executor.url + "/readyz", timeout=5)  # noqa: ASYNC210
    assert r.status_code == 200, f"executor not ready after {program}: {r.text}"
    assert executor.proc is not None and executor.proc.poll() is None, "executor died"
    # the next ordinary delivery
    uid2, gid2, home2 = homes.make()
    addr2 = f"ok-{uid2}@example.org"
    await stack.account(addr2, uid2, gid2, home2, ["ok"])
    mid2 = await stack.submit(addr2, message("after " + program))
    after = await stack.wait_state(mid2, timeout=30)
    assert after["state"] == "delivered", f"delivery after {program}: {after}"
    assert (home2 / "ok.log").read_text() == "ok\n"
    return rcpt, home, uid


def outcome(home: Path, name: str) -> dict[str, str]:
    """OK/DENIED lines of ./<name>.out → {step: "OK" | "DENIED <errno text>"}."""
    res = {}
    for line in (home / f"{name}.out").read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word in ("OK", "DENIED"):
            step, _, why = rest.partition(" ") if word == "DENIED" else (rest, "", "")
            res[step if word == "DENIED" else rest] = word if word == "OK" else f"DENIED {why}"
    return res


async def test_setuid_setgid_root_refused(stack: Pipeline, homes: Homes, executor: Any) -> None:
    rcpt, home, uid = await attack(stack, homes, executor, "privesc")
    assert rcpt["state"] == "delivered", rcpt
    res = outcome(home, "privesc")
    for step in ("setuid0", "setgid0", "setgroups0", "setresuid0", "seteuid0"):
        assert res[step].startswith("DENIED"), (step, res)
    ids = [line for line in (home / "privesc.out").read_text().splitlines() if line.startswith("IDS")]
    assert ids == [f"IDS {uid} {uid} {uid} {uid}"], ids
    suid_out = home / "privesc.suid"
    if suid_out.exists():  # a setuid-root binary ran under no_new_privs: no root gained
        assert not (Path("/etc") / f"mailexec-pwned-{uid}").exists()


async def test_executor_environment_fds_memory_unreadable(
    stack: Pipeline, homes: Homes, executor: ServiceProcess
) -> None:
    rcpt, home, _ = await attack(stack, homes, executor, "procspy")
    assert rcpt["state"] == "delivered", rcpt
    text = (home / "procspy.out").read_text()
    res = outcome(home, "procspy")
    for step in ("parent-environ", "parent-mem", "parent-maps", "parent-fd-dir", "parent-fd-open",
                 "parent-cwd", "parent-ptrace", "parent-kill0", "init-environ"):
        assert res[step].startswith("DENIED"), (step, text)
    assert "LEAKS 0" in text, text
    ppid = int(text.split("PPID ", 1)[1].split()[0])
    # its parent is its PID namespace's pid 1 (root's, it only waits): the executor and
    # the spawner are not even in its /proc (test_containment: test_proc_shows_only_the_run)
    assert ppid == 1, text


async def test_writing_outside_home_refused(stack: Pipeline, homes: Homes, executor: Any,
                                            mx_env: dict[str, str]) -> None:
    homes.make()  # another user's home for it to try
    rcpt, home, uid = await attack(stack, homes, executor, "escape")
    res = outcome(home, "escape")
    text = (home / "escape.out").read_text()
    for step in ("root-dir", "etc", "trusted-dir", "var-lib", "homes-base"):
        assert res[step].startswith("DENIED"), (step, text)
    others = [line for line in text.splitlines() if line.startswith("OTHER-HOMES")][0].split()
    assert int(others[1]) >= 1 and others[3] == "0", text
    leaf = f"mailexec-pwned-{uid}"
    for d in ("/", "/etc", str(executor.trusted_dir), "/var/lib", str(homes.base)):
        assert not (Path(d) / leaf).exists()
    # its /tmp was its own (a private tmpfs): nothing landed in the host's
    assert res["tmp"] == "OK" and not Path("/tmp", leaf).exists(), text  # noqa: ASYNC240


async def test_no_network_not_even_loopback(stack: Pipeline, homes: Homes, executor: Any) -> None:
    ports = [5672, 5432, int(stack.policy_url.rsplit(":", 1)[1]),
             int(executor.url.rsplit(":", 1)[1])]

    def setup(home: Path, uid: int, gid: int) -> None:
        lines = [f"127.0.0.1 {p}" for p in ports] + ["::1 5672", "1.1.1.1 53", "10.0.0.1 80"]
        (home / "targets").write_text("\n".join(lines) + "\n")
        os.chown(home / "targets", uid, gid)

    rcpt, home, _ = await attack(stack, homes, executor, "netcat", setup=setup)
    res = outcome(home, "netcat")
    assert len(res) == len(ports) + 3, res
    assert all(v.startswith("DENIED") for v in res.values()), res


@pytest.mark.parametrize("program, expect", [
    ("forkbomb", "timed_out"),
    ("memhog", "killed"),
    ("spin", "killed"),
    ("sleeper", "timed_out"),
])
async def test_resource_attacks_end_and_leave_nothing(
    stack: Pipeline, homes: Homes, executor: ServiceProcess, program: str, expect: str
) -> None:
    assert executor.proc is not None
    rss_before = rss_kib(executor.proc.pid)
    rcpt, home, uid = await attack(stack, homes, executor, program)
    assert rcpt["state"] == "bounced", rcpt
    run = rcpt["programs"][-1]
    if expect == "timed_out":
        assert run["timed_out"], run
    else:  # the CPU rlimit (SIGXCPU, then SIGKILL) or the timeout ended it
        assert run["timed_out"] or run["signal"] in (signal.SIGXCPU, signal.SIGKILL), run
    if program == "memhog":
        refused = (home / "memhog.out").read_text()
        mib = int(refused.split()[2])
        assert mib <= int(HOSTILE_EXECUTOR_ENV["MAILEXEC_RLIMIT_AS_BYTES"]) // 2**20, refused
    assert rss_kib(executor.proc.pid) - rss_before < 100 * 1024


async def test_setsid_double_fork_escapee_is_killed(stack: Pipeline, homes: Homes, executor: Any
                                                    ) -> None:
    rcpt, home, uid = await attack(stack, homes, executor, "escapee")
    assert rcpt["state"] == "delivered", rcpt
    pid = int((home / "escapee.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or pid not in processes_of(uid, zombies=True)  # noqa: ASYNC240


async def test_one_gib_to_stdout(stack: Pipeline, homes: Homes, executor: ServiceProcess) -> None:
    assert executor.proc is not None
    rss_before = rss_kib(executor.proc.pid)
    rcpt, _, _ = await attack(stack, homes, executor, "flood", timeout=60)
    assert rcpt["state"] == "bounced", rcpt  # output is a failure (SPEC §3.7)
    run = rcpt["programs"][-1]
    assert len(run["output_excerpt"].encode()) <= 65536 + 1024
    assert run["output_excerpt"].startswith("AAAA")
    grew = rss_kib(executor.proc.pid) - rss_before
    assert grew < 100 * 1024, f"executor RSS grew by {grew} KiB while capturing 1 GiB"


async def test_closing_stdin_early_on_10_mib(stack: Pipeline, homes: Homes, executor: Any) -> None:
    body = message("big", "x" * 76 + "\n") + (b"y" * 1023 + b"\n") * 10 * 1024
    assert len(body) > 10 * 2**20
    rcpt, _, _ = await attack(stack, homes, executor, "earlyclose", body=body)
    assert rcpt["state"] == "delivered", rcpt  # EPIPE is not a failure


def _trusted_files(trusted: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in trusted.iterdir()
            if p.is_file()}


async def test_program_cannot_replace_its_trusted_copy(
    stack: Pipeline, homes: Homes, executor: Any, mx_env: dict[str, str]
) -> None:
    trusted = executor.trusted_dir
    rcpt, home, _ = await attack(stack, homes, executor, "replace")
    before = _trusted_files(trusted)
    assert rcpt["state"] == "delivered", rcpt
    res = outcome(home, "replace")
    assert "FILES 0" not in (home / "replace.out").read_text(), "it saw no trusted copy to attack"
    assert res and all(v.startswith("DENIED") for v in res.values()), res
    assert _trusted_files(trusted) == before
    assert not [p for p in trusted.iterdir() if p.name.startswith(".evil")]


async def test_swapped_or_symlinked_trusted_copy_never_runs(
    stack: Pipeline, homes: Homes, executor: ServiceProcess, mx_env: dict[str, str],
    tmp_path: Path
) -> None:
    """Someone with write access to the trusted directory (or a race on it) swaps the disk
    copy for other bytes or a symlink, while deliveries run and across an executor
    restart (which empties the memfd cache). The registered bytes must run, or nothing."""
    trusted = executor.trusted_dir
    impostor = tmp_path / "impostor"
    shutil.copy(executor_binary(stack), impostor)
    # the impostor behaves as "impostor" whatever name it runs under: a wrapper script
    # would be refused as an interpreter, so compile a tiny one instead
    src = tmp_path / "imp.c"
    src.write_text('#include <stdio.h>\nint main(void){FILE*f=fopen("IMPOSTOR-RAN","w");'
                   'if(f)fclose(f);char b[4096];while(fread(b,1,4096,stdin)>0){}return 0;}\n')
    await asyncio.to_thread(
        lambda: os.system(f"cc -O2 -o {impostor} {src}"))  # noqa: S605 - fixed paths
    copies = [p for p in trusted.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert copies, "the executor keeps no disk copies; nothing to swap"
    stop = asyncio.Event()

    async def flip() -> None:
        i = 0
        while not stop.is_set():
            for p in copies:
                tmp = p.with_name(f".flip-{i}")
                try:
                    if i % 2:
                        tmp.symlink_to(impostor)
                    else:
                        shutil.copy(impostor, tmp)
                        os.chmod(tmp, 0o755)
                    os.replace(tmp, p)
                except OSError:
                    pass
            i += 1
            await asyncio.sleep(0.01)

    flipper = asyncio.create_task(flip())
    try:
        for restart in (False, True):
            if restart:
                executor.stop()
                executor.start()
            rcpt, home, _ = await attack(stack, homes, executor, "ok")
            assert rcpt["state"] in ("delivered", "bounced"), rcpt
            assert not (home / "IMPOSTOR-RAN").exists(), "swapped bytes ran"
            if rcpt["state"] == "delivered":
                assert (home / "ok.log").read_text() == "ok\n"
    finally:
        stop.set()
        await flipper
        for p in trusted.iterdir():
            if p.name.startswith(".flip-"):
                p.unlink()


def executor_binary(stack: Pipeline) -> str:
    return "/bin/true"
