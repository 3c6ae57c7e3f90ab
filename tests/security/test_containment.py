"""Containment, tried as an attacker would (issue 13): a delivered program reaches nothing
of the control plane, outlives nothing, and the one privileged helper refuses what it must
whatever it is asked.

Programs run through the real pipeline (ingest → RabbitMQ → executor → spawner) as
throwaway uids, or through the sandbox and the spawner's socket directly where that is
the thing under test. Each test names the attack; docs/security.md's table lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.executor.errors import ProgramUnresolved
from services.executor.programs import open_insecure
from services.executor.sandbox import Sandbox, spawner_path
from tests.conftest import ServiceProcess, free_port
from tests.executor.helpers import Homes, Pipeline, message
from tests.executor.sandboxing import test_settings
from tests.helpers import processes_of
from tests.netlab import (
    BLOCKED,
    CLUSTER,
    INTERNET,
    METADATA,
    PORT,
    ip_forward_restored,
    need_tools,
    outside_network,
)
from tests.security.conftest import (
    HOSTILE_EXECUTOR_ENV,
    build_hostile,
    purge_queues,
    wait_no_processes,
)

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")]

NAMES = ("contain", "hider", "nprochog", "ok", "sleeper")


@pytest.fixture(scope="module")
def trusted() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailexec-trusted-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def cexec(stack: Pipeline, homes: Homes, trusted: Path,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """This module's executor, and the hostile programs it may run, registered trusted."""
    binary = build_hostile(tmp_path_factory.mktemp("contain"), str(trusted), homes.base)
    proc = stack.start("executor", key="contain-exec",
                       extra_env={**HOSTILE_EXECUTOR_ENV, "MAILEXEC_TRUSTED_DIR": str(trusted)})
    await stack.settings(mode="secure", suspended=False, safe_user=None, program_timeout_s=10,
                         dsn_include_output=True, max_output_bytes=65536)
    for name in NAMES:
        await stack.register(name, binary)
    try:
        yield proc
    finally:
        proc.stop()
        stack.procs.pop("contain-exec", None)
        stack.remove_cgroups()
        await stack.settings(program_timeout_s=60)


def outcome(home: Path, name: str) -> dict[str, str]:
    res = {}
    for line in (home / f"{name}.out").read_text().splitlines():
        word, _, rest = line.partition(" ")
        if word == "OK":
            res[rest] = "OK"
        elif word == "DENIED":
            step, _, why = rest.partition(" ")
            res[step] = f"DENIED {why}"
    return res


def host_sockets() -> list[str]:
    """Every filesystem Unix socket under the host's /run, /var/run, /tmp and /dev/shm:
    PostgreSQL's /var/run/postgresql/.s.PGSQL.5432 here, an MTA's, a database's."""
    found = []
    for top in ("/run", "/var/run", "/tmp", "/dev/shm"):
        for root, dirs, files in os.walk(top):
            if root.count("/") > 4:
                dirs[:] = []
            for name in files:
                path = os.path.join(root, name)
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found.append(path)
                except OSError:
                    continue
    return sorted(set(found))


def host_address() -> str | None:
    """This host's first non-loopback IPv4 address."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            address = s.getsockname()[0]
            return None if address.startswith("127.") else str(address)
    except OSError:
        return None


async def test_host_unix_sockets_tcp_and_proc_are_unreachable(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess
) -> None:
    """The issue's attack: `psql -h /var/run/postgresql -U postgres` from a registered
    program logged in as the superuser. Now every host Unix socket, an abstract socket
    of the host, TCP to every control-plane port and to the host's own address, the
    executor's /proc entry and a file in the host's /tmp are out of reach."""
    sockets = host_sockets()
    assert any("PGSQL" in path for path in sockets), \
        f"PostgreSQL's Unix socket should exist on this host for the attack: {sockets}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0mailexec-test-{os.getpid()}")
    abstract.listen()
    marker = Path(tempfile.mkstemp(prefix="mailexec-host-marker-", dir="/tmp")[1])
    assert cexec.proc is not None
    ports = [5432, 5672, int(stack.policy_url.rsplit(":", 1)[1]),
             int(stack.ingest_url.rsplit(":", 1)[1]), int(cexec.url.rsplit(":", 1)[1])]
    targets = [f"unix {path}" for path in sockets]
    targets += [f"abstract mailexec-test-{os.getpid()}", f"proc {cexec.proc.pid}",
                f"proc {os.getpid()}", f"marker {marker}"]
    targets += [f"tcp 127.0.0.1 {port}" for port in ports]
    if (address := host_address()) is not None:
        targets += [f"tcp {address} {port}" for port in ports]

    uid, gid, home = homes.make()
    (home / "targets").write_text("\n".join(targets) + "\n")
    os.chown(home / "targets", uid, gid)
    try:
        addr = f"contain-{uid}@example.org"
        await stack.account(addr, uid, gid, home, ["contain"])
        mid = await stack.submit(addr, message("contain"))
        rcpt = await stack.wait_state(mid, timeout=30)
    finally:
        abstract.close()
        os.unlink(marker)
    text = (home / "contain.out").read_text()
    assert rcpt["state"] == "delivered", (rcpt, text)
    res = outcome(home, "contain")
    attempted = {k: v for k, v in res.items() if k != "tmp-write"}
    assert len(attempted) == len(targets), text
    assert all(v.startswith("DENIED") for v in attempted.values()), text
    # its own /tmp is writable and private: nothing reached the host's
    assert res["tmp-write"] == "OK"
    assert not os.path.exists("/tmp/contain-was-here")  # noqa: ASYNC240
    assert not await wait_no_processes(uid, timeout=10)


async def test_proc_shows_only_the_run_and_umask_is_077(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess
) -> None:
    uid, gid, home = homes.make()
    (home / "targets").write_text("")
    os.chown(home / "targets", uid, gid)
    addr = f"procview-{uid}@example.org"
    await stack.account(addr, uid, gid, home, ["contain"])
    rcpt = await stack.wait_state(await stack.submit(addr, message("procview")), timeout=30)
    assert rcpt["state"] == "delivered", rcpt
    text = (home / "contain.out").read_text()
    lines = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    # a child of its slot's pid 1 (not pid 1 itself: it keeps ordinary signal semantics);
    # /proc lists those two and nothing else - no other run, no host process
    pid, ppid = lines["PID"].split(" PPID ")
    assert ppid == "1" and int(pid) > 1, text
    assert sorted(int(p) for p in lines["PROCS"].split()) == [1, int(pid)], text
    assert lines["UMASK"] == "0077 FILEMODE 0600", text
    assert (home / "umask.probe").stat().st_mode & 0o777 == 0o600
    assert lines["RUN-ENTRIES"] == "0", text  # /run is a fresh, empty tmpfs


@contextlib.asynccontextmanager
async def alone(cexec: ServiceProcess, amqp_url: str) -> AsyncIterator[None]:
    """The module's executor steps aside, so the executors under test get every job; the
    jobs they leave behind (killed mid-run) are dropped before it comes back."""
    await asyncio.to_thread(cexec.stop)
    try:
        yield
    finally:
        await purge_queues(amqp_url)
        await asyncio.to_thread(cexec.start)


async def test_killing_the_executor_leaves_no_program(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess, mx_env: dict[str, str]
) -> None:
    """kill -9 of the executor while many programs run (each with a setsid'd grandchild):
    every one of them dies at once (the spawner's PDEATHSIG, each run's pid 1's PDEATHSIG,
    the PID namespaces), long before any timeout. Three rounds: it used to leave one
    program in six running, reparented to init."""
    async with alone(cexec, mx_env["MAILEXEC_AMQP_URL"]):
        for round_ in range(3):
            await _kill_round(stack, homes, cexec, round_)


async def _kill_round(stack: Pipeline, homes: Homes, cexec: ServiceProcess, round_: int) -> None:
    victim = await _start_victim(stack, cexec, round_)
    root = stack.cgroup_roots[-1]
    for _ in range(24):
        uid, gid, home = homes.make()
        addr = f"hider-{uid}@example.org"
        await stack.account(addr, uid, gid, home, ["hider"])
        await stack.submit(addr, message("hider"))
    victims: list[int] = []
    for _ in range(200):
        victims = _pids_under(root)
        if len(victims) >= 12:
            break
        await asyncio.sleep(0.05)
    assert len(victims) >= 12, f"the victim executor runs only {victims}"
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    alive = await _survivors(victims, within=3.0)  # the timeout is 10 s
    assert not alive, f"round {round_}: programs outlived their executor: {alive}"
    stack.procs.pop(f"victim-{round_}", None)


async def _start_victim(stack: Pipeline, cexec: ServiceProcess, round_: int) -> ServiceProcess:
    env = {**HOSTILE_EXECUTOR_ENV, "MAILEXEC_TRUSTED_DIR": cexec.env["MAILEXEC_TRUSTED_DIR"]}
    return await stack.astart("executor", key=f"victim-{round_}", extra_env=_own_port(env))


def _own_port(env: dict[str, str]) -> dict[str, str]:
    """Its own metrics port: /readyz must be this executor's, not another's."""
    return {**env, "MAILEXEC_EXECUTOR_METRICS_PORT": str(free_port())}


async def _survivors(pids: list[int], within: float) -> list[int]:
    for _ in range(int(within / 0.05)):
        if not (alive := [p for p in pids if _alive(p)]):
            return []
        await asyncio.sleep(0.05)
    return alive


def _start_leftover(cgroup: Path) -> subprocess.Popen[bytes]:
    cgroup.mkdir()
    leftover = subprocess.Popen(["sleep", "300"])
    (cgroup / "cgroup.procs").write_text(str(leftover.pid))
    return leftover


def _pids_under(root: Path) -> list[int]:
    pids = []
    for procs in root.glob("**/cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


async def test_restart_kills_only_its_own_instances_leftovers(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess, mx_env: dict[str, str]
) -> None:
    async with alone(cexec, mx_env["MAILEXEC_AMQP_URL"]):
        await _two_instances(stack, homes, cexec)


async def _two_instances(stack: Pipeline, homes: Homes, cexec: ServiceProcess) -> None:
    """Two executors, instances A and B, on one host and one cgroup root. Starting B
    leaves A's runs alone; after A dies (kill -9) with a leftover in its cgroup (a
    process no PID namespace holds: what an older executor, or a bug, could leave),
    restarting B doesn't touch it, restarting A kills it."""
    root = Path(f"/sys/fs/cgroup/unified/mailexec-test-{os.getpid()}-instances")
    stack.cgroup_roots.append(root)
    env = {**HOSTILE_EXECUTOR_ENV, "MAILEXEC_SANDBOX_CGROUP_ROOT": str(root),
           "MAILEXEC_TRUSTED_DIR": cexec.env["MAILEXEC_TRUSTED_DIR"]}
    a = await stack.astart("executor", key="instance-a", extra_env=_own_port(
        {**env, "MAILEXEC_EXECUTOR_INSTANCE": "A"}))
    uid, gid, home = homes.make()
    await stack.account(f"sleepy-{uid}@example.org", uid, gid, home, ["sleeper"])
    await stack.submit(f"sleepy-{uid}@example.org", message("sleepy"))
    a_dir = root / "instance-A"
    for _ in range(200):
        if _pids_under(a_dir):
            break
        await asyncio.sleep(0.05)
    a_runs = _pids_under(a_dir)
    assert a_runs, "A never ran the sleeper"
    b = await stack.astart("executor", key="instance-b", extra_env=_own_port(
        {**env, "MAILEXEC_EXECUTOR_INSTANCE": "B"}))
    assert all(_alive(p) for p in a_runs), "starting B killed A's runs"

    # A leftover in A's cgroup that no namespace holds
    (a_proc_dir,) = [d for d in a_dir.iterdir() if d.is_dir() and d.name.startswith("executor-")]
    leftover = _start_leftover(a_proc_dir / "leftover")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    stack.procs.pop("instance-a", None)
    _kill(b)  # not stopped: it would wait out its drain for the sleeper it took over
    stack.procs.pop("instance-b", None)
    b2 = await stack.astart("executor", key="instance-b2", extra_env=_own_port(
        {**env, "MAILEXEC_EXECUTOR_INSTANCE": "B"}))
    await asyncio.sleep(0.5)
    assert leftover.poll() is None, "a restart of instance B killed instance A's leftover"
    a2 = await stack.astart("executor", key="instance-a2", extra_env=_own_port(
        {**env, "MAILEXEC_EXECUTOR_INSTANCE": "A"}))
    try:
        for _ in range(100):
            if leftover.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert leftover.poll() == -signal.SIGKILL, "restarting A did not kill its leftover"
        assert not a_proc_dir.exists()
        assert "killed the runs dead executors of instance 'A' left" in a2.log_tail()
    finally:
        if leftover.poll() is None:
            leftover.kill()
        for key, proc in (("instance-a2", a2), ("instance-b2", b2)):
            _kill(proc)
            stack.procs.pop(key, None)


def _kill(executor: ServiceProcess) -> None:
    """SIGKILL an executor of this test (its runs die with its spawner)."""
    if executor.proc is not None and executor.proc.poll() is None:
        executor.proc.kill()
        executor.proc.wait()


async def test_an_egress_program_reaches_the_outside_and_nothing_of_the_control_plane(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess, mx_env: dict[str, str]
) -> None:
    """An admin grants a program ``network: egress`` and the executor is told to build the
    namespace (MAILEXEC_SANDBOX_EGRESS, as compose.egress.yaml and the chart do). Delivered
    through the pipeline, the program reaches an address "on the internet" (tests/netlab.py's
    dummy outside), and is refused – at once, not after its timeout – on PostgreSQL,
    RabbitMQ and every mailexec port on loopback and on the host's addresses, on the
    metadata address, on a blocked cluster CIDR; host Unix sockets stay out of reach."""
    if (why := need_tools()) is not None:
        pytest.skip(why)
    sockets = [path for path in host_sockets() if "PGSQL" in path]
    ports = [5432, 5672, int(stack.policy_url.rsplit(":", 1)[1]),
             int(stack.ingest_url.rsplit(":", 1)[1])]
    refused = [f"tcp {METADATA} {PORT}", f"tcp {CLUSTER} {PORT}"]
    refused += [f"tcp 127.0.0.1 {port}" for port in ports]
    if (address := host_address()) is not None:
        refused += [f"tcp {address} {port}" for port in ports]
    refused += [f"unix {path}" for path in sockets]
    uid, gid, home = homes.make()
    (home / "targets").write_text("\n".join([f"tcp {INTERNET} {PORT}", *refused]) + "\n")
    os.chown(home / "targets", uid, gid)
    addr = f"egress-{uid}@example.org"
    await stack.account(addr, uid, gid, home, ["contain"])
    await stack.program_network("contain", "egress")
    env = {**HOSTILE_EXECUTOR_ENV, "MAILEXEC_TRUSTED_DIR": cexec.env["MAILEXEC_TRUSTED_DIR"],
           "MAILEXEC_SANDBOX_EGRESS": "true", "MAILEXEC_SANDBOX_EGRESS_SUBNET": "100.64.252.0/24",
           "MAILEXEC_SANDBOX_EGRESS_BLOCKED": BLOCKED}
    try:
        with ip_forward_restored(), outside_network():
            async with alone(cexec, mx_env["MAILEXEC_AMQP_URL"]):
                egress_exec = await stack.astart("executor", key="egress-exec",
                                                 extra_env=_own_port(env))
                try:
                    mid = await stack.submit(addr, message("egress"))
                    rcpt = await stack.wait_state(mid, timeout=30)
                    log = egress_exec.log_tail()
                finally:
                    egress_exec.stop()
                    stack.procs.pop("egress-exec", None)
    finally:
        await stack.program_network("contain", "none")
    text = (home / "contain.out").read_text()
    assert rcpt["state"] == "delivered", (rcpt, text)
    assert "egress namespace built" in log
    res = outcome(home, "contain")
    assert res.pop(f"tcp:{INTERNET}:{PORT}") == "OK", text
    res.pop("tmp-write")
    assert len(res) == len(refused), text
    assert all(v.startswith("DENIED") for v in res.values()), text
    # refused, not dropped: a connect that hung would have run into the 10 s timeout
    assert all("timed out" not in v for v in res.values()), text


async def test_exhausted_process_limit_at_exec_defers_then_delivers(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess
) -> None:
    """Deliveries of one uid fork until its RLIMIT_NPROC refuses; a message for another
    account of the same uid arrives meanwhile: exec fails with EAGAIN, which defers
    (4.3.0) instead of bouncing, and the retry delivers once the hogs ended.

    Two hogs: the kernel refuses an exec only when the uid is *over* its limit (fork
    stops *at* it), which is what concurrent deliveries of one flooded uid reach."""
    uid, gid, home = homes.make()
    _, _, home2 = homes.make(uid, gid)
    await stack.account(f"hog-{uid}@example.org", uid, gid, home, ["nprochog"])
    await stack.account(f"hog2-{uid}@example.org", uid, gid, home2, ["nprochog"])
    await stack.account(f"victim-{uid}@example.org", uid, gid, home, ["ok"])
    hogs = []
    for address, where in ((f"hog-{uid}@example.org", home), (f"hog2-{uid}@example.org", home2)):
        hogs.append(await stack.submit(address, message("hog")))
        for _ in range(200):
            if (where / "nprochog.forks").exists():
                break
            await asyncio.sleep(0.05)
        forks, err = (where / "nprochog.forks").read_text().split()
        assert int(err) == errno.EAGAIN
    victim = await stack.submit(f"victim-{uid}@example.org", message("victim"))
    deferred = await stack.wait_state(victim, states=("deferred",), timeout=20)
    assert deferred["status"] == "4.3.0", deferred
    assert "Resource temporarily unavailable" in deferred["diagnostic"], deferred
    done = await stack.wait_state(victim, timeout=40)
    assert done["state"] == "delivered", done
    assert (home / "ok.log").read_text() == "ok\n"
    for hog in hogs:
        assert (await stack.wait_state(hog, timeout=20))["state"] == "delivered"


async def test_an_entry_that_can_never_be_a_program_bounces_with_a_notice(
    stack: Pipeline, homes: Homes, cexec: ServiceProcess, mx_env: dict[str, str]
) -> None:
    """An account entry written before policy refused such names (or behind its back):
    it used to make the executor retry forever. Now 5.3.0, like a missing program."""
    uid, gid, home = homes.make()
    addr = f"badname-{uid}@example.org"
    await stack.account(addr, uid, gid, home, ["ok"])
    dsn = mx_env["MAILEXEC_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE policy.accounts SET programs = $1 WHERE address = $2",
                           ["/usr/bin/bad name!"], addr)
    finally:
        await conn.close()
    rcpt = await stack.wait_state(await stack.submit(addr, message("badname")), timeout=20)
    assert (rcpt["state"], rcpt["status"]) == ("bounced", "5.3.0"), rcpt
    assert "can never name a program" in rcpt["diagnostic"], rcpt


# --- the sandbox and the spawner directly ---------------------------------------------


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    sandbox = Sandbox.start(test_settings())
    try:
        yield sandbox
    finally:
        sandbox.close()


async def test_insecure_path_is_opened_with_the_accounts_rights(box: Sandbox) -> None:
    """A binary in a directory only root can search must not run as the account (it was
    opened as root); device nodes and FIFOs are refused without being opened."""
    hidden = Path(tempfile.mkdtemp(prefix="mailexec-rootonly-", dir="/var/tmp"))
    try:
        os.chmod(hidden, 0o700)
        program = hidden / "prog"
        shutil.copy("/bin/true", program)
        os.chmod(program, 0o755)
        with pytest.raises(ProgramUnresolved, match="may not open"):
            await open_insecure(str(program), lambda p: box.open_as(p, 64991, 64991))
        os.chmod(hidden, 0o755)  # now the account can reach it: it opens
        handle = await open_insecure(str(program), lambda p: box.open_as(p, 64991, 64991))
        handle.close()
        fifo = hidden / "fifo"
        os.mkfifo(fifo, 0o777)
        for path in ("/dev/zero", "/dev/null", str(fifo)):
            with pytest.raises(ProgramUnresolved, match="not a regular file"):
                await asyncio.wait_for(
                    open_insecure(path, lambda p: box.open_as(p, 64991, 64991)), 5)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


# struct req_spawn / struct reply of spawner.c, spoken raw: no Python Sandbox in between
_REQ = struct.Struct("=6I6q")
_REPLY = struct.Struct("=2I2i")


class RawSpawner:
    def __init__(self, *args: str) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [str(spawner_path()), "--sock", str(theirs.fileno()), "--parent", str(os.getpid()),
             *args], pass_fds=(theirs.fileno(),), env={})
        theirs.close()
        self.sock.settimeout(10)
        assert self.reply()[0] == 4  # READY: its namespaces are set up

    def spawn(self, rid: int, uid: int, gid: int, netns: int = 0,
              strings: bytes = b"/\0prog\0UTC\0") -> tuple[int, int, int, int]:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        r3, w3 = os.pipe()
        exe = os.open("/bin/true", os.O_RDONLY)
        data = _REQ.pack(1, rid, uid, gid, netns, 0, 10, 1 << 30, 64, 1 << 20, 64, 1 << 20)
        self.sock.sendmsg([data + strings], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              struct.pack("4i", exe, r1, w2, w3))])
        for fd in (r1, w1, r2, w2, r3, w3, exe):
            os.close(fd)
        return self.reply()

    def reply(self) -> tuple[int, int, int, int]:
        data, ancdata, _, _ = self.sock.recvmsg(_REPLY.size, socket.CMSG_SPACE(4))
        for _, _, raw in ancdata:
            os.close(struct.unpack("i", raw[:4])[0])
        op, rid, pid, value = _REPLY.unpack(data)
        return op, rid, pid, value

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


def test_spawner_refuses_forbidden_identities_sent_raw_to_its_socket() -> None:
    """Whatever the executor's side asks (a compromised Python process included): never
    uid or gid 0, never below --min-uid, never a --forbid-uid (the service uid, the
    owners of PostgreSQL and RabbitMQ), for runs and for insecure-mode opens alike."""
    spawner = RawSpawner("--min-uid", "1000", "--forbid-uid", "4242", "--forbid-uid", "64992")
    try:
        for rid, (uid, gid) in enumerate([(0, 1000), (1000, 0), (0, 0), (999, 999),
                                          (4242, 4242), (64992, 64992), (2**32 - 1, 1000)], 1):
            assert spawner.spawn(rid, uid, gid) == (1, rid, -1, errno.EPERM), (uid, gid)
        # an insecure-mode open as root is refused the same way
        spawner.sock.send(_REQ.pack(3, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) + b"/bin/true\0")
        assert spawner.reply() == (3, 50, -1, errno.EPERM)
        # no such network namespace (none was given): refused, nothing runs
        assert spawner.spawn(60, 64993, 64993, netns=1) == (1, 60, -1, errno.ENONET)
        # malformed: a truncated request, strings without their NULs
        spawner.sock.send(struct.pack("=2I", 1, 70))
        assert spawner.reply() == (1, 70, -1, errno.EINVAL)
        assert spawner.spawn(71, 64993, 64993, strings=b"/\0prog") == (1, 71, -1, errno.EINVAL)
        # and an allowed one runs, as the account
        op, rid, pid, value = spawner.spawn(80, 64993, 64993)
        assert (op, rid, value) == (1, 80, 0) and pid > 0
        assert spawner.reply()[:3] == (2, 80, pid)
    finally:
        spawner.close()
    assert processes_of(64993) == []
