"""A plain LMTP client for the tests: raw lines out, whole (multi-line) replies in.

smtplib.LMTP reads one reply after DATA, not one per recipient (RFC 2033 §4.2), so the
tests that count replies speak the protocol themselves.
"""

from __future__ import annotations

import socket
import ssl


class LMTPClient:
    def __init__(self, where: tuple[str, int] | str, timeout: float = 10.0) -> None:
        if isinstance(where, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(where)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def reply(self) -> tuple[int, str]:
        """One reply: (code, text lines joined by newlines); (0, '') when closed."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return 0, "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), "\n".join(lines)

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def lhlo(self) -> list[str]:
        code, text = self.cmd("LHLO client.test")
        assert code == 250, text
        return text.splitlines()[1:]

    def starttls(self) -> None:
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        self.starttls_after_reply()

    def starttls_after_reply(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def deliver(self, sender: str, recipients: list[str], body: bytes,
                mail_params: str = "", rcpt_params: str = "") -> tuple[list[tuple[int, str]],
                                                                   list[tuple[int, str]]]:
        """One transaction, pipelined: (RCPT replies, replies after the final dot)."""
        code, text = self.cmd(f"MAIL FROM:<{sender}>{' ' + mail_params if mail_params else ''}")
        assert code == 250, text
        rcpt = [self.cmd(f"RCPT TO:<{r}>{' ' + rcpt_params if rcpt_params else ''}") for r in recipients]
        accepted = sum(1 for c, _ in rcpt if c == 250)
        code, text = self.cmd("DATA")
        if not accepted:
            assert code == 503, text
            return rcpt, []
        assert code == 354, text
        self.send(stuff(body) + b".\r\n")
        return rcpt, [self.reply() for _ in range(accepted)]

    def close(self) -> None:
        for thing in (self.file, self.sock):
            try:
                thing.close()
            except OSError:
                pass


def stuff(body: bytes) -> bytes:
    """LF or CRLF text → CRLF lines, dot-stuffed, ending in CRLF."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
