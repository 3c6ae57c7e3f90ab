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

The "outside" is tests/netlab.py's dummy network; every namespace, interface, route
and table is removed in teardown, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from services.executor.egress import (
    EgressNamespace,
    fd_path,
    instance_tag,
    ip_in,
    wanted,
)
from services.executor.errors import SandboxUnavailable
from tests.netlab import (
    BLOCKED,
    CLUSTER,
    INTERNET,
    LINK_OUTSIDE,
    METADATA,
    PORT,
    Listener,
    Outside,
    errors_from,
    in_netns,
    ip,
    ip_forward_restored,
    links_named,
    need_tools,
    nft_tables,
    outside_network,
    probe_from,
    tcp_answer,
)

POOL = "100.64.254.0/24"  # not the default range: a `make run` executor may hold that

_skip = need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@pytest.fixture(scope="module")
def forwarding() -> Iterator[None]:
    with ip_forward_restored():
        yield


@pytest.fixture(scope="module")
def outside(forwarding: None) -> Iterator[Outside]:
    with outside_network() as net:
        yield net


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
    # Refused, not silently dropped: a program's connect fails at once instead of
    # hanging until its timeout (127/8 is the namespace's own loopback, where nobody
    # listens).
    errors = errors_from(egress.fd, refused)
    assert set(errors.values()) == {"ECONNREFUSED"}, errors


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


def test_built_only_where_asked_for_and_net_admin_is_granted() -> None:
    from shared.settings import Settings

    granted = "CapEff:\t000001ffffffffff\n"
    withheld = "CapEff:\t00000000a80425fb\n"  # docker's default set: no NET_ADMIN (bit 12)
    on = Settings(sandbox_egress=True, sandbox_network=True,
                  sandbox_egress_subnet="100.64.255.0/24")
    assert wanted(on, granted)[0] is True
    assert wanted(on, withheld)[0] is False
    assert "NET_ADMIN" in wanted(on, withheld)[1]
    # root on a bare host always holds NET_ADMIN: only the operator's switch builds it
    assert wanted(on.model_copy(update={"sandbox_egress": False}), granted) == (
        False, "MAILEXEC_SANDBOX_EGRESS is off")
    assert wanted(Settings(), granted)[0] is False  # off by default
    assert wanted(on.model_copy(update={"sandbox_egress_subnet": ""}), granted)[0] is False
    assert wanted(on.model_copy(update={"sandbox_network": False}), granted)[0] is False
