"""The Exim and sendmail recipes (deploy/exim, deploy/sendmail), checked by the MTAs themselves.

Debian's MTAs conflict with each other (installing exim4 or sendmail-bin removes Postfix,
which other tests use), so nothing is installed: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` under /tmp/mailexec-mta-recipes (kept
between runs), and their binaries run from there.

- Exim 4 (exim4-daemon-light): ``exim -bV`` on a whole configuration made of the fragments,
  ``exim -bt`` (the router looks up the FULL address; an unlisted address, or the same local
  part in another domain, goes on to the next router; "keep-mailbox" makes a second, mailbox
  delivery), and real deliveries from Exim's queue through each transport: the pipe to a
  stand-in for ``mailexec submit`` (its argv, exit 75 defers, 65 bounces, the null sender,
  no "From " line), LMTP over TCP and over a Unix socket to the small LMTP server below
  (550 at RCPT bounces, 451 defers).
- sendmail 8 (sendmail-cf, m4, sendmail-bin): a .mc with deploy/sendmail/mailexec.m4 built
  into a .cf with m4 and cf.m4, the mailer lines checked, ``sendmail -bt`` /parse (which mailer,
  and the user is the full address; the old R=EnvToL recipe gives "bob"), and deliveries
  (``-odi``) through the LMTP mailer to the LMTP server and through the pipe mailer.

What the MTAs need of the machine and the test must not change (users Debian-exim and
mailexec, group mailexec-lmtp, a qualified host name: sendmail sleeps 60 s without one;
Exim's libidn12) comes from a private mount and UTS namespace (``unshare``): copies of
/etc/passwd, /etc/group and /etc/hosts and an ld.so.cache that knows the unpacked libraries
are bind-mounted over the originals, and the host name there is mx.example.org. Nothing
outside /tmp is written.

The recipes' fixed paths and ports (8024, /run/mailexec/lmtp.sock, /usr/local/bin/mailexec,
/etc/exim4/..., /etc/mail/...) are swapped for the test's own; every swap asserts that the
text it replaces is in the recipe, so a recipe that drifts fails here instead of passing
unchecked.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socketserver
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
EXIM_DIR = ROOT / "deploy" / "exim"
SENDMAIL_DIR = ROOT / "deploy" / "sendmail"
CACHE = Path("/tmp/mailexec-mta-recipes")
EXIM_PACKAGES = ["exim4-daemon-light", "exim4-base"]
SENDMAIL_PACKAGES = ["sendmail-cf", "m4", "sendmail-bin"]
HOSTNAME = "mx.example.org"
# uids/gids only the namespace's /etc/passwd and /etc/group know
EXIM_UID, MAILEXEC_UID, LMTP_GID = 64991, 64992, 64993
MESSAGE = b"From: alice@sender.test\nTo: bob@example.org\nSubject: recipe\n\nbody\n.leading dot\n"

pytestmark = pytest.mark.timeout(600)  # the first run downloads about 4 MB of packages


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload]


def _swap(text: str, old: str, new: str) -> str:
    """Replace a fixed value of a recipe by the test's; the recipe must contain it."""
    assert old in text, f"the recipe no longer contains {old!r}"
    return text.replace(old, new)


# ---- packages: apt-get download + dpkg-deb -x, cached ------------------------------------


def _missing_library_packages(package: str) -> list[str]:
    """The library packages `package` depends on that dpkg has not installed."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", package]).stdout
    deps = {m.group(1) for m in re.finditer(r"^\s+\|?Depends: (lib[^\s<>]+)$", out, re.M)}
    missing = []
    for dep in sorted(deps):
        st = _run(["dpkg-query", "-W", "-f=${Status}", dep])
        if "install ok installed" not in st.stdout:
            missing.append(dep)
    return missing


def _unpack(packages: list[str]) -> Path:
    """CACHE/root with `packages` (and their missing libraries) unpacked; skip when impossible."""
    if os.geteuid() != 0:
        pytest.skip("needs root (apt-get download, unshare, bind mounts)")
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query", "unshare", "ldconfig"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not found: not a Debian machine")
    root, debs, stamps = CACHE / "root", CACHE / "debs", CACHE / "stamps"
    for d in (root, debs, stamps):
        d.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another engineer's run may be unpacking too
        wanted = list(packages)
        for p in packages:
            if not (stamps / p).exists():
                wanted += _missing_library_packages(p)
        for p in dict.fromkeys(wanted):
            if (stamps / p).exists():
                continue
            for attempt in range(2):
                r = _run(["apt-get", "download", "-q", p], cwd=debs)
                if r.returncode == 0:
                    break
                if attempt == 0:
                    _run(["apt-get", "update", "-q"])
            else:
                pytest.skip(f"apt-get download {p} failed: {(r.stderr or r.stdout).strip()[-300:]}")
            deb = max(debs.glob(f"{p}_*.deb"), key=lambda f: f.stat().st_mtime)
            r = _run(["dpkg-deb", "-x", str(deb), str(root)])
            if r.returncode != 0:
                pytest.skip(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()[-300:]}")
            (stamps / p).write_text(deb.name + "\n")
    return root


# ---- the private namespace ---------------------------------------------------------------

NS_SCRIPT = (
    'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && '
    'mount --bind "$3" /etc/hosts && mount --bind "$4" /etc/ld.so.cache && '
    f'hostname {HOSTNAME} && shift 4 && exec "$@"'
)


@dataclass
class Namespace:
    """Runs commands where the MTAs' users, host name and libraries exist (see the docstring)."""

    files: list[str]
    ld_conf: Path

    def refresh_libraries(self) -> None:
        """ld.so.cache for the namespace: the system's libraries and the unpacked ones."""
        # -X: build the cache only, never touch the links in the system's library directories
        r = _run(["ldconfig", "-X", "-f", str(self.ld_conf), "-C", self.files[3]])
        if r.returncode != 0 or not Path(self.files[3]).exists():
            pytest.skip(f"ldconfig could not build a private cache: {r.stderr.strip()}")

    def run(self, args: list[str], input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", NS_SCRIPT, "sh",
             *self.files, *args],
            input=input, capture_output=True, timeout=120, check=False,
        )
        return subprocess.CompletedProcess(
            r.args, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        )


def _world_dir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    d = _world_dir("mailexec-mta-ns-")
    ours = ("Debian-exim:", "mailexec:", "mailexec-lmtp:")  # replaced if the machine has them

    def without_ours(path: str) -> str:
        return "".join(ln for ln in Path(path).read_text().splitlines(True) if not ln.startswith(ours))

    passwd, group = without_ours("/etc/passwd"), without_ours("/etc/group")
    (d / "passwd").write_text(
        passwd
        + f"Debian-exim:x:{EXIM_UID}:{EXIM_UID}::/nonexistent:/usr/sbin/nologin\n"
        + f"mailexec:x:{MAILEXEC_UID}:{MAILEXEC_UID}::/nonexistent:/usr/sbin/nologin\n"
    )
    (d / "group").write_text(
        group + f"Debian-exim:x:{EXIM_UID}:\nmailexec:x:{MAILEXEC_UID}:\nmailexec-lmtp:x:{LMTP_GID}:\n"
    )
    (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME} mx\n")
    libdir = CACHE / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    (d / "ld.so.conf").write_text(f"{libdir}\ninclude /etc/ld.so.conf.d/*.conf\n")
    ns = Namespace([str(d / f) for f in ("passwd", "group", "hosts", "ld.so.cache")], d / "ld.so.conf")
    ns.refresh_libraries()
    probe = ns.run(["hostname"])
    if probe.returncode != 0 or probe.stdout.strip() != HOSTNAME:
        pytest.skip(f"cannot make a private mount/UTS namespace here: {probe.stderr.strip()}")
    yield ns
    shutil.rmtree(d, ignore_errors=True)


# ---- a stand-in for `mailexec submit` ----------------------------------------------------

STUB = """#!/bin/sh
# records its argv and stdin; --to=fail@... exits 65, --to=defer@... exits 75
out={out}
n=$(date +%s%N)-$$
printf '%s\\n' "$@" > "$out/$n.argv"
cat > "$out/$n.msg"
case "$*" in
  *--to=fail@*) echo "5.6.0 mailexec submit: ingest answered HTTP 400: malformed"; exit 65 ;;
  *--to=defer@*) echo "4.3.0 mailexec submit: cannot reach ingest; will retry"; exit 75 ;;
esac
exit 0
"""


@dataclass
class Submitted:
    argv: list[str]
    message: bytes


def _stub(work: Path) -> tuple[Path, Path]:
    out = work / "submitted"
    out.mkdir()
    os.chmod(out, 0o777)  # the MTA runs the stub as the mailexec uid
    stub = work / "mailexec-stub"
    stub.write_text(STUB.format(out=out))
    stub.chmod(0o755)
    return stub, out


def _submitted(out: Path) -> dict[str, Submitted]:
    """What the stub received, by its --to (one recipient per run)."""
    runs: dict[str, Submitted] = {}
    for f in sorted(out.glob("*.argv")):
        argv = f.read_text().splitlines()
        tos = [a.split("=", 1)[1] for a in argv if a.startswith("--to=")]
        assert len(tos) == 1, f"one recipient per run expected: {argv}"
        runs[tos[0]] = Submitted(argv, f.with_suffix(".msg").read_bytes())
    return runs


# ---- a small LMTP server (RFC 2033) -----------------------------------------------------


@dataclass
class Transaction:
    lhlo: str = ""
    mail_from: str = ""
    rcpts: list[str] = field(default_factory=list)
    data: bytes = b""


class _ReusableTCPServer(socketserver.ThreadingTCPServer):
    """SO_REUSEADDR: a test binds the same fixed port again right after closing it, while
    the previous session's socket may still be in TIME_WAIT (seen in CI: EADDRINUSE)."""

    allow_reuse_address = True


class LmtpServer:
    """Records what the MTA sends. RCPT replies by local part: gone@ 550 5.1.1, down@ 451 4.3.0."""

    def __init__(self, tcp_port: int | None = None, unix_path: Path | None = None) -> None:
        self.transactions: list[Transaction] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._session(self.rfile, self.wfile)

        self.server: socketserver.BaseServer
        if unix_path is not None:
            self.server = socketserver.ThreadingUnixStreamServer(str(unix_path), Handler)
        else:
            self.server = _ReusableTCPServer(("127.0.0.1", tcp_port or 0), Handler)
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile: object, wfile: object) -> None:
        def send(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")  # type: ignore[attr-defined]
            wfile.flush()  # type: ignore[attr-defined]

        send("220 sink LMTP ready")
        t = Transaction()
        lhlo = ""
        while True:
            raw = rfile.readline()  # type: ignore[attr-defined]
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb == "LHLO":
                lhlo = line[5:]
                send("250-sink\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
                     "250-8BITMIME\r\n250 SIZE 26214400")
            elif verb == "MAIL":
                t = Transaction(lhlo=lhlo, mail_from=line)
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = line[line.index("<") + 1 : line.index(">")]
                local = addr.split("@")[0].lower()
                if local == "gone":
                    send(f"550 5.1.1 <{addr}>: unknown account")
                elif local == "down":
                    send(f"451 4.3.0 <{addr}>: policy unavailable, try again later")
                else:
                    t.rcpts.append(addr)
                    send("250 2.1.5 ok")
            elif verb == "DATA":
                if not t.rcpts:
                    send("503 5.5.1 no valid recipients")
                    continue
                send("354 go ahead")
                body = []
                while (chunk := rfile.readline()) not in (b".\r\n", b".\n", b""):  # type: ignore[attr-defined]
                    body.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                t.data = b"".join(body)
                self.transactions.append(t)
                for addr in t.rcpts:  # RFC 2033 4.2: one reply per accepted recipient
                    send(f"250 2.0.0 <{addr}> queued")
            elif verb == "RSET":
                t = Transaction(lhlo=lhlo)
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.2 not implemented")


# ---- Exim ---------------------------------------------------------------------------------


def test_exim_fragments_have_no_comment_after_a_value() -> None:
    """Exim takes "#" as a comment only at the start of a line."""
    for f in sorted(EXIM_DIR.glob("*.conf")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                assert "#" not in line, f"{f.name}:{n}: text after a value is part of the value: {line!r}"


@dataclass
class Exim:
    ns: Namespace
    binary: Path
    work: Path
    stub_out: Path
    lmtp_port: int
    socket_path: Path

    def config(self, transport: str = "mailexec_lmtp") -> Path:
        w = self.work
        router = (EXIM_DIR / "router.conf").read_text()
        router = _swap(router, "/etc/exim4/mailexec-recipients", str(w / "mailexec-recipients"))
        router = _swap(router, "  transport = mailexec_lmtp\n", f"  transport = {transport}\n")
        transports = (EXIM_DIR / "transports.conf").read_text()
        transports = _swap(transports, "port = 8024", f"port = {self.lmtp_port}")
        transports = _swap(transports, "/run/mailexec/lmtp.sock", str(self.socket_path))
        transports = _swap(transports, "/usr/local/bin/mailexec", str(w / "mailexec-stub"))
        auth = (EXIM_DIR / "authenticators.conf").read_text()
        auth = _swap(auth, "/etc/exim4/mailexec-token", str(w / "mailexec-token"))
        conf = w / f"exim-{transport}.conf"
        conf.write_text(
            f"primary_hostname = {HOSTNAME}\n"
            "domainlist local_domains = example.org\n"
            f"spool_directory = {w}/spool\n"
            f"log_file_path = {w}/log/%slog\n"
            f"exim_path = {self.binary}\n"
            "keep_environment =\n"
            "\nbegin routers\n\n" + router + "\n"
            "# the test's stand-in for the routers that deliver mailboxes\n"
            "mailbox:\n  driver = accept\n  domains = +local_domains\n  transport = mailbox\n"
            "\nbegin transports\n\n" + transports + "\n"
            f"mailbox:\n  driver = appendfile\n  file = {w}/mailbox\n  user = mailexec\n"
            "\nbegin retry\n\n* * F,1d,1h\n"
            "\nbegin authenticators\n\n" + auth
        )
        return conf

    def exim(self, conf: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return self.ns.run([str(self.binary), "-C", str(conf), *args], input=input)

    def deliver(self, conf: Path, sender: str, rcpts: list[str]) -> list[str]:
        """Queue one message (-odq), deliver it (-M as root: no re-exec that drops -C); its log lines."""
        log = self.work / "log" / "mainlog"
        before = log.read_text() if log.exists() else ""
        r = self.exim(conf, "-odq", "-oi", "-f", sender, *rcpts, input=MESSAGE)
        assert r.returncode == 0, r.stderr
        new = (log.read_text() if log.exists() else "")[len(before):]
        ids = re.findall(r"^\S+ \S+ (\S+) <= ", new, re.M)
        assert len(ids) == 1, new
        r = self.exim(conf, "-M", ids[0])
        assert r.returncode == 0, r.stderr + r.stdout
        return [ln for ln in log.read_text()[len(before):].splitlines() if f" {ids[0]} " in ln]


@pytest.fixture(scope="module")
def exim(namespace: Namespace) -> Iterator[Exim]:
    root = _unpack(EXIM_PACKAGES)
    namespace.refresh_libraries()
    binary = root / "usr" / "sbin" / "exim4"
    work = _world_dir("mailexec-exim-")
    for sub in ("spool", "log"):
        (work / sub).mkdir()
        os.chown(work / sub, EXIM_UID, EXIM_UID)
    os.chmod(work, 0o777)  # appendfile (as the mailexec uid) creates the test's mailbox here
    _stub(work)
    (work / "mailexec-recipients").write_text(
        (EXIM_DIR / "mailexec-recipients.example").read_text()
        + "fail@example.org\ndefer@example.org\ngone@example.org\ndown@example.org\n"
    )
    (work / "mailexec-token").write_text("mta_token-from-test\n")
    sock_dir = work / "run"
    sock_dir.mkdir()
    yield Exim(namespace, binary, work, work / "submitted", free_port(), sock_dir / "lmtp.sock")
    shutil.rmtree(work, ignore_errors=True)


TRANSPORTS = ["mailexec_lmtp", "mailexec_lmtp_socket", "mailexec_lmtp_tls", "mailexec_pipe"]


def test_exim_config_verifies(exim: Exim) -> None:
    """exim -bV accepts the fragments, whichever transport the router names."""
    for transport in TRANSPORTS:
        r = exim.exim(exim.config(transport), "-bV")
        assert r.returncode == 0, f"{transport}: {r.stderr}{r.stdout}"
        assert "Exim version 4." in r.stdout
        assert "Configuration file is" in r.stdout
        assert not r.stderr.strip(), r.stderr


def _routes(output: str) -> dict[str, list[str]]:
    """exim -bt output → {address: ["router/transport", ...]}."""
    routes: dict[str, list[str]] = {}
    addr = ""
    for line in output.splitlines():
        if line and not line.startswith(" "):
            addr = line.split()[0]
            routes.setdefault(addr, [])
            if "undeliverable" in line:
                routes[addr].append("undeliverable")
        m = re.match(r"\s+router = (\S+), transport = (\S+)", line)
        if m:
            routes[addr].append(f"{m.group(1)}/{m.group(2)}")
    return routes


def test_exim_routes_by_full_address(exim: Exim) -> None:
    for transport in TRANSPORTS:
        r = exim.exim(
            exim.config(transport), "-bt",
            "bob@example.org", "Bob@EXAMPLE.org", "carol@example.org", "dave@example.org",
            "bob@other.example",
        )
        routes = _routes(r.stdout)
        mx = f"mailexec/{transport}"
        assert routes["bob@example.org"] == [mx], r.stdout
        assert routes["Bob@EXAMPLE.org"] == [mx], r.stdout  # lsearch keys match without regard to case
        # keep-mailbox: unseen, so mailexec and the mailbox router both get carol
        assert sorted(routes["carol@example.org"]) == sorted([mx, "mailbox/mailbox"]), r.stdout
        assert routes["dave@example.org"] == ["mailbox/mailbox"], r.stdout  # not listed
        # the same local part in another domain is another address: not mailexec's
        assert routes["bob@other.example"] == ["undeliverable"], r.stdout


def _outcomes(lines: list[str]) -> dict[str, str]:
    """Exim log lines of one message → {address: "=>" delivered | "**" failed | "==" deferred}."""
    out: dict[str, str] = {}
    for ln in lines:
        m = re.search(r" (=>|\*\*|==) (\S+)(?: <(\S+)>)? ", ln + " ")
        if m:
            out.setdefault(m.group(3) or m.group(2), m.group(1))
    return out


def test_exim_pipe_delivers_to_mailexec_submit(exim: Exim) -> None:
    """The pipe transport runs the command with the full address; 75 defers, 65 bounces."""
    conf = exim.config("mailexec_pipe")
    rcpts = ["bob@example.org", "carol@example.org", "fail@example.org", "defer@example.org"]
    lines = exim.deliver(conf, "alice@sender.test", rcpts)
    log = "\n".join(lines)
    outcome = _outcomes(lines)
    assert outcome["bob@example.org"] == "=>", log
    assert "T=mailexec_pipe" in log
    assert "Tainted" not in log, log
    assert outcome["fail@example.org"] == "**", log  # 65 EX_DATAERR: bounce
    assert "returned 65" in log
    assert outcome["defer@example.org"] == "==", log  # 75 EX_TEMPFAIL: defer, retry later
    assert "4.3.0 mailexec submit: cannot reach ingest" in log  # log_defer_output
    assert (exim.work / "mailbox").exists()  # carol's keep-mailbox copy
    runs = _submitted(exim.stub_out)
    for rcpt in rcpts:
        run = runs[rcpt]
        assert run.argv[0] == "submit"
        assert f"--to={rcpt}" in run.argv
        assert "--from=alice@sender.test" in run.argv
        assert any(a.startswith("--idempotency-key=") and len(a) > 20 for a in run.argv), run.argv
        assert not run.message.startswith(b"From "), run.message[:80]  # message_prefix =
        assert run.message.endswith(b".leading dot\n"), run.message[-40:]  # message_suffix =
        assert b"Subject: recipe" in run.message

    # the null sender: --from= (empty)
    for f in exim.stub_out.iterdir():
        f.unlink()
    lines = exim.deliver(conf, "", ["bob@example.org"])
    assert _outcomes(lines)["bob@example.org"] == "=>", lines
    assert "--from=" in _submitted(exim.stub_out)["bob@example.org"].argv


def test_exim_lmtp_over_tcp(exim: Exim) -> None:
    """The smtp transport with protocol = lmtp: RCPT TO is the full address; 550 bounces, 451 defers."""
    server = LmtpServer(tcp_port=exim.lmtp_port)
    try:
        conf = exim.config("mailexec_lmtp")
        rcpts = ["bob@example.org", "carol@example.org", "gone@example.org", "down@example.org"]
        lines = exim.deliver(conf, "alice@sender.test", rcpts)
    finally:
        server.close()
    log = "\n".join(lines)
    outcome = _outcomes(lines)
    assert outcome["bob@example.org"] == "=>", log
    assert outcome["carol@example.org"] == "=>", log
    assert f"T=mailexec_lmtp H=127.0.0.1 [127.0.0.1]:{exim.lmtp_port}" in log or "H=127.0.0.1" in log, log
    assert outcome["gone@example.org"] == "**", log
    assert "550 5.1.1" in log
    assert outcome["down@example.org"] == "==", log
    assert len(server.transactions) == 1, "one LMTP transaction for the message's recipients"
    t = server.transactions[0]
    assert t.mail_from.startswith("MAIL FROM:<alice@sender.test>")
    assert sorted(t.rcpts) == ["bob@example.org", "carol@example.org"]
    assert b"Subject: recipe" in t.data and b"\r\n.leading dot\r\n" in t.data


def test_exim_lmtp_over_unix_socket(exim: Exim) -> None:
    """The lmtp transport with socket =, as the Exim user through the socket's group (mode 0660)."""
    path = exim.socket_path
    path.unlink(missing_ok=True)
    server = LmtpServer(unix_path=path)
    try:
        os.chown(path, 0, LMTP_GID)
        os.chmod(path, 0o660)
        os.chmod(path.parent, 0o755)
        lines = exim.deliver(exim.config("mailexec_lmtp_socket"), "alice@sender.test",
                             ["bob@example.org", "gone@example.org"])
    finally:
        server.close()
    log = "\n".join(lines)
    outcome = _outcomes(lines)
    assert outcome["bob@example.org"] == "=>", log
    assert "T=mailexec_lmtp_socket" in log
    assert outcome["gone@example.org"] == "**", log
    assert [t.rcpts for t in server.transactions] == [["bob@example.org"]]


# ---- sendmail -----------------------------------------------------------------------------


@dataclass
class Sendmail:
    ns: Namespace
    root: Path
    work: Path
    stub_out: Path
    lmtp_port: int

    @property
    def binary(self) -> Path:
        return self.root / "usr" / "libexec" / "sendmail" / "sendmail"

    def build(self, mailexec_m4: str, name: str) -> tuple[Path, str]:
        """A .mc with the recipe included where sendmail.mc.example puts it → .cf (m4 + cf.m4)."""
        cfdir = self.root / "usr" / "share" / "sendmail" / "cf"
        w = self.work
        (w / f"{name}.m4").write_text(mailexec_m4)
        mc = w / f"{name}.mc"
        mc.write_text(
            "divert(-1)dnl\n"
            f"include(`{cfdir}/m4/cf.m4')dnl\n"
            "VERSIONID(`mailexec recipe test')dnl\n"
            "OSTYPE(`linux')dnl\n"
            f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl\n"
            # the test's files live under /tmp (world-writable, sticky): tell sendmail that is fine
            "define(`confDONT_BLAME_SENDMAIL',"
            " `MapInUnsafeDirPath,TrustStickyBit,RunProgramInUnsafeDirPath')dnl\n"
            f"define(`ALIAS_FILE', `{w}/aliases')dnl\n"
            f"define(`QUEUE_DIR', `{w}/queue')dnl\n"
            f"FEATURE(`mailertable', `hash -o {w}/mailertable')dnl\n"
            "MAILER(`local')dnl\n"
            "MAILER(`smtp')dnl\n"
            f"include(`{w}/{name}.m4')dnl\n"
            "LOCAL_CONFIG\n"
            "Cwexample.org\n"
        )
        m4 = self.root / "usr" / "bin" / "m4"
        r = _run([str(m4), f"-D_CF_DIR_={cfdir}/", str(mc)])
        assert r.returncode == 0 and not r.stderr.strip(), f"m4: {r.stderr}"
        cf = w / f"{name}.cf"
        cf.write_text(r.stdout)
        return cf, r.stdout

    def recipe(self) -> str:
        m4 = (SENDMAIL_DIR / "mailexec.m4").read_text()
        m4 = _swap(m4, "Kmailexec hash -o /etc/mail/mailexec-recipients",
                   f"Kmailexec hash -o {self.work}/mailexec-recipients")
        m4 = _swap(m4, "A=TCP $h 8024", f"A=TCP $h {self.lmtp_port}")
        m4 = _swap(m4, "A=FILE /run/mailexec/lmtp.sock", f"A=FILE {self.work}/lmtp.sock")
        return _swap(m4, "P=/usr/local/bin/mailexec,", f"P={self.work}/mailexec-stub,")

    def makemap(self, cf: Path, name: str, text: str) -> None:
        (self.work / name).write_text(text)
        makemap = self.root / "usr" / "libexec" / "sendmail" / "makemap"
        with open(self.work / name) as src:
            r = subprocess.run([str(makemap), "-C", str(cf), "hash", str(self.work / name)],
                               stdin=src, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr

    def bt(self, cf: Path, commands: list[str]) -> str:
        r = self.ns.run([str(self.binary), "-C", str(cf), "-bt"], input="\n".join(commands).encode() + b"\n")
        assert r.returncode == 0, r.stderr
        return r.stdout

    def send(self, cf: Path, sender: str, rcpts: list[str]) -> str:
        r = self.ns.run(
            [str(self.binary), "-C", str(cf), "-odi", "-oi", "-v", "-f", sender, *rcpts], input=MESSAGE
        )
        return r.stdout + r.stderr


@pytest.fixture(scope="module")
def sendmail(namespace: Namespace) -> Iterator[Sendmail]:
    root = _unpack(SENDMAIL_PACKAGES)
    namespace.refresh_libraries()
    work = _world_dir("mailexec-sendmail-")
    (work / "queue").mkdir(mode=0o700)
    (work / "aliases").write_text("postmaster: root\n")
    _stub(work)
    yield Sendmail(namespace, root, work, work / "submitted", free_port())
    shutil.rmtree(work, ignore_errors=True)


RECIPIENTS_MAP = (
    "carol@example.org\tmailexecpipe:localhost\n"
    "fail@example.org\tmailexecpipe:localhost\n"
    "defer@example.org\tmailexecpipe:localhost\n"
    "gone@example.org\tmailexec:[127.0.0.1]\n"
    "down@example.org\tmailexec:[127.0.0.1]\n"
    "sock@example.org\tmailexecsock:localhost\n"
)


@pytest.fixture(scope="module")
def sendmail_cf(sendmail: Sendmail) -> Path:
    cf, _ = sendmail.build(sendmail.recipe(), "recipe")
    sendmail.makemap(cf, "mailertable", (SENDMAIL_DIR / "mailertable.example").read_text()
                     + "sender.test\tmailexecpipe:localhost\n")
    sendmail.makemap(cf, "mailexec-recipients",
                     (SENDMAIL_DIR / "mailexec-recipients.example").read_text() + RECIPIENTS_MAP)
    return cf


def _mailer_line(cf_text: str, name: str) -> str:
    m = re.search(rf"^M{name},.*(?:\n[ \t].*)*", cf_text, re.M)
    assert m, f"no mailer {name} in the .cf"
    return " ".join(m.group(0).split())


def test_sendmail_cf_has_the_mailers(sendmail: Sendmail, sendmail_cf: Path) -> None:
    cf = sendmail_cf.read_text()
    lmtp = _mailer_line(cf, "mailexec")
    assert "P=[IPC]" in lmtp and f"A=TCP $h {sendmail.lmtp_port}" in lmtp
    sock = _mailer_line(cf, "mailexecsock")
    assert "P=[IPC]" in sock and "A=FILE " in sock
    pipe = _mailer_line(cf, "mailexecpipe")
    assert "A=mailexec submit --from=$g --to=$u --idempotency-key=$i" in pipe
    for line in (lmtp, sock, pipe):
        assert "R=EnvToSMTP" in line, line
        flags = re.search(r"F=(\w+)", line).group(1)  # type: ignore[union-attr]
        assert "l" not in flags and "P" not in flags, line  # see mailexec.m4: no local flag, no Return-Path
    assert "S=EnvFromMailexec/" in pipe
    assert "\nSEnvFromMailexec\n" in cf
    for line in (lmtp, sock):
        assert "S=EnvFromSMTP/" in line
        assert set("zmX") <= set(re.search(r"F=(\w+)", line).group(1)), line  # type: ignore[union-attr]
    assert "n" in re.search(r"F=(\w+)", pipe).group(1)  # type: ignore[union-attr]  # no "From " line
    assert "Kmailexec hash -o" in cf


def _parsed(bt_output: str) -> list[str]:
    return re.findall(r"^mailer .*$", bt_output, re.M)


def test_sendmail_resolves_to_the_full_address(sendmail: Sendmail, sendmail_cf: Path) -> None:
    out = sendmail.bt(sendmail_cf, [
        "3,0 bob@prog.example.org",
        "/parse bob@prog.example.org",  # mailertable: the whole domain
        "/parse bob@example.org",  # the map of single accounts
        "/parse Bob@Example.org",
        "/parse carol@example.org",
        "/parse sock@example.org",
        "/parse dave@example.org",  # not listed: local delivery as before
    ])
    assert re.search(r"^parse\s+returns: \$# mailexec \$@ \[ 127 \. 0 \. 0 \. 1 \] "
                     r"\$: bob < @ prog \. example \. org >$", out, re.M), out
    assert _parsed(out) == [
        "mailer mailexec, host [127.0.0.1], user bob@prog.example.org",
        "mailer mailexec, host [127.0.0.1], user bob@example.org",
        "mailer mailexec, host [127.0.0.1], user Bob@Example.org",
        "mailer mailexecpipe, host localhost, user carol@example.org",
        "mailer mailexecsock, host localhost, user sock@example.org",
        "mailer local, user dave",
    ], out
    # $g for the pipe: the null sender and sendmail's own MAILER-DAEMON are empty (--from=)
    for sender in ("<>", "MAILER-DAEMON"):
        out = sendmail.bt(sendmail_cf, ["/tryflags es", f"/try mailexecpipe {sender}"])
        assert re.search(r"^EnvFromMailexec\s+returns:\s*$", out, re.M), out
    out = sendmail.bt(sendmail_cf, ["/tryflags es", "/try mailexecpipe alice@sender.test"])
    assert re.search(r"^Rcode = 0, addr = alice@sender.test$", out, re.M), out


def test_sendmail_old_recipe_would_strip_the_domain(sendmail: Sendmail) -> None:
    """The check above can fail: with R=EnvToL (the old recipe) the user is "bob"."""
    old = sendmail.recipe().replace("R=EnvToSMTP", "R=EnvToL")
    cf, _ = sendmail.build(old, "old")
    out = sendmail.bt(cf, ["/parse bob@prog.example.org"])
    assert _parsed(out) == ["mailer mailexec, host [127.0.0.1], user bob"], out


def test_sendmail_delivers_over_lmtp(sendmail: Sendmail, sendmail_cf: Path) -> None:
    for f in sendmail.stub_out.iterdir():
        f.unlink()
    server = LmtpServer(tcp_port=sendmail.lmtp_port)
    try:
        out = sendmail.send(sendmail_cf, "alice@sender.test",
                            ["bob@prog.example.org", "bob@example.org", "gone@example.org",
                             "down@example.org"])
    finally:
        server.close()
    assert len(server.transactions) == 1, out
    t = server.transactions[0]
    assert t.lhlo == HOSTNAME, t
    assert t.mail_from.upper().startswith("MAIL FROM:<ALICE@SENDER.TEST>"), t
    assert sorted(t.rcpts) == ["bob@example.org", "bob@prog.example.org"], t
    assert b"Subject: recipe" in t.data and b"\r\n.leading dot\r\n" in t.data
    assert not t.data.startswith(b"From "), t.data[:60]
    assert re.search(r"down@example.org\.\.\. Deferred: 451 4\.3\.0", out), out
    # gone@ (550 5.1.1 at RCPT) bounced: the DSN to alice went through the test's route to the stub
    bounce = _submitted(sendmail.stub_out)["alice@sender.test"].message
    assert b"Final-Recipient: RFC822; gone@example.org" in bounce, bounce.decode(errors="replace")
    assert b"Status: 5.1.1" in bounce
    assert b"Final-Recipient: RFC822; down@example.org" not in bounce  # deferred, not failed

    # the null sender: MAIL FROM:<>
    server = LmtpServer(tcp_port=sendmail.lmtp_port)
    try:
        out = sendmail.send(sendmail_cf, "<>", ["bob@example.org"])
    finally:
        server.close()
    assert [t.mail_from.split()[1].upper() for t in server.transactions] == ["FROM:<>"], out


def test_sendmail_delivers_through_the_pipe(sendmail: Sendmail, sendmail_cf: Path) -> None:
    for f in sendmail.stub_out.iterdir():
        f.unlink()
    out = sendmail.send(sendmail_cf, "alice@sender.test",
                        ["carol@example.org", "fail@example.org", "defer@example.org"])
    runs = _submitted(sendmail.stub_out)
    for rcpt in ("carol@example.org", "fail@example.org", "defer@example.org"):
        argv = runs[rcpt].argv
        assert argv[:2] == ["submit", "--from=alice@sender.test"], argv
        assert argv[2] == f"--to={rcpt}", argv
        assert argv[3].startswith("--idempotency-key=") and len(argv[3]) > len("--idempotency-key="), argv
        assert not runs[rcpt].message.startswith(b"From "), runs[rcpt].message[:60]
        assert b"Subject: recipe" in runs[rcpt].message
    assert re.search(r"carol@example.org\.\.\. Sent", out), out
    assert re.search(r"defer@example.org\.\.\. .*Deferred", out), out
    # fail@ bounced: the DSN to alice (routed to the stub by the test's mailertable) names it
    # with submit's reason, and has the null sender, which sendmail passes as an empty --from=
    bounce = runs.get("alice@sender.test")
    assert bounce is not None and "--from=" in bounce.argv, (sorted(runs), out)
    dsn = bounce.message.decode(errors="replace")
    assert "Final-Recipient: RFC822; fail@example.org" in dsn, dsn
    assert "5.6.0 mailexec submit: ingest answered HTTP 400" in dsn, dsn  # submit's reason
    assert "Final-Recipient: RFC822; defer@example.org" not in dsn  # 75: queued, not failed

    # a message with the null sender itself
    for f in sendmail.stub_out.iterdir():
        f.unlink()
    out = sendmail.send(sendmail_cf, "<>", ["carol@example.org"])
    assert re.search(r"carol@example.org\.\.\. Sent", out), out
    assert _submitted(sendmail.stub_out)["carol@example.org"].argv[1] == "--from="
