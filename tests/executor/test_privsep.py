"""Privilege separation (issue 13 item 2): the executor's Python process drops root for good.

Against the real pipeline (policy, ingest, executor started as root by ``mailexec serve``),
read from ``/proc``: the executor's Python process runs as its service user with every
capability set empty, no-new-privs and not dumpable; the spawner is the process that
keeps privilege; deliveries, timeouts and trusted copies still work; an unsafe trusted
directory makes the executor refuse to start. The drop itself, the import-path anchors,
the forbidden-uid list and ``capset.h`` are tested in isolation too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.executor.privdrop import (
    PrivDropError,
    ServiceUser,
    can_reach,
    describe_capabilities,
    forbidden_uids,
    privileges_of,
    resolve_service_user,
)
from shared.sysexits import EX_OSERR, EX_UNAVAILABLE
from tests.conftest import free_port
from tests.executor.helpers import Homes, Pipeline, message
from tests.helpers import processes_of

ROOT = Path(__file__).resolve().parents[2]
CAPSET_HEADER = ROOT / "services" / "executor" / "sandbox" / "capset.h"
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
CAP_DAC_OVERRIDE, CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN = 1, 5, 6, 7, 21
SPAWNER_NEEDS = {CAP_SETUID, CAP_SETGID, CAP_KILL}
SPAWNER_MAY_HOLD = SPAWNER_NEEDS | {CAP_SYS_ADMIN, CAP_DAC_OVERRIDE}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop is tested as root")


def service_user(pipe: Pipeline) -> ServiceUser:
    return resolve_service_user(pipe.env.get("MAILEXEC_EXECUTOR_USER", ""))


def executor_pid(pipe: Pipeline) -> int:
    proc = pipe.procs["executor"].proc
    assert proc is not None and proc.poll() is None, "the executor is not running"
    return proc.pid


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def spawner_pid(pipe: Pipeline) -> int:
    spawners = [pid for pid in children_of(executor_pid(pipe))
                if os.readlink(f"/proc/{pid}/exe").endswith("mailexec-spawner")]
    assert len(spawners) == 1, f"expected one spawner, found {spawners}"
    return spawners[0]


def caps(privileges: dict[str, str]) -> dict[str, int]:
    return {key: int(privileges[key], 16) for key in CAP_SETS}


def bits(mask: int) -> set[int]:
    return {bit for bit in range(64) if mask >> bit & 1}


# ---- the running executor -----------------------------------------------------------------

def test_executor_python_process_holds_no_privilege(pipe: Pipeline) -> None:
    user = service_user(pipe)
    pid = executor_pid(pipe)
    got = privileges_of(pid)
    assert got["Uid"].split() == [str(user.uid)] * 4, got
    assert got["Gid"].split() == [str(user.gid)] * 4, got
    assert got["Groups"] == "", got
    assert caps(got) == dict.fromkeys(CAP_SETS, 0), got
    assert got["NoNewPrivs"] == "1", got
    # not dumpable: the kernel hands /proc/PID's files to root instead of the process's uid
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0
    print(f"\nexecutor {pid}: " + " ".join(f"{k}={got[k]}" for k in ("Uid", "Gid", *CAP_SETS,
                                                                       "NoNewPrivs")))


def test_spawner_holds_what_runs_need(pipe: Pipeline) -> None:
    pid = spawner_pid(pipe)
    got = caps(privileges_of(pid))
    print(f"\nspawner {pid}: " + " ".join(f"{k}={v:016x}" for k, v in got.items())
          + f"\n  effective: {', '.join(describe_capabilities(got['CapEff']))}")
    assert SPAWNER_NEEDS <= bits(got["CapEff"]), describe_capabilities(got["CapEff"])


def test_spawner_keeps_only_what_it_needs(pipe: Pipeline) -> None:
    got = caps(privileges_of(spawner_pid(pipe)))
    for key in ("CapEff", "CapPrm", "CapBnd"):
        extra = bits(got[key]) - SPAWNER_MAY_HOLD
        assert not extra, f"{key}: {describe_capabilities(sum(1 << b for b in extra))}"
    assert got["CapInh"] == got["CapAmb"] == 0


def test_account_uid_cannot_read_or_trace_the_executor(pipe: Pipeline, homes: Homes) -> None:
    """Dumpable 0: /proc/PID/mem, environ (the service token) and ptrace need
    CAP_SYS_PTRACE, even for a process of the service uid itself; signals need CAP_KILL."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run the probe as another uid")
    pid = executor_pid(pipe)
    probe = (
        "import ctypes, os\n"
        f"pid = {pid}\n"
        "out = {}\n"
        "for name in ('mem', 'environ', 'maps'):\n"
        "    try:\n"
        "        with open(f'/proc/{pid}/{name}', 'rb') as f:\n"
        "            f.read(16)\n"
        "        out[name] = 'READ'\n"
        "    except OSError as exc:\n"
        "        out[name] = type(exc).__name__\n"
        "try:\n"
        "    os.kill(pid, 0)\n"
        "    out['kill'] = 'SENT'\n"
        "except OSError as exc:\n"
        "    out['kill'] = type(exc).__name__\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out['ptrace'] = 'ATTACHED' if libc.ptrace(16, pid, 0, 0) == 0 else 'EPERM'\n"
        "print(out)\n"
    )
    uid, gid, _ = homes.make()
    user = service_user(pipe)
    for who, (run_uid, run_gid) in {"account": (uid, gid), "service": (user.uid, user.gid)}.items():
        done = subprocess.run([python, "-c", probe], user=run_uid, group=run_gid, extra_groups=[],
                              capture_output=True, text=True, cwd="/", timeout=30, check=True)
        result = eval(done.stdout)  # noqa: S307 - our own probe's dict literal
        for name in ("mem", "environ", "maps"):
            assert result[name] == "PermissionError", (who, result)
        assert result["ptrace"] == "EPERM", (who, result)
        if who == "account":
            assert result["kill"] == "PermissionError", result


async def test_delivery_and_timeout_work_after_the_drop(pipe: Pipeline, homes: Homes,
                                                        tprog: bytes) -> None:
    uid, gid, home = homes.make()
    await pipe.account(f"privsep-{uid}@example.org", uid, gid, home, ["probe"])
    mid = await pipe.submit(f"privsep-{uid}@example.org", message("after the drop"))
    rcpt = await pipe.wait_state(mid)
    assert rcpt["state"] == "delivered", rcpt
    assert (home / "probe.id").read_text().split() == [str(uid), str(gid)] * 2
    # the copy the (dropped) executor wrote is the service user's, and it runs
    user = service_user(pipe)
    trusted = Path(pipe.env["MAILEXEC_TRUSTED_DIR"])
    copy = trusted / hashlib.sha256(tprog).hexdigest()
    assert (os.stat(trusted).st_uid, os.stat(trusted).st_gid) == (user.uid, user.gid)
    assert copy.stat().st_uid in (0, user.uid) and stat.S_IMODE(copy.stat().st_mode) == 0o755
    # a program that overruns its timeout is killed, with whatever it left (cgroup.kill, as
    # the service user in its delegated cgroup, and the spawner's group kill)
    await pipe.settings(program_timeout_s=2)
    try:
        uid2, gid2, home2 = homes.make()
        await pipe.account(f"sleeper-{uid2}@example.org", uid2, gid2, home2, ["sleeper"])
        mid2 = await pipe.submit(f"sleeper-{uid2}@example.org", message("sleep"))
        rcpt2 = await pipe.wait_state(mid2, timeout=30)
        assert rcpt2["state"] == "bounced", rcpt2
        assert rcpt2["programs"][0]["timed_out"] is True, rcpt2
        for _ in range(50):
            if not processes_of(uid2):
                break
            await asyncio.sleep(0.1)
        assert not processes_of(uid2)
    finally:
        await pipe.settings(program_timeout_s=60)


def test_executor_cgroup_is_delegated_to_the_service_user(pipe: Pipeline) -> None:
    user = service_user(pipe)
    roots = [root for root in pipe.cgroup_roots if root.exists()]
    if not roots:
        pytest.skip("no cgroup v2 tree here: runs are killed by process group only")
    # <root>/instance-<name>/executor-<pid>-<random> (sandbox/cgroups.py)
    mine = list(roots[-1].glob(f"instance-*/executor-{executor_pid(pipe)}-*"))
    assert len(mine) == 1, list(roots[-1].glob("**/executor-*"))
    assert os.stat(mine[0]).st_uid == user.uid
    for name in ("cgroup.procs", "cgroup.kill"):
        assert os.stat(mine[0] / name).st_uid == user.uid
    # what other executors (of this instance or another) share stays root's
    assert os.stat(mine[0].parent).st_uid == os.stat(roots[-1]).st_uid == 0


# ---- refusing to start ----------------------------------------------------------------------

def run_executor(pipe: Pipeline, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailexec", "serve", "executor"],
                          env={**pipe.env, **env}, capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


@pytest.mark.parametrize("problem", ["owned by an account uid", "writable by an account's group",
                                     "parent owned by an account uid"])
def test_trusted_dir_writable_by_an_account_uid_refuses_start(
    pipe: Pipeline, homes: Homes, tmp_path: Path, problem: str
) -> None:
    uid, gid, _ = homes.make()
    parent = Path(homes.base) / f"trusted-parent-{uid}"
    parent.mkdir(mode=0o755)
    trusted = parent / "trusted"
    trusted.mkdir(mode=0o755)
    if problem == "owned by an account uid":
        os.chown(trusted, uid, gid)
        why = f"owned by uid {uid}, not root or the executor's service user"
    elif problem == "writable by an account's group":
        os.chown(trusted, 0, gid)
        os.chmod(trusted, 0o775)
        why = "writable by group or others"
    else:
        os.chown(parent, uid, gid)
        why = f"{parent} is owned by uid {uid}, not root"
    done = run_executor(pipe, MAILEXEC_TRUSTED_DIR=str(trusted))
    assert done.returncode == 78, done.stderr
    assert "refusing to start" in done.stderr and why in done.stderr, done.stderr
    assert os.stat(trusted).st_uid == (uid if problem == "owned by an account uid" else 0)


def test_service_user_root_refuses_start(pipe: Pipeline) -> None:
    for spec in ("0", "root", "12345:0"):
        done = run_executor(pipe, MAILEXEC_EXECUTOR_USER=spec)
        assert done.returncode == 78, done.stderr
        assert "service user must be unprivileged" in done.stderr, done.stderr


def _refused(pipe: Pipeline, key: str, **env: str) -> tuple[int, str]:
    """Start one more executor of the pipeline's (its own cgroup root and instance)."""
    sp = pipe.start("executor", env, wait=False, key=key)
    assert sp.proc is not None
    try:
        code = sp.proc.wait(60)
    finally:
        sp.kill()
    return code, sp.log_path.read_text(errors="replace")


def test_a_taken_metrics_port_refuses_start_with_71_after_the_drop(pipe: Pipeline) -> None:
    """shared.service: the port is bound before anything is consumed; the privileged
    set-up and the drop before it are unchanged."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code, log = _refused(pipe, "executor-port-taken",
                             MAILEXEC_EXECUTOR_METRICS_PORT=str(port))
    assert code == EX_OSERR, log
    assert "privileges dropped for good" in log, log  # the drop came first, as before
    assert f"refusing to start: cannot listen on 127.0.0.1:{port}" in log, log
    assert "MAILEXEC_EXECUTOR_METRICS_PORT" in log and "Traceback" not in log, log


def test_an_unreachable_database_refuses_start_with_69(pipe: Pipeline) -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/mailexec"
    code, log = _refused(pipe, "executor-no-db", MAILEXEC_DATABASE_URL=dead,
                         MAILEXEC_EXECUTOR_METRICS_PORT=str(free_port()),
                         MAILEXEC_EXECUTOR_START_TIMEOUT_S="2")
    assert code == EX_UNAVAILABLE, log
    assert "refusing to start: cannot reach the database or the broker" in log, log


# ---- the drop in isolation (a fresh interpreter each: it can't be undone) ------------------

DROP_SCRIPT = """
import json, sys, threading, time
from services.executor.privdrop import (PrivDropError, ServiceUser, anchor_import_paths,
                                        drop_privileges, privileges_of)
user = ServiceUser({uid}, {gid}, "test")
if {threads}:
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
anchors = anchor_import_paths(user)
try:
    drop_privileges(user)
except PrivDropError as exc:
    print(json.dumps({{"error": str(exc), "uid": privileges_of()["Uid"]}}))
    sys.exit(3)
import decimal, fractions, http.cookiejar  # first imported now: lazy imports after the drop
import os
print(json.dumps({{"privileges": privileges_of(), "anchors": anchors, "home": os.environ["HOME"],
                  "decimal": str(decimal.Decimal("1.5") * 2)}}))
"""


def run_drop(uid: int, gid: int, *, threads: bool = False) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", DROP_SCRIPT.format(uid=uid, gid=gid, threads=threads)],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_drop_empties_every_set_and_lazy_imports_still_work() -> None:
    code, out = run_drop(64777, 64778)
    assert code == 0, out
    got = out["privileges"]
    assert isinstance(got, dict)
    assert got["Uid"].split() == ["64777"] * 4 and got["Gid"].split() == ["64778"] * 4
    assert got["Groups"] == "" and got["NoNewPrivs"] == "1"
    assert caps(got) == dict.fromkeys(CAP_SETS, 0), got
    assert out["decimal"] == "3.0" and out["home"] == "/nonexistent"
    # only what the user could not read is anchored: pyenv's Python under /root (0700) here,
    # nothing in the image (/opt/venv and the base image's Python are world-readable)
    anchors = out["anchors"]
    assert isinstance(anchors, dict)
    user = ServiceUser(64777, 64778, "test")
    assert all(not can_reach(old, user) for old in anchors)
    stdlib = os.path.dirname(os.__file__)
    assert (stdlib in anchors) == (not can_reach(stdlib, user))


def test_drop_refuses_with_threads() -> None:
    code, out = run_drop(64777, 64777, threads=True)
    assert code == 3
    assert "threads at the privilege drop" in str(out["error"])
    assert str(out["uid"]).split() == ["0"] * 4  # nothing was half done


def test_service_user_resolution() -> None:
    assert resolve_service_user("12345").uid == 12345
    assert (resolve_service_user("12345:23456").uid, resolve_service_user("12345:23456").gid) \
        == (12345, 23456)
    default = resolve_service_user("")
    try:
        import pwd

        entry = pwd.getpwnam("mailexec")
        assert (default.uid, default.gid) == (entry.pw_uid, entry.pw_gid)
    except KeyError:
        assert (default.uid, default.gid) == (10001, 10001)
    for bad in ("0", "root", "0:5", "5:0", "no-such-user-here", ":5"):
        with pytest.raises(PrivDropError):
            resolve_service_user(bad)


def test_forbidden_uids_are_root_the_service_and_the_data_plane_owners(tmp_path: Path) -> None:
    fake = tmp_path / "proc"
    for pid, comm, uids in ((100, "postgres", "101\t101\t101\t101"),
                            (101, "beam.smp", "106\t106\t106\t106"),
                            (102, "epmd", "103\t103\t103\t107"),
                            (103, "bash", "64000\t64000\t64000\t64000")):
        (fake / str(pid)).mkdir(parents=True)
        (fake / str(pid) / "comm").write_text(comm + "\n")
        (fake / str(pid) / "status").write_text(f"Name:\t{comm}\nUid:\t{uids}\n")
    (fake / "self").mkdir()
    assert forbidden_uids(10001, fake) == [0, 101, 103, 106, 107, 10001]


def test_forbidden_uids_on_this_host_include_postgres_and_rabbitmq() -> None:
    owners = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() in (
                    "postgres", "beam.smp"):
                owners.add(os.stat(f"/proc/{entry}").st_uid)
        except OSError:
            continue
    assert owners, "PostgreSQL and RabbitMQ run on this host for the tests"
    assert owners | {0, 10001} <= set(forbidden_uids(10001))


# ---- capset.h (what the spawner includes to narrow itself) ---------------------------------

CAPSET_DRIVER = r"""
#define _GNU_SOURCE
#include "capset.h"
#include <grp.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

/* narrow to argv[1]; print /proc/self/status's Cap lines; then clone3 into the cgroup
 * argv[2] (if given) a child that drops to uid argv[3] and waits to be SIGKILLed. */
int main(int argc, char **argv)
{
    char line[256];
    FILE *status;

    if (narrow_capabilities(strtoull(argv[1], NULL, 0)) != 0) {
        printf("narrow %s\n", strerror(errno));
        return 1;
    }
    status = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, status))
        if (strncmp(line, "Cap", 3) == 0)
            fputs(line, stdout);
    fclose(status);
    if (argc == 4) {
        int cg = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC), st;
        unsigned uid = (unsigned) atoi(argv[3]);
        struct clone_args ca = {.flags = CLONE_INTO_CGROUP, .exit_signal = SIGCHLD,
                                .cgroup = (uint64_t) cg};
        long pid = syscall(SYS_clone3, &ca, sizeof ca);

        if (pid < 0) {
            printf("clone3 %s\n", strerror(errno));
            return 0;
        }
        if (pid == 0) {
            setsid();
            if (setgroups(0, NULL) || setgid(uid) || setuid(uid))
                _exit(3);
            pause();
            _exit(0);
        }
        usleep(50000);
        printf("kill %s\n", kill(-(pid_t) pid, SIGKILL) == 0 ? "ok" : strerror(errno));
        waitpid(pid, &st, 0);
        printf("child %s\n", WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL ? "killed" : "other");
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def capset_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("capset")
    (out / "driver.c").write_text(CAPSET_DRIVER)
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", f"-I{CAPSET_HEADER.parent}", "-o",
                    str(out / "driver"), str(out / "driver.c")], check=True)
    return out / "driver"


def drive(driver: Path, keep: int, *args: str) -> dict[str, str]:
    done = subprocess.run([str(driver), hex(keep), *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    pairs = (line.partition(" ") for line in done.stdout.replace(":\t", " ").splitlines())
    return {key: value for key, _, value in pairs}


SPAWNER_CAPS = sum(1 << cap for cap in (CAP_SETUID, CAP_SETGID, CAP_KILL, CAP_SYS_ADMIN,
                                        CAP_DAC_OVERRIDE))


def test_capset_narrows_every_set(capset_driver: Path) -> None:
    got = drive(capset_driver, SPAWNER_CAPS)
    held = int(privileges_of()["CapPrm"], 16)  # what root has here (no CAP_SYS_RESOURCE)
    assert int(got["CapEff"], 16) == int(got["CapPrm"], 16) == SPAWNER_CAPS & held
    assert int(got["CapBnd"], 16) == SPAWNER_CAPS & int(privileges_of()["CapBnd"], 16)
    assert int(got["CapInh"], 16) == int(got["CapAmb"], 16) == 0


def test_capset_spawner_set_still_spawns_into_a_delegated_cgroup(capset_driver: Path) -> None:
    """SPAWNER_CAPS suffice to clone3 into the service user's run cgroup, drop to an
    account and SIGKILL its group; without CAP_DAC_OVERRIDE the clone3 is refused (why it
    is in the set while the Python side makes the run cgroups)."""
    root = Path("/sys/fs/cgroup/unified")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 hierarchy here")
    base = root / f"mailexec-test-capset-{os.getpid()}"
    run = base / "run"
    run.mkdir(parents=True)
    try:
        for path in (run, run / "cgroup.procs"):
            os.chown(path, 10001, 10001)
        got = drive(capset_driver, SPAWNER_CAPS, str(run), "64779")
        assert (got.get("kill"), got.get("child")) == ("ok", "killed"), got
        without = drive(capset_driver, SPAWNER_CAPS & ~(1 << CAP_DAC_OVERRIDE), str(run), "64779")
        assert without.get("clone3") == "Permission denied", without
    finally:
        run.rmdir()
        base.rmdir()

