"""The sandbox runs real programs as real throwaway uids: what a user would notice.

No mocks: small C programs compiled here and ``#!/bin/sh`` scripts, run through the
spawner, privilege drop, namespaces and cgroups of this machine.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor.errors import LaunchFailed
from services.executor.programs import ExecHandle
from services.executor.sandbox import RunLimits, RunResult, Sandbox, async_self_check
from tests.executor.sandboxing import opened as open_insecure
from tests.executor.sandboxing import test_settings
from tests.helpers import processes_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")

PROBE = r"""
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
extern char **environ;
int main(void) {
    char line[512], cwd[4096];
    FILE *status = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, status))
        if (!strncmp(line, "Uid:", 4) || !strncmp(line, "Gid:", 4) ||
            !strncmp(line, "Groups:", 7) || !strncmp(line, "NoNewPrivs:", 11))
            fputs(line, stdout);
    fclose(status);
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
    for (char **e = environ; *e; e++) printf("env=%s\n", *e);
    DIR *fds = opendir("/proc/self/fd");
    struct dirent *d;
    while ((d = readdir(fds)))
        if (d->d_name[0] != '.' && atoi(d->d_name) != dirfd(fds)) printf("fd=%s\n", d->d_name);
    closedir(fds);
    printf("pgid_is_pid=%d sid_is_pid=%d\n", getpgrp() == getpid(), getsid(0) == getpid());
    printf("setuid0=%d\n", setuid(0));
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(5672)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int rc = connect(s, (struct sockaddr *) &a, sizeof a), err = rc ? errno : 0;
    printf("connect=%d errno=%d\n", rc, err);
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r); printf("nofile=%llu\n", (unsigned long long) r.rlim_cur);
    getrlimit(RLIMIT_FSIZE, &r); printf("fsize=%llu\n", (unsigned long long) r.rlim_cur);
    getrlimit(RLIMIT_CORE, &r); printf("core=%llu\n", (unsigned long long) r.rlim_cur);
    return 0;
}
"""

PROGRAMS = {
    "probe": PROBE,
    "echo": r"""
#include <unistd.h>
int main(void) { char b[65536]; ssize_t n;
  while ((n = read(0, b, sizeof b)) > 0) if (write(1, b, n) != n) return 1;
  return 0; }""",
    "true": "int main(void) { return 0; }",
    "exit3": "int main(void) { return 3; }",
    "forkbomb": r"""
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) { int n = 0;
  for (;;) { pid_t p = fork();
    if (p == 0) { pause(); _exit(0); }
    if (p < 0) { printf("forks=%d errno=%d\n", n, errno); return 0; }
    if (++n > 10000) { printf("forks=%d unlimited\n", n); return 0; } } }""",
    "memhog": r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) { char *p = malloc(512u << 20);
  if (!p) { puts("malloc failed"); return 0; }
  memset(p, 1, 512u << 20); puts("got 512 MiB"); return 0; }""",
    "spin": "int main(void) { for (volatile unsigned long i = 0;; i++); }",
    "sleeper": "#include <unistd.h>\nint main(void) { for (;;) pause(); }",
    "escapee": r"""
#include <unistd.h>
int main(void) {
  if (fork() == 0) { setsid(); if (fork() == 0) { close(0); close(1); close(2);
      for (;;) pause(); } _exit(0); }
  sleep(1); return 0; }""",
    "bigout": r"""
#include <string.h>
#include <unistd.h>
int main(void) { static char b[1 << 20]; memset(b, 'x', sizeof b);
  for (int i = 0; i < 100; i++) { size_t off = 0;
    while (off < sizeof b) { ssize_t n = write(1, b + off, sizeof b - off);
      if (n < 0) return 1; off += n; } }
  return 0; }""",
    "earlyclose": r"""
#include <unistd.h>
int main(void) { char b[16]; if (read(0, b, sizeof b) <= 0) return 1; close(0); return 0; }""",
}


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """A traversable scratch dir (mode 0755) for homes and compiled programs."""
    base = Path(tempfile.mkdtemp(prefix="mailexec-sandbox-", dir="/var/tmp"))  # runs get a private /tmp
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def binaries(world: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    bindir = world / "bin"
    bindir.mkdir(mode=0o755)
    for name, source in PROGRAMS.items():
        src = bindir / f"{name}.c"
        src.write_text(source)
        out[name] = bindir / name
        subprocess.run(["cc", "-O1", "-o", str(out[name]), str(src)], check=True)
    return out


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox.start(test_settings())
    try:
        yield box
    finally:
        box.close()


def limits(**overrides: float) -> RunLimits:
    values: dict[str, float] = dict(timeout_s=20, max_output_bytes=65536, cpu_s=10,
                                    as_bytes=1 << 30, nproc=64, fsize_bytes=1 << 20,
                                    nofile=64)
    values.update(overrides)
    return RunLimits(**values)  # type: ignore[arg-type]


def make_home(world: Path, uid: int, mode: int = 0o755) -> Path:
    home = world / f"home-{uid}"
    home.mkdir(exist_ok=True)
    os.chown(home, uid, uid)
    os.chmod(home, mode)
    return home


async def run(
    box: Sandbox, handle: ExecHandle, uid: int, home: str | Path = "/nonexistent",
    prefix: bytes = b"", body: bytes | memoryview = b"", **limit_overrides: float,
) -> RunResult:
    with handle:
        return await box.run(handle.fd, "prog", uid, uid, str(home), prefix, body,
                             limits(**limit_overrides))


def report(result: RunResult) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in result.output.decode().splitlines():
        status_line = line.split(":")[0] in ("Uid", "Gid", "Groups", "NoNewPrivs")
        key, _, value = line.partition(":" if status_line else "=")
        fields.setdefault(key, []).append(value.strip())
    return fields


async def test_runs_as_the_user_with_nothing_else(
    sandbox: Sandbox, binaries: dict[str, Path], world: Path
) -> None:
    home = make_home(world, 64001)
    result = await run(sandbox, open_insecure(str(binaries["probe"])), 64001, home)
    assert result.exit_status == 0 and result.launch_error is None
    seen = report(result)
    assert seen["Uid"] == ["64001\t64001\t64001\t64001"]
    assert seen["Gid"] == ["64001\t64001\t64001\t64001"]
    assert seen["Groups"] == [""]
    assert seen["NoNewPrivs"] == ["1"]
    assert seen["cwd"] == [str(home)]
    assert sorted(seen["env"]) == ["AGENT=mailexec", "TZ=UTC"]
    assert seen["fd"] == ["0", "1", "2"]
    assert seen["pgid_is_pid"] == ["1 sid_is_pid=1"]
    assert seen["setuid0"] == ["-1"]
    assert seen["nofile"] == ["64"] and seen["fsize"] == [str(1 << 20)] and seen["core"] == ["0"]
    # no network at all: lo is down in the shared empty namespace
    assert seen["connect"] == [f"-1 errno={errno.ENETUNREACH}"]
    assert not result.ok  # it wrote output


async def test_without_netns_the_broker_is_reachable(binaries: dict[str, Path]) -> None:
    """Proves the no-network assertion above is meaningful on this machine."""
    box = Sandbox.start(test_settings(sandbox_network=False))
    try:
        result = await run(box, open_insecure(str(binaries["probe"])), 64002)
    finally:
        box.close()
    assert report(result)["connect"] == ["0 errno=0"]


@pytest.mark.parametrize("case", ["missing", "unreachable"])
async def test_cwd_falls_back_to_tmp(
    sandbox: Sandbox, binaries: dict[str, Path], world: Path, case: str
) -> None:
    uid = 64003 if case == "missing" else 64004
    home: str | Path = "/nonexistent/home"
    if case == "unreachable":
        home = make_home(world, uid, mode=0o700)
        os.chown(home, 64999, 64999)  # someone else's, mode 0700
    result = await run(sandbox, open_insecure(str(binaries["probe"])), uid, home)
    assert report(result)["cwd"] == ["/tmp"]


async def test_stdin_is_prefix_then_body_exactly(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    prefix = b"Return-Path: <a@example.net>\nDelivered-To: b@example.org\n"
    body = bytes(range(256)) * 4096 + b"\r\nend\x00"
    result = await run(sandbox, open_insecure(str(binaries["echo"])), 64005,
                       prefix=prefix, body=body, max_output_bytes=2 << 20)
    assert result.exit_status == 0
    assert result.output == prefix + body
    assert result.output_bytes_total == len(prefix) + len(body)


async def test_success_and_failure_status(sandbox: Sandbox, binaries: dict[str, Path]) -> None:
    good = await run(sandbox, open_insecure(str(binaries["true"])), 64006, body=b"hi\n")
    assert good.ok and good.exit_status == 0 and good.output == b""
    bad = await run(sandbox, open_insecure(str(binaries["exit3"])), 64006)
    assert bad.exit_status == 3 and not bad.ok and bad.launch_error is None


async def test_fork_bomb_is_contained_by_nproc(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    result = await run(sandbox, open_insecure(str(binaries["forkbomb"])), 64007, nproc=20)
    forks, _, err = result.output.decode().strip().partition(" ")
    assert int(forks.removeprefix("forks=")) < 20
    assert err == f"errno={errno.EAGAIN}"
    assert processes_of(64007) == []  # the paused children died with the delivery


async def test_memory_hog_is_stopped_by_as_limit(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    result = await run(sandbox, open_insecure(str(binaries["memhog"])), 64008,
                       as_bytes=64 << 20)
    assert result.output == b"malloc failed\n"


async def test_cpu_spin_is_stopped_by_cpu_limit(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    result = await run(sandbox, open_insecure(str(binaries["spin"])), 64009, cpu_s=1)
    # pid 1 of its namespace ignores SIGXCPU; the hard limit a second later is SIGKILL
    assert result.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert not result.timed_out and result.exit_status is None and not result.ok


async def test_sleep_forever_is_killed_by_the_timeout(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    started = time.monotonic()
    result = await run(sandbox, open_insecure(str(binaries["sleeper"])), 64010, timeout_s=0.5)
    assert result.timed_out and result.signal == signal.SIGKILL and not result.ok
    assert time.monotonic() - started < 5


async def test_setsid_double_fork_escapee_is_killed(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    assert sandbox.isolation["cgroup_kill"], "this machine has a writable cgroup v2 tree"
    result = await run(sandbox, open_insecure(str(binaries["escapee"])), 64011)
    assert result.exit_status == 0 and result.ok
    assert processes_of(64011) == []


async def test_huge_output_is_capped_not_killed_and_still_fails(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    result = await run(sandbox, open_insecure(str(binaries["bigout"])), 64012)
    assert result.exit_status == 0 and result.signal is None and not result.timed_out
    assert result.output == b"x" * 65536
    assert result.output_bytes_total == 100 << 20
    assert not result.ok


async def test_program_that_stops_reading_early_succeeds(
    sandbox: Sandbox, binaries: dict[str, Path]
) -> None:
    body = b"y" * (10 << 20)
    result = await run(sandbox, open_insecure(str(binaries["earlyclose"])), 64013,
                       prefix=b"Delivered-To: x\n", body=memoryview(body))
    assert result.ok, result


async def test_uid_zero_is_refused(sandbox: Sandbox, binaries: dict[str, Path]) -> None:
    with pytest.raises(LaunchFailed, match="uid 0"):
        await run(sandbox, open_insecure(str(binaries["probe"])), 0)





async def test_execute_permission_is_enforced_for_the_user_as_a_launch_error(
    sandbox: Sandbox, binaries: dict[str, Path], world: Path
) -> None:
    owner_only = world / "owner-only"
    shutil.copy(binaries["true"], owner_only)
    os.chmod(owner_only, 0o744)  # root may execute, the user may not
    result = await run(sandbox, open_insecure(str(owner_only)), 64016)
    assert result.launch_error is not None and "exec" in result.launch_error
    assert "Permission denied" in result.launch_error
    assert result.output == b"" and result.exit_status is None and not result.ok


async def test_shell_script_runs_through_its_fd(sandbox: Sandbox, world: Path) -> None:
    script = world / "script.sh"
    script.write_text('#!/bin/sh\nread first\necho "$(id -u) $first $(pwd)"\n')
    os.chmod(script, 0o755)
    handle = open_insecure(str(script))
    assert handle.is_script
    result = await run(sandbox, handle, 64017, body=b"hello\nrest\n")
    assert result.output == b"64017 hello /tmp\n" and result.exit_status == 0


async def test_many_runs_concurrently(sandbox: Sandbox, binaries: dict[str, Path]) -> None:
    import asyncio

    body = b"z" * 200_000
    with open_insecure(str(binaries["echo"])) as handle:
        results = await asyncio.gather(*(
            sandbox.run(handle.fd, "echo", 64100 + i % 8, 64100 + i % 8, "/", b"P\n", body,
                        limits(max_output_bytes=1 << 20))
            for i in range(64)
        ))
    assert all(r.output == b"P\n" + body and r.exit_status == 0 for r in results)



async def test_self_check_reports_every_layer_working_here() -> None:
    report = await async_self_check(test_settings())
    assert report["ok"] and report["launch_error"] is None, report
    assert report["privilege_drop"] and report["no_new_privs"] and report["netns"]
    assert report["umask"] and report["pid_namespace"] and report["private_tmp"]
    assert report["cgroup_kill"] and report["escapee_killed"]


async def test_each_run_gets_the_network_namespace_it_asks_for() -> None:
    """Index 0 (none): the shared empty namespace; 1 (egress): the fd given at start
    (egress.py makes the real one; any namespace proves the plumbing); egress without
    one is a temporary LaunchFailed, never a run in a wider network."""
    from services.executor.programs import sealed_memfd
    from services.executor.sandbox.namespaces import create_empty_netns

    class Holder:  # what egress.EgressNamespace is to the sandbox: an fd it owns
        def __init__(self) -> None:
            self.fd = create_empty_netns()
            self.ino = os.fstat(self.fd).st_ino

        def close(self) -> None:
            os.close(self.fd)
            self.fd = -1

    egress = Holder()
    box = Sandbox.start(test_settings(), egress=egress)
    without = Sandbox.start(test_settings())
    fd = sealed_memfd("netns", b"#!/bin/sh\nreadlink /proc/self/ns/net\n")
    try:
        seen = {}
        for network in ("none", "egress"):
            result = await box.run(fd, "netns", 64020, 64020, "/", b"", b"", limits(),
                                   network=network)
            seen[network] = result.output.decode().strip()
        assert seen["egress"] == f"net:[{egress.ino}]"
        assert seen["none"] != seen["egress"] and seen["none"].startswith("net:[")
        assert box.isolation["egress_network"] and not without.isolation["egress_network"]
        with pytest.raises(LaunchFailed, match="no egress namespace"):
            await without.run(fd, "netns", 64020, 64020, "/", b"", b"", limits(),
                              network="egress")
    finally:
        os.close(fd)
        box.close()
        without.close()
    assert egress.fd == -1  # the sandbox closed what it was given


def test_the_cgroup_subtree_is_discovered_from_proc_self_cgroup() -> None:
    from services.executor.sandbox.cgroups import discover_v2_dir

    own = discover_v2_dir()
    assert own is not None and (own / "cgroup.procs").exists()
    assert str(os.getpid()) in (own / "cgroup.procs").read_text().split()
    box = Sandbox.start(test_settings())  # no MAILEXEC_SANDBOX_CGROUP_ROOT: discovered
    try:
        assert str(box.isolation["cgroup_dir"]).startswith(str(own / "mailexec") + "/")
    finally:
        box.close()


async def test_a_home_under_tmp_is_still_the_programs_home() -> None:
    """Each run has its own /tmp; a home the account can reach under the host's /tmp is
    bound back (SPEC §3.6: chdir to the home), nothing else of the host's /tmp is."""
    from services.executor.programs import sealed_memfd

    base = Path(tempfile.mkdtemp(prefix="mailexec-tmphome-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 64021, 64021)
    (base / "sibling").write_text("host's")
    box = Sandbox.start(test_settings())
    fd = sealed_memfd("tmphome", b"#!/bin/sh\npwd\nls ..\necho mine > ./written\n")
    try:
        result = await box.run(fd, "tmphome", 64021, 64021, str(home), b"", b"", limits())
        assert result.output.decode().split() == [str(home), "home"], result
        assert (home / "written").read_text() == "mine\n"  # noqa: ASYNC240
        os.chmod(base, 0o700)  # the account can't reach it on the host: not bound either
        result = await box.run(fd, "tmphome", 64021, 64021, str(home), b"", b"", limits())
        assert result.output.decode().split()[0] == "/tmp", result
    finally:
        os.close(fd)
        box.close()
        shutil.rmtree(base, ignore_errors=True)


async def test_a_reused_slot_shows_nothing_of_the_previous_run() -> None:
    """Runs reuse a slot (one PID and mount namespace whose pid 1 runs one program at a
    time, slot.h): the next run, of another account, finds nothing the previous one left
    - no file in /tmp or /dev/shm, no process (a setsid'd one included), no mount of its
    home, no fd. It is the same namespace (checked), so this can't pass by accident; a
    run killed at its timeout takes its slot with it and the next run gets a new one."""
    from services.executor.programs import sealed_memfd

    base = Path(tempfile.mkdtemp(prefix="mailexec-slot-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 64032, 64032)
    leave = (b"#!/bin/sh\nreadlink /proc/self/ns/pid\n"
             b"echo secret > /tmp/left; echo secret > /dev/shm/left\n"
             b"setsid sleep 3117.75 </dev/null >/dev/null 2>&1 &\nsleep 0.1\n")
    look = (b"#!/bin/sh\nreadlink /proc/self/ns/pid\n"
            b"echo tmp: $(ls -A /tmp) shm: $(ls -A /dev/shm)\n"
            b"echo procs: $$ /proc/[0-9]*\n"
            b"echo fds: $(ls /proc/$$/fd | tr '\\n' ' ')\n"
            b"grep -c mailexec-slot- /proc/self/mountinfo\nexit 0\n")
    box = Sandbox.start(test_settings())
    leave_fd, look_fd = sealed_memfd("leave", leave), sealed_memfd("look", look)
    try:
        first = await box.run(leave_fd, "leave", 64032, 64032, str(home), b"", b"", limits())
        assert first.exit_status == 0, first
        assert processes_of(64032) == [], "the setsid'd process ended with its run"
        second = await box.run(look_fd, "look", 64033, 64033, "/", b"", b"", limits())
        ns, tmp, procs, fds, mounts = second.output.decode().splitlines()
        assert ns == first.output.decode().strip(), "the same slot served both runs"
        assert tmp == "tmp: shm:", tmp
        shell, *listed = procs.split()[1:]  # a glob: no process of its own
        assert listed == ["/proc/1", f"/proc/{shell}"], procs  # the slot's pid 1 and us
        assert mounts == "0", "the first run's home is no longer bound"
        # the look run left /tmp empty: its tmpfs is kept for the next run of the slot,
        # and a home under the host's /tmp is still found and bound back
        pwd = sealed_memfd("pwd", b"#!/bin/sh\nreadlink /proc/self/ns/pid\npwd\n")
        try:
            seen = await box.run(pwd, "pwd", 64032, 64032, str(home), b"", b"", limits())
            after = await box.run(pwd, "pwd", 64032, 64032, str(home), b"", b"", limits())
        finally:
            os.close(pwd)
        assert seen.output.decode().split() == [ns, str(home)], seen
        assert after.output.decode().split() == [ns, str(home)], after
        killed = await box.run(leave_fd, "leave", 64032, 64032, str(home), b"", b"",
                               limits(timeout_s=0.05))
        assert killed.timed_out
        third = await box.run(look_fd, "look", 64033, 64033, "/", b"", b"", limits())
        assert third.exit_status == 0 and third.output.decode().split()[0] != ns, third
        # a fresh slot's run holds the same fds as the reused one's: none was carried over
        assert third.output.decode().splitlines()[3] == fds
    finally:
        os.close(leave_fd)
        os.close(look_fd)
        box.close()
        shutil.rmtree(base, ignore_errors=True)
