"""The egress namespace against a dummy "outside" network, for real (root, namespaces, nftables).

What it trusts: the kernel, iproute2 and nftables of this machine, and that the test
runs as root in the host's (the "executor's") network namespace.
What it stands for: a program registered with ``network: egress`` trying what an
attacker would – the control plane on the host's loopback (PostgreSQL 5432, RabbitMQ
5672) and on the host's other addresses, the veth gateway, a neighbour on an attached
subnet, the cloud metadata address 169.254.169.254, a cluster CIDR named in
``MAILEXEC_SANDBOX_EGRESS_BLOCKED`` – while an address "on the internet" stays
reachable. The probe enters the egress namespace with setns(2) from a thread of this
test, so it does not depend on the sandbox.

The "outside" is another network namespace behind a veth from the host
(198.18.255.0/30, RFC 2544 benchmarking space, never this machine's own networks);
it owns 203.0.113.10 (the internet), 169.254.169.254 (the metadata service) and
198.51.100.10 (a blocked cluster address), all routed through it, and listens on
each. Every namespace, interface, route and table is removed in teardown, even when
a test fails.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from services.executor.egress import (
    IP_FORWARD,
    EgressNamespace,
    fd_path,
    instance_tag,
    ip_in,
    new_netns,
    wanted,
)
from services.executor.errors import SandboxUnavailable

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000

INTERNET = "203.0.113.10"
METADATA = "169.254.169.254"
CLUSTER = "198.51.100.10"
BLOCKED = "198.51.100.0/24"
LINK_HOST, LINK_OUTSIDE = "198.18.255.1", "198.18.255.2"
POOL = "100.64.254.0/24"  # not the default range: a `make run` executor may hold that
PORT = 18080


def _need_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, veth, nftables)"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "needs iproute2 and util-linux (ip, nsenter)"
    if shutil.which("nft") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "nftables"], capture_output=True,
                       timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if shutil.which("nft") is None:
        return "needs nftables (Debian package nftables; apt-get install failed)"
    return None


_skip = _need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def in_netns(fd: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered network namespace ``fd``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def tcp_answer(host: str, port: int, *, source: str | None = None,
               timeout: float = 1.5) -> str | None:
    """What a server says on connect ("(connected)" if it waits for us), None if the
    connection can't be made."""
    try:
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
    except OSError:
        return None
    with s:
        s.settimeout(0.3)
        try:
            return s.recv(64).decode(errors="replace") or "(connected)"
        except OSError:
            return "(connected)"


def probe_from(fd: int, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
    """Connect to every target from inside namespace ``fd``, in parallel."""
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {t: pool.submit(in_netns, fd, lambda t=t: tcp_answer(*t)) for t in targets}
        return {t: f.result() for t, f in futures.items()}


class Listener:
    """A TCP server in a namespace (or here) that greets every connection with its name."""

    def __init__(self, name: str, port: int, netns_fd: int | None = None) -> None:
        self.name = name
        ready = threading.Event()
        self.sock: socket.socket | None = None

        def serve() -> None:
            if netns_fd is not None and _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
                ready.set()
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            self.sock = s
            ready.set()
            while True:
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                with conn:
                    try:
                        conn.sendall(name.encode())
                    except OSError:
                        pass

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(5)
        assert self.sock is not None, f"listener {name} did not start"

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        self.thread.join(5)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def links_named(prefix: str) -> list[str]:
    out = ip("-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.split(":")[1].strip().startswith(prefix)]


@dataclass
class Outside:
    fd: int
    veth: str
    routes: list[str]
    listener: Listener
    extra: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def forwarding() -> Iterator[None]:
    """Restore net.ipv4.ip_forward as it was (the egress namespace switches it on)."""
    with open(IP_FORWARD) as f:
        before = f.read().strip()
    yield
    with open(IP_FORWARD, "w") as f:
        f.write(before + "\n")


@pytest.fixture(scope="module")
def outside(forwarding: None) -> Iterator[Outside]:
    veth = f"mxto{os.getpid() % 100000}h"
    routes = [f"{INTERNET}/32", f"{METADATA}/32", f"{CLUSTER}/32"]
    fd = new_netns()
    added: list[str] = []
    listener: Listener | None = None
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", fd_path(fd))
        ip("addr", "add", f"{LINK_HOST}/30", "dev", veth)
        ip("link", "set", "dev", veth, "up")
        ip_in(fd, "\n".join([
            "link set dev lo up",
            f"addr add {LINK_OUTSIDE}/30 dev eth0",
            "link set dev eth0 up",
            *(f"addr add {r} dev lo" for r in routes),
            f"route add default via {LINK_HOST}",
        ]) + "\n")
        for r in routes:
            ip("route", "add", r, "via", LINK_OUTSIDE, "dev", veth)
            added.append(r)
        listener = Listener("outside", PORT, netns_fd=fd)
        yield Outside(fd=fd, veth=veth, routes=added, listener=listener)
    finally:
        if listener is not None:
            listener.close()
        for r in added:
            ip("route", "del", r, check=False)
        ip("link", "del", veth, check=False)
        os.close(fd)


@pytest.fixture
def egress(outside: Outside, forwarding: None) -> Iterator[EgressNamespace]:
    ns = EgressNamespace.create(instance=f"test-{os.getpid()}", pool=POOL, blocked=BLOCKED)
    try:
        yield ns
    finally:
        ns.close()
        assert ns.host_if not in links_named("mxeg")
        assert ns.table not in nft_tables()


@pytest.fixture
def host_listener() -> Iterator[Listener]:
    listener = Listener("host", PORT + 1)
    yield listener
    listener.close()


def host_addresses() -> list[str]:
    out = ip("-4", "-o", "addr", "show").stdout
    addrs = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in addrs if not a.startswith("127.")]


def test_outside_reachable_control_plane_not(
    outside: Outside, egress: EgressNamespace, host_listener: Listener
) -> None:
    # Controls: from the host everything answers, so a refusal below is the rules' doing.
    for target in (INTERNET, METADATA, CLUSTER, LINK_OUTSIDE):
        assert tcp_answer(target, PORT) == "outside", target
    own = host_addresses()
    assert own, "the host has no non-loopback IPv4 address to test"
    for addr in own:
        assert tcp_answer(addr, PORT + 1) == "host", addr
    assert tcp_answer("127.0.0.1", 5432) is not None or tcp_answer("127.0.0.1", 5672) is not None

    assert probe_from(egress.fd, [(INTERNET, PORT)]) == {(INTERNET, PORT): "outside"}

    refused = [
        (METADATA, PORT),  # the cloud metadata service
        (CLUSTER, PORT),  # a CIDR of MAILEXEC_SANDBOX_EGRESS_BLOCKED
        (LINK_OUTSIDE, PORT),  # a neighbour on a subnet attached to the host
        ("127.0.0.1", 5432), ("127.0.0.1", 5672), ("127.0.0.1", PORT + 1),
        (str(egress.host_addr), 5432), (str(egress.host_addr), 5672),
        (str(egress.host_addr), PORT + 1),  # the veth gateway is the host too
    ]
    for addr in own:  # every address of the host, e.g. eth0's, the outside link's
        refused += [(addr, PORT + 1), (addr, 5432), (addr, 5672)]
    answers = probe_from(egress.fd, refused)
    assert {t: a for t, a in answers.items() if a is not None} == {}


def test_spoofed_source_dropped(outside: Outside, egress: EgressNamespace) -> None:
    # Root inside the namespace (more than a program ever has) adds a second address;
    # traffic from it would escape the masquerade and must not leave.
    ip_in(egress.fd, "addr add 10.254.254.1/32 dev egress0\n")
    assert probe_from(egress.fd, [(INTERNET, PORT)])[(INTERNET, PORT)] == "outside"
    got = in_netns(egress.fd, lambda: tcp_answer(INTERNET, PORT, source="10.254.254.1"))
    assert got is None


def test_no_ipv6_in_the_namespace(egress: EgressNamespace) -> None:
    out = subprocess.run(["nsenter", f"--net={fd_path(egress.fd)}", "ip", "-6", "addr"],
                         capture_output=True, text=True, check=True).stdout
    assert "inet6" not in out
    host_side = ip("-6", "addr", "show", "dev", egress.host_if).stdout
    assert "inet6" not in host_side  # no link-local address to talk to either


def test_two_executors_on_one_host_get_their_own_and_cannot_reach_each_other(
    outside: Outside, egress: EgressNamespace,
) -> None:
    other = EgressNamespace.create(instance=f"test-other-{os.getpid()}", pool=POOL,
                                   blocked=BLOCKED)
    try:
        assert other.host_if != egress.host_if and other.table != egress.table
        assert not other.subnet.overlaps(egress.subnet)
        peer = Listener("peer", PORT + 2, netns_fd=other.fd)
        try:
            assert probe_from(other.fd, [(INTERNET, PORT)])[(INTERNET, PORT)] == "outside"
            assert probe_from(egress.fd, [(str(other.ns_addr), PORT + 2)]) == {
                (str(other.ns_addr), PORT + 2): None}
        finally:
            peer.close()
    finally:
        other.close()


CRASHING_EXECUTOR = """
import os, subprocess, sys, time
from services.executor.egress import EgressNamespace, fd_path
ns = EgressNamespace.create(instance=sys.argv[1], pool=sys.argv[2], blocked="")
# a run that outlived its executor keeps the namespace (and so the veth) alive
subprocess.Popen(["nsenter", "--net=" + fd_path(ns.fd), "sleep", "60"], pass_fds=[ns.fd],
                 start_new_session=True)
print(ns.host_if, ns.table, flush=True)
time.sleep(60)
"""


def test_restart_replaces_leftovers(outside: Outside, forwarding: None) -> None:
    instance = f"test-crash-{os.getpid()}"
    tag = instance_tag(instance)
    crashed = subprocess.Popen([sys.executable, "-c", CRASHING_EXECUTOR, instance, POOL],
                               stdout=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    sleeper = None
    try:
        assert crashed.stdout is not None
        host_if, table = crashed.stdout.readline().split()
        assert tag in host_if
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(10)
        for _ in range(50):  # the kernel drops the owned table with its socket
            if table not in nft_tables():
                break
            time.sleep(0.1)
        assert table not in nft_tables()
        assert host_if in links_named("mxeg"), "the leftover run should keep the veth"
        sleeper = subprocess.run(["pgrep", "-f", "^sleep 60$"], capture_output=True,
                                 text=True).stdout.split()
        # A table of the same name that nobody owns (an older version, a hand-made one)
        subprocess.run(["nft", "add", "table", "inet", table], check=True)

        ns = EgressNamespace.create(instance=instance, pool=POOL, blocked=BLOCKED)
        try:
            assert links_named(f"mxeg{tag}") == [host_if]
            assert nft_tables().count(table) == 1
            assert probe_from(ns.fd, [(INTERNET, PORT)])[(INTERNET, PORT)] == "outside"
        finally:
            ns.close()
        assert links_named(f"mxeg{tag}") == [] and table not in nft_tables()
    finally:
        if crashed.poll() is None:
            crashed.kill()
            crashed.wait()
        if crashed.stdout is not None:
            crashed.stdout.close()
        for pid in sleeper or ():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("link", "del", f"mxeg{tag}h", check=False)
        subprocess.run(["nft", "delete", "table", "inet", f"mailexec_egress_{tag}"],
                       capture_output=True)


def test_bad_configuration_refused_before_anything_is_made(forwarding: None) -> None:
    before = (links_named("mxeg"), nft_tables())
    with pytest.raises(SandboxUnavailable, match="sandbox_egress_blocked"):
        EgressNamespace.create(instance="test-bad", pool=POOL, blocked="10.0.0.0/8,not-a-cidr")
    with pytest.raises(SandboxUnavailable, match="sandbox_egress_subnet"):
        EgressNamespace.create(instance="test-bad", pool="100.64.254.0/31")
    assert (links_named("mxeg"), nft_tables()) == before


def test_built_only_where_net_admin_is_granted() -> None:
    from shared.settings import Settings

    granted = "CapEff:\t000001ffffffffff\n"
    withheld = "CapEff:\t00000000a80425fb\n"  # docker's default set: no NET_ADMIN (bit 12)
    on = Settings(sandbox_network=True, sandbox_egress_subnet="100.64.255.0/24")
    assert wanted(on, granted) == (True, "CAP_NET_ADMIN held")
    assert wanted(on, withheld)[0] is False
    assert "NET_ADMIN" in wanted(on, withheld)[1]
    assert wanted(on.model_copy(update={"sandbox_egress_subnet": ""}), granted)[0] is False
    assert wanted(on.model_copy(update={"sandbox_network": False}), granted)[0] is False
