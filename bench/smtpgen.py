"""Paced SMTP client for the MTA paths' latency (smtp-source can't do it: its messages carry
no id to join with the program's line, and it has no open loop).

    python -m bench.smtpgen --port 2525 -n 2000 -c 20 --rate 300 --prefix lat --out t.txt

Open loop: message i is due at start + i/rate and its clock starts then, even if every
session is busy (no coordinated omission; as bench/loadgen.py). ``-c`` SMTP sessions stay
open (EHLO once, then MAIL/RCPT/DATA pipelined per message). Every message is
``X-Bench-Id: <prefix>-<i>`` plus a body of ``--size`` bytes of smtp-source-like lines, so
the program's counter line ("<id> <exit ns>") joins with "<id> <due ns> <250 ns>" in
``--out``. Prints one JSON line (accepted, errors, client CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path


def message(bench_id: str, rcpt: str, size: int) -> bytes:
    head = (f"From: <sender@bench.example>\r\nTo: <{rcpt}>\r\nSubject: bench\r\n"
            f"Message-Id: <{bench_id}@bench.example>\r\nX-Bench-Id: {bench_id}\r\n\r\n").encode()
    line = b"X" * 78 + b"\r\n"  # never starts with a dot: no stuffing needed
    body = (line * (size // len(line) + 1))[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n"
    return head + body + b".\r\n"


async def reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def main_async(a: argparse.Namespace) -> dict:
    queue: asyncio.Queue[int] = asyncio.Queue()
    timings: list[tuple[str, int, int]] = []
    errors: dict[str, int] = {}
    t_start_ns, t_start = time.time_ns(), time.monotonic()

    async def session() -> None:
        reader, writer = await asyncio.open_connection(a.host, a.port)
        await reply(reader)
        writer.write(b"EHLO smtpgen.bench.example\r\n")
        await reply(reader)
        try:
            while (i := await queue.get()) >= 0:
                bid = f"{a.prefix}-{i:07d}"
                due = t_start_ns + int(i / a.rate * 1e9) if a.rate else time.time_ns()
                writer.write(f"MAIL FROM:<sender@bench.example>\r\nRCPT TO:<{a.rcpt}>\r\n"
                             "DATA\r\n".encode())
                codes = [await reply(reader) for _ in range(3)]
                if codes != [250, 250, 354]:
                    errors[str(codes)] = errors.get(str(codes), 0) + 1
                    if codes[2] == 354:
                        writer.write(b".\r\n")
                        await reply(reader)
                    writer.write(b"RSET\r\n")
                    await reply(reader)
                    continue
                writer.write(message(bid, a.rcpt, a.size))
                code = await reply(reader)
                if code == 250:
                    timings.append((bid, due, time.time_ns()))
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1
            writer.write(b"QUIT\r\n")
            await reply(reader)
        finally:
            writer.close()

    sessions = [asyncio.create_task(session()) for _ in range(a.c)]
    for i in range(a.n):
        if a.rate:
            delay = t_start + i / a.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        queue.put_nowait(i)
    for _ in sessions:
        queue.put_nowait(-1)
    results = await asyncio.gather(*sessions, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            errors[repr(r)[:120]] = errors.get(repr(r)[:120], 0) + 1
    elapsed = time.monotonic() - t_start
    if a.out:  # after the run: a blocking write no longer delays anything
        text = "".join(f"{b} {t0} {t1}\n" for b, t0, t1 in timings)
        await asyncio.to_thread(Path(a.out).write_text, text)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"accepted": len(timings), "errors": errors, "elapsed_s": elapsed,
            "accepted_per_s": len(timings) / elapsed if elapsed else None,
            "client_cpu_s": ru.ru_utime + ru.ru_stime}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("-c", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rcpt", default="bench@bench.example")
    ap.add_argument("--prefix", default="m")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main_async(a))), flush=True)


if __name__ == "__main__":
    main()
