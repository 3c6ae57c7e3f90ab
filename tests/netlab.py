"""A dummy "outside" network for the egress namespace's tests (root, namespaces, nftables).

The "outside" is another network namespace behind a veth from the host
(198.18.255.0/30, RFC 2544 benchmarking space, never this machine's own networks);
it owns 203.0.113.10 (the internet), 169.254.169.254 (the metadata service) and
198.51.100.10 (a blocked cluster address), all routed through it, and listens on
each. Every namespace, interface and route is removed on exit, even when a test
fails. Used by tests/executor/test_egress.py (the namespace on its own) and
tests/security/test_containment.py (an egress program through the pipeline).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.executor.egress import IP_FORWARD, fd_path, ip_in, new_netns

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000

INTERNET = "203.0.113.10"
METADATA = "169.254.169.254"
CLUSTER = "198.51.100.10"
BLOCKED = "198.51.100.0/24"
LINK_HOST, LINK_OUTSIDE = "198.18.255.1", "198.18.255.2"
PORT = 18080


def need_tools() -> str | None:
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


def connect_error(host: str, port: int, *, timeout: float = 3.0) -> str:
    """How a connect ends: "connected", the errno's name, or "timeout" (a silent drop)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        s.close()


def errors_from(fd: int, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """:func:`connect_error` for every target from inside namespace ``fd``, in parallel."""
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {t: pool.submit(in_netns, fd, lambda t=t: connect_error(*t)) for t in targets}
        return {t: f.result() for t, f in futures.items()}


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


@contextlib.contextmanager
def ip_forward_restored() -> Iterator[None]:
    """Restore net.ipv4.ip_forward as it was (the egress namespace switches it on)."""
    with open(IP_FORWARD) as f:
        before = f.read().strip()
    yield
    with open(IP_FORWARD, "w") as f:
        f.write(before + "\n")


@contextlib.contextmanager
def outside_network() -> Iterator[Outside]:
    """The dummy outside (the module's docstring), removed on exit."""
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
