"""`mailexec submit`: the MTA's side (Postfix pipe(8), sendmail prog mailer, Exim pipe transport).

Reads one message on stdin, spools it (memory up to 1 MiB, then a temporary file), and
POSTs it to ingest ``/v1/messages`` with a Content-Length, authenticated with the mta token
(``--token``, ``MAILEXEC_INGEST_TOKEN`` or ``MAILEXEC_INGEST_TOKEN_FILE``, or ``ingest_token``
in the CLI config file).

Exit status follows sysexits.h, which every MTA understands, and one line on stderr that
starts with an RFC 3463 status code (pipe(8) puts it in the bounce or the log):

====  ==============  ============================================================
0     EX_OK           ingest answered 202: stored durably, every job queued
64    EX_USAGE        bad command line (missing --to, bad --ret/--notify, …)
65    EX_DATAERR      ingest refused the message: 400, 411, 413 (5.2.3), 415, 422
67    EX_NOUSER       ingest said a recipient does not exist
75    EX_TEMPFAIL     ingest unreachable, timed out, 429 or any 5xx (503 = its DB or
                      broker is down): nothing was accepted, the MTA retries later
77    EX_NOPERM       401/403: the mta token is wrong (``--defer-auth-errors`` → 75)
====  ==============  ============================================================

Nothing accepted is lost: exit 0 only after the 202. After a timeout ingest may have
stored the message anyway; ``--idempotency-key`` (Postfix: ``${queue_id}``) makes the MTA's
retry return the same id instead of queueing twice. The key sent is a hash of the given
key with the envelope and the body's SHA-256, so a recycled queue id never merges two
different messages.

Why it is built this way: an MTA starts this once per message, so its start-up cost is
the delivery rate. :mod:`mailexec.entry` runs it before the admin CLI's stack (typer, rich,
pydantic, httpx) is imported, and this module uses the standard library only, imported
when a run needs it: tomllib only for a config file that is more than ``key = "text"``
lines, hashlib (OpenSSL) only for a message past 1 MiB (smaller ones get the builtin
SHA-256), tempfile only past 1 MiB, ssl and certifi only for https. It speaks HTTP/1.1 over a
socket itself because ``http.client`` imports ``email.parser`` and ``ssl`` (≈ 20 ms CPU,
half the budget). ``tests/cli/test_submit_cost.py`` holds it to ≤ 40 ms CPU and ≤ 20 MB
RSS per run, and checks that none of the admin stack is imported.

This module is also the one definition of the CLI's default URLs and config-file
lookup; :mod:`mailexec.client` imports them from here. The exit codes are
:mod:`shared.sysexits` (no imports of its own), like every other mailexec process's.
"""

from __future__ import annotations

import os
import sys

from shared.sysexits import EX_DATAERR, EX_NOPERM, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE

TYPE_CHECKING = False  # typing costs ≈ 3 ms to import; mypy still reads the block below
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator
    from typing import IO, Any

DEFAULT_URLS = {
    "policy": "http://127.0.0.1:8026",
    "ingest": "http://127.0.0.1:8025",
    "notifier": "http://127.0.0.1:8027",
}

SPOOL_MEMORY_BYTES = 1 << 20
CHUNK = 64 * 1024
MAX_RESPONSE_HEAD = 64 * 1024
MAX_RESPONSE_BODY = 1 << 20  # ingest answers with a small JSON document
NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}
NOUSER_CODES = {"unknown_recipient", "unknown_account", "no_such_user", "nouser", "user_unknown"}
OK_STATUSES = (200, 201, 202)

# --long, -short, what it takes (None: a flag), help
OPTIONS: tuple[tuple[str, str, str | None, str], ...] = (
    ("--from", "-f", "ADDR", "envelope sender; empty, <> or MAILER-DAEMON = null sender"),
    ("--to", "-t", "ADDR", "envelope recipient (repeat for several)"),
    ("--envid", "", "ID", "DSN ENVID (RFC 3461)"),
    ("--ret", "", "FULL|HDRS", "DSN RET"),
    ("--notify", "", "LIST", "DSN NOTIFY: NEVER or SUCCESS,FAILURE,DELAY (default FAILURE,DELAY)"),
    ("--idempotency-key", "", "KEY", "same key + same message = same id (Postfix: ${queue_id})"),
    ("--token", "", "TOKEN", "mta token (default MAILEXEC_INGEST_TOKEN[_FILE] / ingest_token)"),
    ("--ingest-url", "", "URL", f"default MAILEXEC_INGEST_URL, ingest_url, {DEFAULT_URLS['ingest']}"),
    ("--timeout", "", "SECONDS", "seconds to wait for ingest [default: 120]"),
    ("--defer-auth-errors", "", None, "exit 75 (retry) instead of 77 on 401/403"),
    ("--verbose", "-v", None, "print the message id on stdout"),
    ("--help", "", None, "show this message and exit"),
)
_LONG = {long: takes for long, _, takes, _ in OPTIONS}
_SHORT = {short: long for long, short, _, _ in OPTIONS if short}

HELP = (
    "Usage: mailexec submit --from=SENDER --to=RCPT [--to=RCPT ...] [OPTIONS] < message\n\n"
    "  Submit the message on stdin to ingest (for MTAs); exit status per sysexits.\n\n"
    "Options:\n"
    + "".join(
        f"  {(short + ', ' if short else '    ') + long + (' ' + takes if takes else ''):<32}{text}\n"
        for long, short, takes, text in OPTIONS
    )
    + "\nExit status: 0 accepted, 64 bad command line, 65 message refused, 67 unknown recipient,\n"
    "75 try again later, 77 mta token refused. On failure one line on stderr, starting with an\n"
    "RFC 3463 status code. Config file: MAILEXEC_CLI_CONFIG, else ~/.config/mailexec/cli.toml,\n"
    "else /etc/mailexec/cli.toml (ingest_url, ingest_token).\n"
)


# ---- the CLI config file (shared with mailexec.client) ----


class ConfigError(Exception):
    """The CLI config file exists but can't be parsed."""


def config_paths() -> list[str]:
    explicit = os.environ.get("MAILEXEC_CLI_CONFIG")
    if explicit:
        return [explicit]
    home = os.path.expanduser("~")  # HOME, else the passwd entry; "~" when there is neither
    paths = [] if home.startswith("~") else [os.path.join(home, ".config", "mailexec", "cli.toml")]
    paths.append("/etc/mailexec/cli.toml")
    return paths


def read_config_file() -> dict[str, Any]:
    """The first readable config file, parsed; ``{}`` when there is none."""
    for path in config_paths():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot parse the CLI config file {path}: {exc}") from None
        simple = simple_toml(text)
        if simple is not None:
            return simple
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cannot parse the CLI config file {path}: {exc}") from None
    return {}


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _plain(text: str) -> bool:
    """No control character but tab: what TOML allows in a comment or a one-line string."""
    return not any(c < " " and c != "\t" or c == "\x7f" for c in text)


def simple_toml(text: str) -> dict[str, str] | None:
    """The config file's usual shape, read without tomllib (whose import costs ≈ 10 ms per run).

    Only lines ``key = "text"`` or ``key = 'text'`` (bare key; no escapes), comments and blank
    lines; the result is then exactly tomllib's. Anything else returns None: tomllib decides.
    """
    result: dict[str, str] = {}
    for raw in text.replace("\r\n", "\n").split("\n"):  # a lone CR is not plain: tomllib's
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            if not _plain(line):
                return None
            continue
        key, eq, rest = line.partition("=")
        key, rest = key.strip(" \t"), rest.strip(" \t")
        if not eq or not key or not _BARE_KEY.issuperset(key) or key in result:
            return None
        quote = rest[:1]
        end = rest.find(quote, 1) if quote in ("'", '"') else -1
        if end < 0:
            return None
        value, comment = rest[1:end], rest[end + 1 :].lstrip(" \t")
        if comment and not comment.startswith("#") or not _plain(value + comment):
            return None
        if quote == '"' and "\\" in value:
            return None
        result[key] = value
    return result


def resolve_url(service: str, override: str | None, file_cfg: dict[str, Any]) -> str:
    """Flag, then ``MAILEXEC_<SERVICE>_URL``, then ``<service>_url`` in the file, then the default."""
    env = os.environ.get(f"MAILEXEC_{service.upper()}_URL")
    return (override or env or str(file_cfg.get(f"{service}_url") or "") or DEFAULT_URLS[service]).rstrip("/")


def resolve_token(override: str | None, env_name: str, file_key: str, file_cfg: dict[str, Any]) -> str:
    """Flag, then the environment variable (or its ``_FILE`` form), then the config file's key.

    ConfigError when ``env_name`` and ``env_name_FILE`` are both set or the file can't be
    read (the rule of :mod:`shared.secretfile`, standard library only).
    """
    if override:
        return override
    from shared.secretfile import SecretFileError, secret_from_env

    try:
        value = secret_from_env(env_name)
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None
    return value or str(file_cfg.get(file_key) or "")


# ---- the command line ----


class UsageError(Exception):
    pass


class Options:
    def __init__(self) -> None:
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.envid: str | None = None
        self.ret: str | None = None
        self.notify: str | None = None
        self.idempotency_key: str | None = None
        self.token: str | None = None
        self.ingest_url: str | None = None
        self.timeout = 120.0
        self.defer_auth_errors = False
        self.verbose = False
        self.help = False

    def set(self, option: str, value: str | None) -> None:
        if option == "--to":
            self.rcpts.append(value or "")
        elif option == "--timeout":
            try:
                seconds = float(value or "")
            except ValueError:
                raise UsageError(f"--timeout must be a number of seconds, not {value!r}") from None
            if not 0 < seconds < float("inf"):
                raise UsageError(f"--timeout must be more than 0 seconds, not {value!r}")
            self.timeout = seconds
        elif option == "--from":
            self.sender = value
        else:  # the rest are named like their option; flags are True when present
            setattr(self, option[2:].replace("-", "_"), True if value is None else value)


def parse_args(argv: list[str]) -> Options:
    """click's rules: ``--opt=v``, ``--opt v``, ``-fv``, ``-f v``, ``-vf v``; a value may start with -."""
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if args:
                raise UsageError(f"unexpected argument {args[0]!r}")
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in _LONG:
                raise UsageError(f"no such option {name}")
            if _LONG[name] is None:
                if eq:
                    raise UsageError(f"option {name} does not take a value")
                opts.set(name, None)
            elif eq:
                opts.set(name, value)
            elif args:
                opts.set(name, args.pop(0))
            else:
                raise UsageError(f"option {name} requires an argument")
        elif arg.startswith("-") and len(arg) > 1:
            for i in range(1, len(arg)):
                name = _SHORT.get("-" + arg[i], "")
                if not name:
                    raise UsageError(f"no such option -{arg[i]}")
                if _LONG[name] is None:
                    opts.set(name, None)
                    continue
                if i + 1 < len(arg):
                    opts.set(name, arg[i + 1 :])
                elif args:
                    opts.set(name, args.pop(0))
                else:
                    raise UsageError(f"option -{arg[i]} requires an argument")
                break
        else:
            raise UsageError(f"unexpected argument {arg!r}")
        if opts.help:
            break
    return opts


# ---- the envelope and the body ----


def normalise_sender(sender: str) -> str:
    s = sender.strip()
    if s in ("<>", "") or s.upper() == "MAILER-DAEMON":  # pipe(8)'s default null_sender text
        return ""
    return s[1:-1] if s.startswith("<") and s.endswith(">") else s


def _bad_address(addr: str) -> bool:
    return "@" not in addr or any(c <= " " or c in "\x7f<>" for c in addr)


def validate(sender: str, rcpts: list[str], ret: str | None, notify: str | None) -> str | None:
    for addr in [sender, *rcpts] if sender else rcpts:
        if _bad_address(addr):
            return f"invalid address {addr!r} (expected local@domain)"
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        return f"--ret must be FULL or HDRS, not {ret!r}"
    if notify is not None:
        words = {w.strip().upper() for w in notify.split(",") if w.strip()}
        if not words or (words != {"NEVER"} and not words <= NOTIFY_WORDS):
            return f"--notify must be NEVER or a list of SUCCESS,FAILURE,DELAY, not {notify!r}"
    return None


def sha256_hex(data: bytes) -> str:
    """SHA-256 of a small input without loading OpenSSL's libcrypto through hashlib (≈ 4 ms CPU
    and 3.5 MB per run); CPython's builtin is ~5x slower per byte, so big inputs use hashlib."""
    try:
        from _sha256 import sha256  # CPython 3.11's builtin module, hashlib's own fallback
    except ImportError:  # pragma: no cover  (3.12 renamed it _sha2)
        from hashlib import sha256
    digest: str = sha256(data).hexdigest()
    return digest


class Spool:
    """The message: in memory up to SPOOL_MEMORY_BYTES, then in an unnamed temporary file."""

    def __init__(self, stream: IO[bytes], digest: bool) -> None:
        self.size = 0
        self.file: IO[bytes] | None = None
        memory: list[bytes] = []
        sha: Any = None  # hashlib's, from the moment the message leaves memory
        while chunk := stream.read(CHUNK):
            self.size += len(chunk)
            if self.file is None:
                memory.append(chunk)
                if self.size <= SPOOL_MEMORY_BYTES:
                    continue
                import tempfile

                self.file = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
                if digest:
                    import hashlib

                    sha = hashlib.sha256()
                chunks, memory = memory, []
            else:
                chunks = [chunk]
            for part in chunks:
                self.file.write(part)
                if sha is not None:
                    sha.update(part)
        self.data = b"".join(memory)
        if self.file is not None:
            self.file.seek(0)
        self.sha256 = "" if not digest else sha.hexdigest() if sha is not None else sha256_hex(self.data)

    def chunks(self) -> Iterator[bytes]:
        if self.file is None:
            yield self.data
            return
        while chunk := self.file.read(CHUNK):
            yield chunk

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def idempotency(key: str, sender: str, rcpts: list[str], body_sha: str) -> str:
    material = "\0".join([key, sender, *sorted(rcpts), body_sha])
    return "mx1-" + sha256_hex(material.encode("utf-8", "surrogateescape"))


# ---- HTTP/1.1, just what one POST needs ----


class Unreachable(Exception):
    """No HTTP answer: refused, reset, a TLS failure, a timeout (``timed_out``), not HTTP."""

    def __init__(self, message: str, timed_out: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out  # ConnectTimeout | WriteTimeout | ReadTimeout (httpx's names)


class Response:
    def __init__(self, status: int, reason: str, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.body = body

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.body.decode("utf-8", "replace"))
        except ValueError:
            return None


def _ssl_context() -> Any:
    """Trust what httpx trusted: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:  # a system install without certifi: the system's store
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def post(
    url: str, query: list[tuple[str, str]], headers: dict[str, str], body: Spool, timeout: float
) -> Response:
    """POST ``body`` to ``url`` (http or https) once; raise :class:`Unreachable` without an answer."""
    import socket
    from urllib.parse import quote, urlencode, urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Unreachable(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise Unreachable("the URL must be http://HOST[:PORT] or https://HOST[:PORT]")
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=") + ("?" + urlencode(query) if query else "")
    fields = {
        "Host": parts.netloc.rpartition("@")[2],
        **headers,
        "Content-Length": str(body.size),
        "Accept": "*/*",
        "Connection": "close",
    }
    if any(c <= " " or c == "\x7f" for c in target) or any(
        c < " " and c != "\t" or c == "\x7f" for value in fields.values() for c in value
    ):
        raise Unreachable("a space or control character in the URL or a header value (the token?)")
    head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    try:
        raw = head.encode("latin-1")
    except UnicodeEncodeError:
        raise Unreachable("a character in the URL or a header value that HTTP can't carry") from None

    # an ASCII name as bytes: getaddrinfo would load the idna codec for a str (≈ 1.5 ms)
    addr = (host.encode("ascii") if host.isascii() else host, port or (443 if scheme == "https" else 80))
    try:
        sock = socket.create_connection(addr, timeout=timeout)  # type: ignore[arg-type]  # bytes is fine
    except TimeoutError:
        raise Unreachable("timed out", timed_out="ConnectTimeout") from None
    except OSError as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None
    try:
        if scheme == "https":
            try:
                sock = _ssl_context().wrap_socket(sock, server_hostname=host)
            except TimeoutError:
                raise Unreachable("timed out", timed_out="ConnectTimeout") from None
            except OSError as exc:
                raise Unreachable(str(exc) or type(exc).__name__) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _exchange(sock, raw, body)
    finally:
        sock.close()


def _exchange(sock: socket.socket, head: bytes, body: Spool) -> Response:
    first = True
    try:
        for chunk in body.chunks():
            sock.sendall(head + chunk if first else chunk)  # one segment for a small message
            first = False
        if first:
            sock.sendall(head)
    except TimeoutError:
        raise Unreachable("timed out", timed_out="WriteTimeout") from None
    except OSError as exc:
        # A server may answer (413, 401) and close before reading the whole body: its answer
        # counts, as with httpx; without one, the write error is what happened.
        try:
            return _read_response(sock)
        except Unreachable:
            raise Unreachable(str(exc) or type(exc).__name__) from None
    return _read_response(sock)


def _read_response(sock: socket.socket) -> Response:
    buf = b""
    try:
        while True:  # skip interim 1xx answers
            while (end := buf.find(b"\r\n\r\n")) < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    raise Unreachable("the answer's header is too long")
                chunk = sock.recv(CHUNK)
                if not chunk:
                    raise Unreachable("Server disconnected without sending a response.")
                buf += chunk
            lines = buf[:end].decode("latin-1").split("\r\n")
            buf = buf[end + 4 :]
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
                raise Unreachable(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(code)
            if not 100 <= status < 200:
                break
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = _read_chunked(sock, buf)
        else:
            length = fields.get("content-length", "")
            want = int(length) if length.isdigit() else MAX_RESPONSE_BODY
            want = min(want, MAX_RESPONSE_BODY)
            while len(buf) < want and (chunk := sock.recv(CHUNK)):
                buf += chunk
            body = buf[:want]
    except TimeoutError:
        raise Unreachable("timed out", timed_out="ReadTimeout") from None
    except OSError as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None
    return Response(status, reason.strip(), body)


def _read_chunked(sock: socket.socket, buf: bytes) -> bytes:
    body = b""
    while len(body) < MAX_RESPONSE_BODY:
        while (eol := buf.find(b"\r\n")) < 0:
            if not (chunk := sock.recv(CHUNK)):
                return body
            buf += chunk
        try:
            size = int(buf[:eol].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return body
        buf = buf[eol + 2 :]
        if size == 0:
            return body
        while len(buf) < size + 2:
            if not (chunk := sock.recv(CHUNK)):
                return body + buf[:size]
            buf += chunk
        body += buf[:size]
        buf = buf[size + 2 :]
    return body[:MAX_RESPONSE_BODY]


# ---- what an answer means for the MTA ----


def error_of(resp: Response) -> tuple[str, str | None]:
    """The server's message and error code, as ``mailexec.client`` reads them."""
    body = resp.json()
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or resp.reason), err.get("code")
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"]), None
    return (resp.body.decode("utf-8", "replace") or resp.reason).strip()[:300], None


def classify(status: int | None, code: str | None, defer_auth_errors: bool) -> tuple[int, str]:
    """(exit code, RFC 3463 status) for a failed submission; ``status`` None: no answer."""
    st = status
    if st is None or st == 429 or st >= 500:
        return EX_TEMPFAIL, "4.3.0" if st != 503 else "4.3.2"
    if st in (401, 403):
        return (EX_TEMPFAIL, "4.7.0") if defer_auth_errors else (EX_NOPERM, "5.7.0")
    if (code or "") in NOUSER_CODES:
        return EX_NOUSER, "5.1.1"
    if st in (411, 413):
        return EX_DATAERR, "5.2.3"
    if st in (400, 415, 422):
        return EX_DATAERR, "5.6.0"
    return EX_TEMPFAIL, "4.3.0"  # anything unexpected (a 404 means a wrong URL): retry


def _die(code: int, status: str, text: str) -> int:
    sys.stderr.write(f"{status} mailexec submit: {' '.join(text.split())}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str]) -> int:
    """``mailexec submit ARGV``: returns the exit status (sysexits)."""
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        return _die(EX_USAGE, "5.3.5", f"{exc} (see mailexec submit --help)")
    if opts.help:
        sys.stdout.write(HELP)
        sys.stdout.flush()
        return EX_OK
    if opts.sender is None:
        return _die(EX_USAGE, "5.3.5", "--from is required (use --from= for the null sender)")
    if not opts.rcpts:
        return _die(EX_USAGE, "5.3.5", "at least one --to is required")
    from_addr = normalise_sender(opts.sender)
    to = [r.strip() for r in opts.rcpts]
    problem = validate(from_addr, to, opts.ret, opts.notify)
    if problem:
        return _die(EX_USAGE, "5.3.5", problem)
    try:
        file_cfg = read_config_file()
        token = resolve_token(opts.token, "MAILEXEC_INGEST_TOKEN", "ingest_token", file_cfg)
    except ConfigError as exc:
        return _die(EX_TEMPFAIL, "4.3.5", str(exc))
    url = resolve_url("ingest", opts.ingest_url, file_cfg)
    if not token:
        return _die(
            EX_TEMPFAIL, "4.3.5", "no mta token: set MAILEXEC_INGEST_TOKEN or ingest_token in the CLI config"
        )
    try:
        body = Spool(sys.stdin.buffer, digest=bool(opts.idempotency_key))
    except OSError as exc:
        return _die(EX_TEMPFAIL, "4.3.0", f"cannot read the message: {exc}")
    query: list[tuple[str, str]] = [("from", from_addr), *(("to", r) for r in to)]
    if opts.envid is not None:
        query.append(("envid", opts.envid))
    if opts.ret is not None:
        query.append(("ret", opts.ret.upper()))
    if opts.notify is not None:
        query.append(("notify", ",".join(w.strip().upper() for w in opts.notify.split(",") if w.strip())))
    headers = {
        "User-Agent": "mailexec-cli",
        "Authorization": f"Bearer {token}",
        "Content-Type": "message/rfc822",
    }
    if opts.idempotency_key:
        headers["Idempotency-Key"] = idempotency(opts.idempotency_key, from_addr, to, body.sha256)
    try:
        resp = post(url + "/v1/messages", query, headers, body, opts.timeout)
    except Unreachable as exc:
        if exc.timed_out:
            text = f"ingest at {url} did not answer in time ({exc.timed_out})"
        else:
            text = f"cannot reach ingest at {url}: {exc.message}"
        code, status = classify(None, None, opts.defer_auth_errors)
        return _die(code, status, f"{text}; will retry")
    finally:
        body.close()
    if resp.status not in OK_STATUSES:
        message, err_code = error_of(resp)
        code, status = classify(resp.status, err_code, opts.defer_auth_errors)
        if resp.status in (401, 403):
            text = f"ingest refused the mta token (HTTP {resp.status}): check MAILEXEC_INGEST_TOKEN"
        else:
            text = f"ingest answered HTTP {resp.status}: {message}"
            if code == EX_TEMPFAIL:
                text += "; will retry"
        return _die(code, status, text)
    if opts.verbose:
        answer = resp.json()
        msg_id = answer.get("id", "?") if isinstance(answer, dict) else "?"
        sys.stdout.write(f"queued as {msg_id}\n")
        sys.stdout.flush()
    return EX_OK
