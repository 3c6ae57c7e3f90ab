"""``python -m bench.lmtp_memory``: ingest's peak memory while LMTP clients deliver large
messages — what ``MAILEXEC_INGEST_BODY_MEMORY_BYTES`` bounds on the path Postfix's
lmtp(8) takes (issue 17). A memory probe, not a speed figure: the speed of this path is
measured with Postfix itself as the client (``make bench-mta``).

The benchmark's pipeline (``bench/mailexec_bench.py``) with ingest's LMTP port open;
``LMTP_CONNECTIONS`` (16) connections each deliver ``LMTP_MESSAGES`` (12) messages of
about ``LMTP_KIB`` (1016) KiB, declaring ``SIZE=`` as Postfix does, one after another;
prints ingest's VmHWM before and after. Run it as root, like ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.common import Config, Workdir, ensure_user, free_port, say, vm_hwm_kib
from bench.mailexec_bench import Pipeline

CONNECTIONS = int(os.environ.get("LMTP_CONNECTIONS", "16"))
MESSAGES = int(os.environ.get("LMTP_MESSAGES", "12"))
KIB = int(os.environ.get("LMTP_KIB", "1016"))


async def deliver(port: int, n: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"LHLO probe\r\n")
    await reply()
    for _ in range(n):
        writer.write(b"MAIL FROM:<a@bench.example> SIZE=%d\r\n"
                     b"RCPT TO:<bench0@bench.example>\r\nDATA\r\n" % len(body))
        for _ in range(3):
            line = await reply()
            if line[:1] not in b"23":
                raise RuntimeError(f"refused: {line!r}")
        writer.write(body + b".\r\n")
        await writer.drain()
        line = await reply()
        if not line.startswith(b"250"):
            raise RuntimeError(f"not delivered: {line!r}")
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


def main() -> int:
    uid, gid = ensure_user()
    wd = Workdir("mxlmtpmem.")
    p = Pipeline(Config.from_env(), uid, gid, wd)
    port = free_port()
    p.env.update({"MAILEXEC_LMTP_PORT": str(port),
                  "MAILEXEC_LMTP_TRUSTED_NETWORKS": "127.0.0.0/8"})
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (KIB * 1024 // len(line))
    try:
        p.create()
        p.start()
        p.load_data()
        pid = p.services["ingest"].pid
        idle = (vm_hwm_kib(pid) or 0) // 1024
        t0 = time.monotonic()

        async def run() -> None:
            await asyncio.wait_for(asyncio.gather(
                *(deliver(port, MESSAGES, body) for _ in range(CONNECTIONS))), 600)

        asyncio.run(run())
        took = time.monotonic() - t0
        peak = (vm_hwm_kib(pid) or 0) // 1024
        say(f"{CONNECTIONS * MESSAGES} messages of {len(body)} bytes over {CONNECTIONS} LMTP "
            f"connections in {took:.1f} s; ingest VmHWM {idle} MiB idle, {peak} MiB "
            f"after (MAILEXEC_INGEST_BODY_MEMORY_BYTES="
            f"{os.environ.get('MAILEXEC_INGEST_BODY_MEMORY_BYTES', 'default')})")
    finally:
        p.stop()
        p.drop()
        wd.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
