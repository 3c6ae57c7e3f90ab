"""`make run` / `make test` helper: bring the local machine to a runnable state.

``python -m mailexec.devrun --services-only`` makes sure PostgreSQL and RabbitMQ are
running (starting them, or on Debian as root installing them from the OS packages) and
exits. Without the flag it then applies the migrations, starts an SMTP sink for DSNs,
runs all services under ``mailexec up``, loads demo data (one trusted program, one
account owned by an unprivileged uid) and prints where everything is, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.secretfile import secret_from_env

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
DEMO_UID = 64000
DEMO_HOME = Path("/var/lib/mailexec/demo/home")
SINK_PORT = int(os.environ.get("MAILEXEC_DEV_SMTP_PORT", "2525"))

# Programs get exactly TZ and AGENT in their environment (no HOME, no PATH) and start in
# the owner's home directory, so the demo program works relative to its cwd.
DEMO_PROGRAM = b"""#!/bin/sh
# savemail: store each message in ~/inbox (a trusted demo program; it prints nothing)
umask 077
mkdir -p inbox && exec /bin/cat > "inbox/$(/bin/date +%s.%N).eml"
"""


def say(msg: str) -> None:
    print(f"mailexec: {msg}", flush=True)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, seconds: int) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.5)
    return False


def _is_debian_root() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(*packages: str) -> None:
    say(f"installing {' '.join(packages)} from the OS packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env)


def ensure_postgres() -> None:
    if port_open("127.0.0.1", 5432):
        return
    if not Path("/etc/postgresql").is_dir() or not os.listdir("/etc/postgresql"):
        if not _is_debian_root():
            sys.exit(
                "mailexec: PostgreSQL is not running on 127.0.0.1:5432 and not installed.\n"
                "  Install PostgreSQL 13+ (Debian/Ubuntu: apt-get install postgresql), allow\n"
                "  trust or password auth for user postgres, or set MAILEXEC_DATABASE_URL."
            )
        _apt_install("postgresql")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    say(f"starting PostgreSQL {version}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False
    )
    if not _wait_port("127.0.0.1", 5432, 60):
        sys.exit("mailexec: PostgreSQL did not come up on 127.0.0.1:5432; see its log in /var/log/postgresql")


def ensure_rabbitmq() -> None:
    if port_open("127.0.0.1", 5672):
        return
    if shutil.which("rabbitmq-server") is None:
        if not _is_debian_root():
            sys.exit(
                "mailexec: RabbitMQ is not running on 127.0.0.1:5672 and not installed.\n"
                "  Install RabbitMQ 3.10+ (Debian/Ubuntu: apt-get install rabbitmq-server)\n"
                "  or set MAILEXEC_AMQP_URL."
            )
        _apt_install("rabbitmq-server")
    say("starting RabbitMQ")
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", "120"], check=False)
    if not _wait_port("127.0.0.1", 5672, 60):
        sys.exit("mailexec: RabbitMQ did not come up on 127.0.0.1:5672; see /var/log/rabbitmq")


def ensure_infra() -> None:
    ensure_postgres()
    ensure_rabbitmq()


# What `make test` may install from the OS packages when missing (as root, with apt-get)
# and why: announced before pytest starts, so nothing is installed silently. Kept in step
# with every apt-get in tests/ and testing/ by tests/cli/test_devrun_announce.py.
TEST_PACKAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("postfix", ("/usr/sbin/postfix", "/usr/sbin/smtp-source"),
     "the Postfix pipe(8) and lmtp(8) tests (a private instance; testing/private_postfix.py)"),
    ("swaks", ("swaks",), "the LMTP test with the swaks client (tests/ingest/test_lmtp.py)"),
    ("nftables", ("nft",), "the executor's egress namespace tests (tests/netlab.py)"),
    ("chromium", ("/usr/bin/chromium",), "the console's browser tests (tests/console/browser)"),
)
# Downloaded (apt-get download) and unpacked under this directory, never installed: the
# Exim and sendmail recipes run in a private namespace (tests/cli/test_mta_recipes.py).
TEST_DOWNLOADS = ("exim4-daemon-light", "exim4-base", "sendmail-cf", "m4", "sendmail-bin")
TEST_DOWNLOAD_DIR = Path("/tmp/mailexec-mta-recipes")


def _present(probe: str) -> bool:
    return os.path.exists(probe) if probe.startswith("/") else shutil.which(probe) is not None


def announce_test_installs() -> list[str]:
    """Say, one line a package, what the tests will install or download here, and why."""
    lines: list[str] = []
    can_install = _is_debian_root()
    for package, probes, why in TEST_PACKAGES:
        if all(_present(p) for p in probes):
            continue
        if can_install:
            lines.append(f"make test will install {package} (apt-get install {package}) for {why}")
        else:
            lines.append(f"{package} is missing and will not be installed (not root with apt-get): "
                         f"{why} will be skipped")
    stamps = TEST_DOWNLOAD_DIR / "stamps"
    fetch = [p for p in TEST_DOWNLOADS if not (stamps / p).exists()]
    if fetch and can_install:
        lines.append(f"make test will download (not install) {', '.join(fetch)} into "
                     f"{TEST_DOWNLOAD_DIR} for the Exim and sendmail recipe tests")
    if not lines:
        lines.append("make test installs nothing: the OS packages its tests use are present")
    for line in lines:
        say(line)
    return lines


TOKEN_VARS = (
    ("MAILEXEC_ADMIN_TOKEN", "mxa"),
    ("MAILEXEC_INGEST_TOKEN", "mxm"),
    ("MAILEXEC_SERVICE_TOKEN", "mxs"),
    ("MAILEXEC_CONSOLE_SECRET", "mxk"),  # keys the console's session cookies
)
# The demo account's own (role user) token, for signing in to the console as that user:
# kept in tokens.env beside the others, issued again if the saved one no longer works.
DEMO_USER_TOKEN_VAR = "MAILEXEC_DEMO_USER_TOKEN"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically.

    A new file of a random name is created beside ``path`` with mode 0600 from the start
    (O_EXCL, O_NOFOLLOW: nothing planted there is opened), written, fsynced and renamed
    over ``path``: no reader ever sees a partial file or one with a wider mode, and a
    symlink at ``path`` is replaced, not followed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, with or without ``export`` and shell quoting (older files)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line.removeprefix("export "))
        if len(words) == 1 and "=" in words[0]:
            key, _, value = words[0].partition("=")
            found[key] = value
    return found


def _save_tokens(values: dict[str, str]) -> None:
    text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    write_private(RUN_DIR / "tokens.env", text)


def _tokens() -> dict[str, str]:
    """Tokens from the environment, else the ones saved by an earlier `make run`, else new.

    Saved as ``export`` lines, so ``. .run/tokens.env && mailexec status`` works.
    """
    RUN_DIR.mkdir(exist_ok=True)
    saved = RUN_DIR / "tokens.env"
    found = read_env_file(saved) if saved.exists() else {}
    out = {}
    for var, prefix in TOKEN_VARS:
        given = secret_from_env(var)  # MAILEXEC_X or MAILEXEC_X_FILE
        out[var] = given or found.get(var) or f"{prefix}_{secrets.token_urlsafe(24)}"
    if found.get(DEMO_USER_TOKEN_VAR):
        out[DEMO_USER_TOKEN_VAR] = found[DEMO_USER_TOKEN_VAR]
    _save_tokens(out)
    return out


def _start_sink(mail_dir: Path) -> object:
    from aiosmtpd.controller import Controller

    mail_dir.mkdir(parents=True, exist_ok=True)

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            name = mail_dir / f"{time.time():.6f}.eml"
            name.write_bytes(envelope.original_content or envelope.content)
            print(f"mailexec: SMTP sink stored {name.name} for {', '.join(envelope.rcpt_tos)}", flush=True)
            return "250 OK stored"

    controller = Controller(Handler(), hostname="127.0.0.1", port=SINK_PORT)
    controller.start()
    return controller


def _wait_ready(urls: dict[str, str], seconds: int = 60) -> None:
    deadline = time.monotonic() + seconds
    pending = dict(urls)
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    say(f"{name} ready at {url}")
                    del pending[name]
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    if pending:
        say(f"not ready after {seconds}s: {', '.join(pending)} (see the log lines above)")


def _demo_user_token(policy_url: str, admin_token: str, saved: str) -> str:
    """The demo account's user token: the saved one while policy still accepts it, else a
    new one (a fresh database, or the token was revoked)."""
    with httpx.Client(base_url=policy_url, timeout=10) as c:
        if saved:
            r = c.get("/v1/accounts/demo@localhost/programs",
                      headers={"Authorization": f"Bearer {saved}"})
            if r.status_code == 200:
                return saved
        r = c.post("/v1/accounts/demo@localhost/tokens",
                   headers={"Authorization": f"Bearer {admin_token}"})
        r.raise_for_status()
        return str(r.json()["token"])


def _load_demo(policy_url: str, admin_token: str) -> None:
    DEMO_HOME.mkdir(parents=True, exist_ok=True)
    for p in (DEMO_HOME.parent.parent, DEMO_HOME.parent):
        p.chmod(0o755)
    os.chown(DEMO_HOME, DEMO_UID, DEMO_UID)
    DEMO_HOME.chmod(0o700)
    h = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=policy_url, headers=h, timeout=10) as c:
        r = c.put(
            "/v1/programs/savemail",
            content=DEMO_PROGRAM,
            headers={"Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
        r = c.put(
            "/v1/accounts/demo@localhost",
            json={
                "owner": {
                    "name": "demo",
                    "uid": DEMO_UID,
                    "gid": DEMO_UID,
                    "home": str(DEMO_HOME),
                    "shell": "/bin/sh",
                },
                "program_delivery": {"enabled": True, "programs": ["savemail"]},
                "mailbox_delivery": False,
            },
        )
        r.raise_for_status()
        c.patch("/v1/settings", json={"postmaster": "postmaster@localhost"}).raise_for_status()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services-only", action="store_true", help="only make sure PostgreSQL and RabbitMQ run")
    ap.add_argument("--announce-test-installs", action="store_true",
                    help="first say what the test suite will install from the OS packages, and why")
    args = ap.parse_args()
    if args.announce_test_installs:
        announce_test_installs()
    ensure_infra()
    if args.services_only:
        return 0

    env = dict(os.environ)
    env.update(_tokens())
    saved_user_token = env.pop(DEMO_USER_TOKEN_VAR, "")  # for the console's user, not a service's
    for var, _ in TOKEN_VARS:  # read above; the services get the value, not both forms
        env.pop(f"{var}_FILE", None)
        os.environ.pop(f"{var}_FILE", None)
    env.setdefault("MAILEXEC_SMTP_URL", f"smtp://127.0.0.1:{SINK_PORT}")
    env.setdefault("MAILEXEC_REPORTING_MTA", "localhost")
    for k, v in env.items():
        if k.startswith("MAILEXEC_"):
            os.environ[k] = v
    from shared.settings import get_settings

    get_settings.cache_clear()
    s = get_settings()
    say("applying migrations")
    subprocess.run([sys.executable, "-m", "mailexec", "migrate"], check=True, env=env)
    sink = _start_sink(RUN_DIR / "mail")
    say(f"SMTP sink for DSNs on 127.0.0.1:{SINK_PORT}, messages in {RUN_DIR / 'mail'}")
    up = subprocess.Popen([sys.executable, "-m", "mailexec", "up"], env=env)
    urls = {
        "policy": f"http://127.0.0.1:{s.policy_port}",
        "ingest": f"http://127.0.0.1:{s.ingest_port}",
        "notifier": f"http://127.0.0.1:{s.notifier_port}",
        "executor": f"http://127.0.0.1:{s.executor_metrics_port}",
        "console": f"http://127.0.0.1:{s.console_port}",
    }
    _wait_ready(urls)
    user_token = "(none: the demo data could not be loaded)"
    try:
        _load_demo(urls["policy"], env["MAILEXEC_ADMIN_TOKEN"])
        say("demo data loaded: trusted program 'savemail', account demo@localhost (uid 64000)")
        user_token = _demo_user_token(urls["policy"], env["MAILEXEC_ADMIN_TOKEN"],
                                      saved_user_token)
        _save_tokens({**{var: env[var] for var, _ in TOKEN_VARS},
                      DEMO_USER_TOKEN_VAR: user_token})
    except httpx.HTTPError as exc:
        say(f"could not load demo data: {exc}")
    print(
        f"""
  console   {urls['console']}   (sign in with a token below)
  policy    {urls['policy']}   (API docs {urls['policy']}/docs)
  ingest    {urls['ingest']}   (API docs {urls['ingest']}/docs)
  LMTP      127.0.0.1:{s.lmtp_port}   (for an MTA: Postfix lmtp:inet:127.0.0.1:{s.lmtp_port})
  notifier  {urls['notifier']}
  executor  {urls['executor']}/metrics
  DSNs      SMTP sink 127.0.0.1:{SINK_PORT} -> {RUN_DIR / 'mail'}
  tokens    saved in {RUN_DIR / 'tokens.env'} (mode 0600; `. .run/tokens.env` sets them)
    admin   {env['MAILEXEC_ADMIN_TOKEN']}
    mta     {env['MAILEXEC_INGEST_TOKEN']}
    demo@localhost (user: its Delivery Options page)
            {user_token}

Try it (another terminal):
  printf 'From: alice@example.org\\nSubject: hi\\n\\nhello\\n' | \\
    curl -s -X POST -H 'Authorization: Bearer {env['MAILEXEC_INGEST_TOKEN']}' \\
      -H 'Content-Type: message/rfc822' --data-binary @- \\
      '{urls['ingest']}/v1/messages?from=alice@example.org&to=demo@localhost'
  curl -s -H 'Authorization: Bearer {env['MAILEXEC_INGEST_TOKEN']}' {urls['ingest']}/v1/messages/<id>
  swaks --protocol LMTP --server 127.0.0.1:{s.lmtp_port} --from alice@example.org --to demo@localhost
                                # the same over LMTP, as an MTA would (apt-get install swaks)
  ls {DEMO_HOME}/inbox          # the delivered message, written by uid {DEMO_UID}
  curl -s -H 'Authorization: Bearer {env['MAILEXEC_ADMIN_TOKEN']}' {urls['policy']}/v1/status

Ctrl-C stops everything.
""",
        flush=True,
    )
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop and up.poll() is None:
        time.sleep(0.3)
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
    sink.stop()  # type: ignore[attr-defined]
    if not stop:  # every service refused to start (see `mailexec up` above)
        say(f"stopped: mailexec up exited with status {up.returncode}")
        return up.returncode or 1
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
