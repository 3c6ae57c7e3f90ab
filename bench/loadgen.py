"""Load generator for ingest: a lean HTTP/1.1 keep-alive client on asyncio streams.

    python -m bench.loadgen --url http://127.0.0.1:8025 --token T -n 5000 -c 64 \
        --size 1024 --rcpts 1 --prefix r1 [--rate 400] --out timings.bin

Closed loop (default): ``-c`` requests in flight. Open loop (``--rate R``): message i is
due at start + i/R and its latency clock starts then, even if all ``-c`` connections are
busy (no coordinated omission). Each message carries ``X-Bench-Id: <prefix>-<i>`` so
the program's counter line can be joined with the submit time. Prints one JSON line:
accepted, errors, elapsed, first/last timestamps (CLOCK_REALTIME ns), client CPU;
``--out`` gets "<id> <submit_ns> <ack_ns>" per accepted message.

Why not httpx: on this 2-core machine the client shares the CPUs with the system
under test; httpx costs several times more CPU per request than these ~60 lines,
which would lower every figure measured here by the client's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from pathlib import Path
from urllib.parse import quote, urlsplit


def build_head(host: str, token: str, rcpts: list[str], length: int) -> bytes:
    q = "from=" + quote("sender@bench.example") + "".join("&to=" + quote(r) for r in rcpts)
    return (
        f"POST /v1/messages?{q} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: message/rfc822\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def message_parts(size: int, bench_id: str, to: str) -> tuple[bytes, bytes]:
    head = (
        f"From: sender@bench.example\r\nTo: {to}\r\nSubject: bench\r\n"
        f"Message-ID: <{bench_id}@bench.example>\r\nX-Bench-Id: {bench_id}\r\n\r\n"
    ).encode()
    return head, b""


_BODY_CACHE: dict[int, bytes] = {}


BODY_KIND = os.environ.get("BENCH_BODY", "base64")


def body_of(size: int, head_len: int) -> bytes:
    """The body: base64 lines of (seeded) random bytes, like an attachment — it does
    not compress, as most real mail bodies above a few KiB don't. BENCH_BODY=x gives
    lines of 'x' (compresses ~100:1; flatters PostgreSQL's TOAST)."""
    n = max(0, size - head_len - 2)
    if n not in _BODY_CACHE:
        if BODY_KIND == "x":
            line = b"x" * 76 + b"\r\n"
            text = line * (n // len(line) + 1)
        else:
            import base64
            import random

            raw = random.Random(n).randbytes(n * 3 // 4 + 64)
            text = base64.encodebytes(raw).replace(b"\n", b"\r\n")
        _BODY_CACHE[n] = text[:n] + b"\r\n"
    return _BODY_CACHE[n]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body
    return status, await reader.readexactly(length) if length else b""


async def main_async(a: argparse.Namespace) -> dict:
    u = urlsplit(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    hostport = f"{host}:{port}"
    rcpts = [f"{a.rcpt_prefix}{k}@bench.example" for k in range(a.rcpts)]
    to_hdr = ", ".join(rcpts)
    timings: list[tuple[str, int, int]] = []
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    t_start_ns = time.time_ns()
    t_start = time.monotonic()
    due: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                i = await queue.get()
                if i < 0:
                    return
                bid = f"{a.prefix}-{i:07d}"
                mhead, _ = message_parts(a.size, bid, to_hdr)
                body = body_of(a.size, len(mhead))
                t0 = due.get(i) or time.time_ns()
                for _attempt in range(3):
                    try:
                        head = build_head(hostport, a.token, rcpts, len(mhead) + len(body))
                        writer.writelines((head, mhead, body))
                        status, resp = await read_response(reader)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, port)
                else:
                    status, resp = 599, b"connection failed"
                t1 = time.time_ns()
                if status == 202:
                    timings.append((bid, t0, t1))
                else:
                    key = f"{status} {resp[:120].decode(errors='replace')}"
                    errors[key] = errors.get(key, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(a.c)]
    if a.rate > 0:
        for i in range(a.n):
            target = t_start + i / a.rate
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due[i] = t_start_ns + int(i / a.rate * 1e9)
            queue.put_nowait(i)
    else:
        for i in range(a.n):
            queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(-1)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - t_start
    if a.out:  # after the run: a blocking write no longer delays anything
        text = "".join(f"{b} {t0} {t1}\n" for b, t0, t1 in timings)
        await asyncio.to_thread(Path(a.out).write_text, text)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted((t1 - t0) / 1e6 for _, t0, t1 in timings)
    return {
        "accepted": len(timings),
        "errors": errors,
        "elapsed_s": elapsed,
        "accepted_per_s": len(timings) / elapsed if elapsed else None,
        "first_submit_ns": t_start_ns,
        "last_ack_ns": max((t1 for _, _, t1 in timings), default=None),
        "client_cpu_s": ru.ru_utime + ru.ru_stime,
        "ack_ms_p50": lat[len(lat) // 2] if lat else None,
        "ack_ms_p99": lat[int(len(lat) * 0.99)] if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default=os.environ.get("MAILEXEC_INGEST_TOKEN", ""))
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("-c", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rcpts", type=int, default=1)
    ap.add_argument("--rcpt-prefix", default="bench")
    ap.add_argument("--prefix", default="m")
    ap.add_argument("--rate", type=float, default=0.0)
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
