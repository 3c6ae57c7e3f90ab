"""The one network namespace that programs registered with ``network: egress`` share.

What it does
    Once, at executor start, as root and before the privilege drop
    (:meth:`EgressNamespace.create`): makes a fresh network namespace (kept alive by
    the descriptor :attr:`EgressNamespace.fd`, which the spawner enters for an
    ``egress`` run), a veth pair between it and the executor's own namespace, a /30
    from ``sandbox_egress_subnet`` (the first one not in use on this host, so several
    executors on one host don't clash; the namespace side gets the upper address, the
    host side the lower one and is its default route), masquerade of the namespace's
    traffic on the way out, and one nftables table ``inet mailexec_egress_<tag>`` in
    the executor's namespace that refuses (a TCP reset, else ICMP admin-prohibited,
    so the program's connect fails at once instead of hanging until its timeout),
    for traffic coming from the veth:
      - anything addressed to the executor's namespace itself (hook input: every
        address of every interface, also addresses added later, and whatever a DNAT
        turned into one of them; loopback destinations never get that far: the
        kernel drops them as martians),
      - 127.0.0.0/8, 169.254.0.0/16 (cloud metadata services), the egress range
        itself (other executors' egress namespaces on this host), every subnet
        attached to the executor's namespace when it started (in compose: the
        network where PostgreSQL and RabbitMQ live; in a pod: its node's pod range),
        and the CIDRs of ``sandbox_egress_blocked`` (cluster pod and service CIDRs,
        the node's address) – matched on conntrack's *original* destination, the
        one the program asked for, so a service address rewritten by kube-proxy or
        a published port is still refused;
    and drops silently:
      - broadcast, multicast and anycast destinations,
      - every IPv6 packet (IPv6 is off in the namespace: its veth gets no
        link-local address, there is no IPv6 address or route, and the filter drops
        IPv6 from the veth anyway),
      - packets whose source is not the namespace's own address (no spoofing
        around the masquerade),
      - connections *into* the namespace (only replies pass back).
    The names carry a tag derived from the executor instance (host name and
    metrics port by default): veth ``mxeg<tag>h`` on the host side, table
    ``mailexec_egress_<tag>``.

What it trusts
    The kernel's netfilter and the ``ip`` binary (iproute2) and libnftables, run as
    root before the drop. Programs inside the namespace are unprivileged and hold
    no capability over it (it belongs to the initial user namespace), so they can't
    change its addresses or routes.

What it defends against
    A trusted-but-buggy (or subverted) ``egress`` program reaching the control
    plane: PostgreSQL/RabbitMQ/the APIs on loopback or on the executor's
    addresses, neighbours on the executor's networks, the cloud metadata service,
    the cluster's pods and services. Tests: tests/executor/test_egress.py
    (``test_outside_reachable_control_plane_not``: host 127.0.0.1:5432/5672, the
    host's non-loopback addresses, the veth gateway, an attached-subnet neighbour,
    169.254.169.254, a ``sandbox_egress_blocked`` CIDR; ``test_spoofed_source_dropped``;
    ``test_restart_replaces_leftovers``).

What it guarantees
    - Idempotent across restarts: a leftover veth or table of the same instance is
      removed first, never duplicated. The table is created with the nftables
      ``owner`` flag: it belongs to this process's netlink socket, nobody else can
      change it, and the kernel deletes it when the executor exits however it
      exits. The veth pair disappears with the namespace, i.e. when the last
      descriptor of it and the last process in it are gone.
    - IPv4 forwarding is switched on in the executor's namespace (needed to route
      between the veth and the uplink); in a container whose ``/proc/sys`` is
      read-only it is written through a private procfs mount (SYS_ADMIN, which
      the executor holds for the sandbox's namespaces).

What it does not do
    - Keep ``egress`` runs apart from each other: they share the namespace (its
      address, abstract Unix sockets). ``none`` runs never see it.
    - Know the node's address or the cluster CIDRs: give them in
      ``sandbox_egress_blocked`` (the chart does).
    - Resolve names: an egress program uses the resolver its ``/etc/resolv.conf``
      names, which must be reachable (a cluster DNS service inside a blocked
      service CIDR is not).
    - Follow attached subnets that appear after start (addresses of the executor's
      namespace are followed: the input hook sees them all).

When
    :func:`maybe_create`: at start, when ``MAILEXEC_SANDBOX_EGRESS`` is on, network
    isolation is on, the range is not empty and the process holds CAP_NET_ADMIN
    (why: :func:`wanted`).

Settings
    ``sandbox_egress`` (off: never built), ``sandbox_egress_subnet``,
    ``sandbox_egress_blocked``,
    ``sandbox_network``, ``executor_metrics_port`` (part of the default instance tag).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.executor.errors import SandboxUnavailable
from services.executor.sandbox.namespaces import create_empty_netns
from shared.settings import Settings

log = logging.getLogger("mailexec.executor.egress")

ALWAYS_BLOCKED = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
NS_IFNAME = "egress0"


def instance_tag(instance: str) -> str:
    """Six hex digits naming this executor instance's interfaces and table."""
    return hashlib.sha256(instance.encode()).hexdigest()[:6]


def default_instance(settings: Settings) -> str:
    """Stable across restarts of one executor; differs between executors on one host
    (they can't share a metrics port). In a pod: the pod name."""
    return f"{socket.gethostname()}:{settings.executor_metrics_port}"


def parse_cidrs(text: str, what: str) -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=False)
        except ValueError as exc:
            raise SandboxUnavailable(f"{what}: {part!r} is not a CIDR: {exc}") from None
        if isinstance(net, ipaddress.IPv6Network):
            continue  # IPv6 is dropped as a whole from the egress namespace
        nets.append(net)
    return nets


# --- tools ---------------------------------------------------------------------------


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=30, close_fds=True)
    except FileNotFoundError:
        raise SandboxUnavailable(
            f"egress namespace: {argv[0]} not found (Debian package iproute2)") from None
    if check and proc.returncode != 0:
        raise SandboxUnavailable(
            f"egress namespace: `{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


class Nft:
    """libnftables in process: the owner-flagged table lives as long as this context."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise SandboxUnavailable(
                "egress namespace: libnftables not found (Debian package nftables)") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)
        if not self._ctx:
            raise SandboxUnavailable("egress namespace: nft_ctx_new failed")
        lib.nft_ctx_buffer_error(self._ctx)
        lib.nft_ctx_buffer_output(self._ctx)

    def run(self, commands: str, *, check: bool = True) -> tuple[bool, str]:
        if self._ctx is None:
            raise SandboxUnavailable("egress namespace: nftables context closed")
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0 and check:
            raise SandboxUnavailable(f"egress namespace: nftables refused the rules: {error.strip()}")
        return rc == 0, output if rc == 0 else error

    def close(self) -> None:
        """Free the context: its netlink socket closes and the owned table goes with it."""
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


# --- namespace plumbing -------------------------------------------------------------


def new_netns() -> int:
    """An fd of a fresh, empty network namespace: the sandbox's one way of making one."""
    return create_empty_netns()


def fd_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"


def ip_in(netns_fd: int, batch: str) -> None:
    """Run ``ip -batch`` inside the namespace ``netns_fd``."""
    if shutil.which("nsenter") is None:
        raise SandboxUnavailable("egress namespace: nsenter not found (Debian package util-linux)")
    _run(["nsenter", f"--net={fd_path(netns_fd)}", "ip", "-batch", "-"], stdin=batch)


def host_addresses() -> list[dict[str, Any]]:
    """``ip -j addr`` of the executor's namespace."""
    data = json.loads(_run(["ip", "-j", "addr", "show"]) or "[]")
    return list(data) if isinstance(data, list) else []


def local_networks(links: Iterable[dict[str, Any]], skip_prefix: str
                   ) -> tuple[set[ipaddress.IPv4Network], set[ipaddress.IPv4Network]]:
    """(every IPv4 address as a /32, every attached IPv4 subnet) outside our own veths."""
    addresses: set[ipaddress.IPv4Network] = set()
    subnets: set[ipaddress.IPv4Network] = set()
    for link in links:
        if str(link.get("ifname", "")).startswith(skip_prefix):
            continue
        for info in link.get("addr_info") or ():
            if info.get("family") != "inet":
                continue
            iface = ipaddress.IPv4Interface(f"{info['local']}/{info.get('prefixlen', 32)}")
            addresses.add(ipaddress.IPv4Network(f"{iface.ip}/32"))
            subnets.add(iface.network)
    return addresses, subnets


def pick_subnet(pool: ipaddress.IPv4Network, in_use: Iterable[ipaddress.IPv4Network]
                ) -> ipaddress.IPv4Network:
    if pool.prefixlen > 30:
        raise SandboxUnavailable(f"sandbox_egress_subnet {pool} is smaller than a /30")
    taken = list(in_use)
    for candidate in pool.subnets(new_prefix=30):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise SandboxUnavailable(f"sandbox_egress_subnet {pool}: every /30 is in use on this host")


def enable_ip_forward() -> None:
    try:
        with open(IP_FORWARD) as f:
            if f.read().strip() == "1":
                return
        with open(IP_FORWARD, "w") as f:
            f.write("1\n")
        return
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise SandboxUnavailable(f"egress namespace: {IP_FORWARD}: {exc.strerror}") from None
    # A container's read-only /proc/sys: a fresh procfs in a private mount namespace is
    # writable, and net.* sysctls act on the writer's network namespace (ours).
    _run(["unshare", "--mount", "--propagation", "private", "--",
          "sh", "-c", "mount -t proc proc /proc && echo 1 > " + IP_FORWARD])


# --- when ---------------------------------------------------------------------------

CAP_NET_ADMIN = 12


def holds_net_admin(status_text: str | None = None) -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set (``/proc/self/status``)."""
    if status_text is None:
        with open("/proc/self/status") as f:
            status_text = f.read()
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def wanted(settings: Settings, status_text: str | None = None) -> tuple[bool, str]:
    """Whether this executor builds the egress namespace at start, and why not (for the log).

    Only when the operator asks for it (``MAILEXEC_SANDBOX_EGRESS``: the compose file's
    ``compose.egress.yaml`` and the chart's ``executor.sandbox.egress.enabled`` set it,
    together with the CAP_NET_ADMIN it needs), network isolation is on and the range
    is not empty. Root on a bare host always holds CAP_NET_ADMIN, so the capability
    alone can't be the declaration: building the namespace switches on IPv4 forwarding
    in the executor's network namespace, which on a bare host is the host's own. It is
    built at start whatever the registry says now, so an admin's later
    ``PATCH network=egress`` works without a restart (the namespace can't be made
    after the privilege drop); asking policy at start instead would tie the
    executor's start to policy being up and still miss later grants.
    """
    if not settings.sandbox_egress:
        return False, "MAILEXEC_SANDBOX_EGRESS is off"
    if not settings.sandbox_network:
        return False, "network isolation is off (MAILEXEC_SANDBOX_NETWORK=false)"
    if not settings.sandbox_egress_subnet.strip():
        return False, "MAILEXEC_SANDBOX_EGRESS_SUBNET is empty"
    if not holds_net_admin(status_text):
        return False, ("MAILEXEC_SANDBOX_EGRESS is on but the executor holds no CAP_NET_ADMIN "
                       "(compose: layer deploy/compose.egress.yaml; chart: "
                       "executor.sandbox.egress.enabled)")
    return True, "asked for, CAP_NET_ADMIN held"


def maybe_create(settings: Settings) -> EgressNamespace | None:
    """The egress namespace, or None (``egress`` runs then defer: see the log line).

    A failure to build it is logged, not fatal: programs with ``network: none`` keep
    being delivered, and ``egress`` ones wait (4.x) instead of bouncing for an
    operator's mistake.
    """
    want, why = wanted(settings)
    if not want:
        level = logging.ERROR if settings.sandbox_egress else logging.INFO
        log.log(level, "no egress namespace: %s; programs with network=egress will be "
                "deferred", why)
        return None
    try:
        ns = EgressNamespace.from_settings(settings)
    except SandboxUnavailable as exc:
        log.error("egress namespace not built: %s; programs with network=egress will be "
                  "deferred until it is", exc)
        return None
    log.info("egress namespace built", extra=ns.describe())
    return ns


# --- the namespace ------------------------------------------------------------------


@dataclass
class EgressNamespace:
    fd: int
    tag: str
    host_if: str
    table: str
    subnet: ipaddress.IPv4Network
    host_addr: ipaddress.IPv4Address
    ns_addr: ipaddress.IPv4Address
    blocked: list[ipaddress.IPv4Network]
    _nft: Nft | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, instance: str | None = None) -> EgressNamespace:
        return cls.create(instance=instance or default_instance(settings),
                          pool=settings.sandbox_egress_subnet,
                          blocked=settings.sandbox_egress_blocked)

    @classmethod
    def create(cls, *, instance: str, pool: str, blocked: str = "") -> EgressNamespace:
        if os.geteuid() != 0:
            raise SandboxUnavailable("egress namespace: must be created by root, before the drop")
        try:
            pool_net = ipaddress.IPv4Network(pool, strict=False)
        except ValueError as exc:
            raise SandboxUnavailable(f"sandbox_egress_subnet {pool!r}: {exc}") from None
        extra = parse_cidrs(blocked, "sandbox_egress_blocked")
        tag = instance_tag(instance)
        host_if, table = f"mxeg{tag}h", f"mailexec_egress_{tag}"
        nft = Nft()
        netns_fd = -1
        try:
            remove_leftovers(nft, host_if, table)
            links = host_addresses()
            addresses, subnets = local_networks(links, skip_prefix="mxeg")
            _, ours = local_networks((lk for lk in links
                                      if str(lk.get("ifname", "")).startswith("mxeg")), "\0")
            subnet = pick_subnet(pool_net, [*subnets, *ours])
            host_addr, ns_addr = list(subnet.hosts())
            drop = sorted(
                {ipaddress.IPv4Network(c) for c in ALWAYS_BLOCKED}
                | {pool_net} | addresses | subnets | set(extra),
                key=lambda n: (int(n.network_address), n.prefixlen),
            )
            enable_ip_forward()
            netns_fd = new_netns()
            _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", NS_IFNAME,
                  "netns", fd_path(netns_fd)])
            _run(["ip", "link", "set", "dev", host_if, "addrgenmode", "none"])
            _run(["ip", "addr", "add", f"{host_addr}/30", "dev", host_if])
            _run(["ip", "link", "set", "dev", host_if, "up"])
            ip_in(netns_fd, "\n".join([
                # loopback up: 127.0.0.1 is then the namespace's own and refuses at
                # once (down, it would be routed to the host and dropped as a
                # martian, a connect hanging until the program's timeout); no ::1
                "link set dev lo up",
                "addr flush dev lo scope host to ::/0",
                f"link set dev {NS_IFNAME} addrgenmode none",
                f"addr add {ns_addr}/30 dev {NS_IFNAME}",
                f"link set dev {NS_IFNAME} up",
                f"route add default via {host_addr} dev {NS_IFNAME}",
            ]) + "\n")
            nft.run(ruleset(table, host_if, ns_addr, drop))
        except BaseException:
            if netns_fd >= 0:
                os.close(netns_fd)
            _run(["ip", "link", "del", host_if], check=False)
            nft.close()
            raise
        egress = cls(fd=netns_fd, tag=tag, host_if=host_if, table=table, subnet=subnet,
                     host_addr=host_addr, ns_addr=ns_addr, blocked=drop, _nft=nft)
        log.info("egress namespace ready", extra=egress.describe())
        return egress

    def describe(self) -> dict[str, Any]:
        return {"egress_interface": self.host_if, "egress_table": f"inet {self.table}",
                "egress_subnet": str(self.subnet), "egress_address": str(self.ns_addr),
                "egress_blocked": [str(n) for n in self.blocked]}

    def close(self) -> None:
        """Tear down what this process may still tear down (everything, while root).

        After the privilege drop the veth can't be deleted and the table can't be
        changed; closing the descriptor and the nftables context still ends both
        (the namespace, with its veth, when no run is left in it; the owned table
        at once)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if os.geteuid() == 0:
            _run(["ip", "link", "del", self.host_if], check=False)
        if self._nft is not None:
            self._nft.run(f"delete table inet {self.table}", check=False)
            self._nft.close()
            self._nft = None


def remove_leftovers(nft: Nft, host_if: str, table: str) -> None:
    """What a crashed instance with the same name may have left (never another's)."""
    _run(["ip", "link", "del", host_if], check=False)
    ok, _ = nft.run(f"list table inet {table}", check=False)
    if ok:
        done, error = nft.run(f"delete table inet {table}", check=False)
        if not done:
            raise SandboxUnavailable(
                f"egress namespace: table inet {table} belongs to a running process "
                f"(another executor with the same instance name?): {error.strip()}")


def ruleset(table: str, host_if: str, ns_addr: ipaddress.IPv4Address,
            drop: Sequence[ipaddress.IPv4Network]) -> str:
    elements = ", ".join(str(n) for n in drop)
    return f"""
table inet {table} {{
    flags owner

    set blocked {{
        type ipv4_addr
        flags interval
        auto-merge
        elements = {{ {elements} }}
    }}

    # Before conntrack and DNAT: what no program sends on purpose is dropped silently.
    chain prerouting {{
        type filter hook prerouting priority raw - 10; policy accept;
        iifname "{host_if}" meta nfproto ipv6 drop
        iifname "{host_if}" ip saddr != {ns_addr} drop
        iifname "{host_if}" fib daddr type {{ broadcast, multicast, anycast }} drop
    }}

    # Refused at once, so a program's connect fails instead of hanging until its
    # timeout: a TCP reset (not rate-limited, unlike the kernel's ICMP errors), an
    # ICMP admin-prohibited for anything else.
    chain refuse {{
        meta l4proto tcp reject with tcp reset
        reject with icmpx type admin-prohibited
    }}

    # Whatever is addressed to this namespace (every address, now or later), also
    # after a DNAT to one of them.
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{host_if}" goto refuse
    }}

    # Blocked destinations, matched on the address the program asked for (conntrack's
    # original tuple: before any DNAT of kube-proxy or a published port).
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{host_if}" ct original ip daddr @blocked goto refuse
        iifname "{host_if}" ip daddr @blocked goto refuse
        oifname "{host_if}" ct state established,related accept
        oifname "{host_if}" drop
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {ns_addr} oifname != "{host_if}" masquerade
    }}
}}
"""
