"""The compose file's one-shot `secrets` service: generate its credentials on first start.

deploy/compose.yaml ships no credentials. Before anything else starts, this script (run by
the `secrets` service from the mailexec image, as root with only CAP_CHOWN) makes sure the
named volume `secrets` holds the release's master secrets, generating what is missing:

    postgres_password  rabbitmq_password  admin_token  ingest_token  service_token
    console_secret

and then writes, for each consumer, only what it needs into that consumer's own volume,
each file owned by the uid that reads it, mode 0400, replaced atomically:

    secrets-postgres  password                     999:999  (postgres image's uid)
    secrets-rabbitmq  rabbitmq.conf                999:999  (rabbitmq image's uid)
    secrets-mailexec  database_url amqp_url
                      admin_token ingest_token
                      service_token                10001:10001  (ingest, policy, notifier, migrate)
    secrets-executor  database_url amqp_url
                      service_token                0:0  (the executor reads them before
                                                    dropping privilege; no admin/ingest token)
    secrets-console   console_secret               10001:10001  (the console's cookie key; it
                                                    holds no token, database or broker URL)

Existing master secrets are never replaced, so restarts keep every credential. The master
volume is root's (directory 0700, files 0400): nothing but this service mounts it.

    python3 compose_secrets.py                 # generate what is missing, write the consumers'
    python3 compose_secrets.py set NAME        # store stdin as master secret NAME (e.g. the
                                               # PostgreSQL password of an existing volume,
                                               # UPGRADING.md), then write the consumers'

Only the standard library: it runs from the image's Python without the project's packages.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MASTER_DIR = Path(os.environ.get("SECRETS_MASTER_DIR", "/secrets/master"))
OUT_DIR = Path(os.environ.get("SECRETS_OUT_DIR", "/secrets"))

DB_USER = "mailexec"
DB_NAME = "mailexec"
MQ_USER = "mailexec"

# Master secret -> how to make a fresh one. Passwords are hex: they go into URLs unquoted.
GENERATORS = {
    "postgres_password": lambda: secrets.token_hex(32),
    "rabbitmq_password": lambda: secrets.token_hex(32),
    "admin_token": lambda: secrets.token_urlsafe(36),
    "ingest_token": lambda: secrets.token_urlsafe(36),
    "service_token": lambda: secrets.token_urlsafe(36),
    # The key of the console's encrypted session cookies (any length; 64 characters here).
    "console_secret": lambda: secrets.token_urlsafe(48),
}
# What a stored secret may be: nothing a URL would need to quote (generated ones are 48+).
VALUE = re.compile(r"[A-Za-z0-9._~-]{1,256}")
WEAK_BELOW = 16


@dataclass(frozen=True)
class Consumer:
    directory: str
    uid: int
    gid: int


def consumers() -> dict[str, Consumer]:
    """Where each consumer's files go and whose they are (uids overridable by env)."""

    def ids(prefix: str, default: int) -> tuple[int, int]:
        uid = int(os.environ.get(f"{prefix}_UID", default))
        return uid, int(os.environ.get(f"{prefix}_GID", uid))

    return {
        "postgres": Consumer("postgres", *ids("POSTGRES", 999)),
        "rabbitmq": Consumer("rabbitmq", *ids("RABBITMQ", 999)),
        "mailexec": Consumer("mailexec", *ids("MAILEXEC", 10001)),
        "executor": Consumer("executor", *ids("EXECUTOR", 0)),
        "console": Consumer("console", *ids("CONSOLE", 10001)),
    }


def files_for(master: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each consumer's files (name -> content), derived from the master secrets."""
    database_url = f"postgresql+asyncpg://{DB_USER}:{master['postgres_password']}@postgres:5432/{DB_NAME}"
    amqp_url = f"amqp://{MQ_USER}:{master['rabbitmq_password']}@rabbitmq:5672/"
    return {
        "postgres": {"password": master["postgres_password"]},
        # Loaded by RabbitMQ in addition to the image's conf.d (RABBITMQ_CONFIG_FILE); the
        # default user is created only when the node's database is empty.
        "rabbitmq": {
            "rabbitmq.conf": (
                f"default_user = {MQ_USER}\ndefault_pass = {master['rabbitmq_password']}\ndefault_vhost = /\n"
            )
        },
        "mailexec": {
            "database_url": database_url,
            "amqp_url": amqp_url,
            "admin_token": master["admin_token"],
            "ingest_token": master["ingest_token"],
            "service_token": master["service_token"],
        },
        "executor": {
            "database_url": database_url,
            "amqp_url": amqp_url,
            "service_token": master["service_token"],
        },
        # Signed-in people's own tokens do its work: its cookie key is all it holds.
        "console": {"console_secret": master["console_secret"]},
    }


def write_atomically(path: Path, content: str, uid: int, gid: int) -> None:
    """Replace ``path`` by a file holding ``content``, mode 0400, owned by uid:gid.

    The temporary file is created 0600 (mkstemp), chmod'ed and chown'ed before the rename,
    so the name never points at a file with other rights or partial content.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
        os.fchmod(fd, 0o400)
        if (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def _private_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    path.chmod(mode)


def load_master(master_dir: Path) -> dict[str, str]:
    """The master secrets, generating (and storing) the missing ones."""
    _private_dir(master_dir, 0o700)
    master: dict[str, str] = {}
    for name, generate in GENERATORS.items():
        path = master_dir / name
        if path.exists():
            master[name] = path.read_text().strip()
            if not VALUE.fullmatch(master[name]):
                raise SystemExit(f"secrets: {path} is not a usable secret; fix or delete it")
        else:
            master[name] = generate()
            write_atomically(path, master[name], 0, 0)
            print(f"secrets: generated {name}", flush=True)
    return master


def set_master(master_dir: Path, name: str, value: str) -> None:
    if name not in GENERATORS:
        raise SystemExit(f"secrets: unknown secret {name!r}; one of {', '.join(GENERATORS)}")
    value = value.strip()
    if not VALUE.fullmatch(value):
        raise SystemExit(
            "secrets: a secret is 1 to 256 characters of A-Z a-z 0-9 . _ ~ - (it goes into URLs unquoted)"
        )
    if len(value) < WEAK_BELOW:
        print(
            f"secrets: WARNING: {name} is shorter than {WEAK_BELOW} characters; rotate it (UPGRADING.md)",
            file=sys.stderr,
            flush=True,
        )
    _private_dir(master_dir, 0o700)
    write_atomically(master_dir / name, value, 0, 0)
    print(f"secrets: stored {name}", flush=True)


def write_consumers(master: dict[str, str], out_dir: Path) -> None:
    who = consumers()
    for consumer, files in files_for(master).items():
        spec = who[consumer]
        directory = out_dir / spec.directory
        # The volume root: searchable so the consumer reaches its own files, never writable.
        _private_dir(directory, 0o755)
        wanted = set(files)
        for name, content in files.items():
            write_atomically(directory / name, content, spec.uid, spec.gid)
        for stale in directory.iterdir():
            if stale.name not in wanted:
                stale.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    setter = sub.add_parser("set", help="store stdin as master secret NAME")
    setter.add_argument("name", choices=sorted(GENERATORS))
    args = parser.parse_args(argv)
    os.umask(0o077)
    if args.command == "set":
        set_master(MASTER_DIR, args.name, sys.stdin.read())
    master = load_master(MASTER_DIR)
    write_consumers(master, OUT_DIR)
    print("secrets: consumers' files written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
