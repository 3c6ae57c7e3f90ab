"""``python -m bench.bodystore``: what storing a large body costs PostgreSQL, by layout —
the measurement behind migrations 0009 and 0011 (issue 17).

One backend, a throwaway database (``mailexec_bodystore``), ``BODYSTORE_N`` (150) bodies
of ``BODYSTORE_KIB`` (1024) KiB of random bytes (attachments don't compress). For each
layout it times, as CPU of the PostgreSQL backend (``/proc/PID/stat``, user + system, so
WAL and data-file writes count), the four things a delivery does to a body: store it,
read it back (the executor), delete it (retention) and vacuum what was deleted (or, for
the ring, truncate). Two rounds, interleaved, so neither layout gets the warm cache alone:

- ``toast``: one ``bytea`` column, ``STORAGE EXTERNAL`` (0007): ~2 KiB TOAST chunks.
- ``rows``: ``mail.bodies``-style rows of ``BODY_CHUNK`` bytes, ``STORAGE PLAIN`` (0009),
  written by ``COPY`` as ingest does, into pages that deleted bodies left (the table is
  filled and emptied once before it is timed, and its vacuum keeps the pages,
  ``vacuum_truncate = false``, as ``mail.bodies``'s does since 0010): a running system;
  ``rows_growing``: the same into a table whose vacuum gives its empty pages back, so
  every body grows it again (``mail.bodies`` before 0010; a new install's first
  minutes), which PostgreSQL 15 pays by writing each new page twice (zeros, then the
  data); ``ring``: the same into a partition of the body ring (0011), emptied by
  ``TRUNCATE`` instead of a delete and a vacuum (its "vacuum" column is the truncate), so
  it grows from empty as every ring partition does; ``rows_unnest``: the rows through
  ``unnest`` arrays in one ``INSERT`` (what ingest tried first: dearer, the more so the
  larger the batch, as PostgreSQL assembles the whole array in memory).
- ``largeobject``: ``lo_from_bytea`` / ``lo_get`` / ``lo_unlink`` (2 KiB pages).

Run it on an otherwise idle machine, as any user that may create a database.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable

import asyncpg

from bench.mailexec_bench import PG_ADMIN
from shared.bodies import CHUNK as BODY_CHUNK
from shared.bodies import rows as body_rows

DB = "mailexec_bodystore"
N = int(os.environ.get("BODYSTORE_N", "150"))
SIZE = int(os.environ.get("BODYSTORE_KIB", "1024")) * 1024
PHASES = ("store", "read", "delete", "vacuum")
LAYOUTS = ("toast", "rows", "rows_growing", "ring", "rows_unnest", "largeobject")

SCHEMA = f"""
CREATE TABLE toast (id uuid PRIMARY KEY, body bytea);
ALTER TABLE toast ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE rows (message_id uuid, off bigint, chunk bytea, PRIMARY KEY (message_id, off))
    WITH (vacuum_truncate = false);
ALTER TABLE rows ALTER COLUMN chunk SET STORAGE PLAIN;
CREATE TABLE rows_growing (message_id uuid, off bigint, chunk bytea, PRIMARY KEY (message_id, off));
ALTER TABLE rows_growing ALTER COLUMN chunk SET STORAGE PLAIN;
CREATE TABLE ring (message_id uuid, off bigint, chunk bytea, PRIMARY KEY (message_id, off))
    WITH (autovacuum_enabled = false);
ALTER TABLE ring ALTER COLUMN chunk SET STORAGE PLAIN;
CREATE TABLE largeobject (id uuid PRIMARY KEY, lo oid);
-- {BODY_CHUNK}-byte rows fit a page: no TOAST table for the rows
"""


def _table(layout: str) -> str:
    return {"largeobject": "pg_largeobject", "rows_unnest": "rows"}.get(layout, layout)


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Layout:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.c = conn

    async def store(self, name: str, mid: uuid.UUID, body: bytes) -> None:
        if name == "toast":
            await self.c.execute("INSERT INTO toast SELECT * FROM unnest($1::uuid[], $2::bytea[])",
                                 [mid], [body])
        elif name in ("rows", "rows_growing", "ring"):
            await self.c.copy_records_to_table(
                name, records=((mid, o, c) for o, c in body_rows([body])))
        elif name == "rows_unnest":
            rows = list(body_rows([body]))
            await self.c.execute(
                "INSERT INTO rows SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[])",
                [mid] * len(rows), [o for o, _ in rows], [c for _, c in rows])
        else:
            await self.c.execute("INSERT INTO largeobject VALUES ($1, lo_from_bytea(0, $2))",
                                 mid, body)

    async def read(self, name: str, mid: uuid.UUID) -> int:
        if name == "toast":
            got = await self.c.fetchval("SELECT body FROM toast WHERE id = $1", mid)
        elif name.startswith("rows") or name == "ring":
            got = b"".join(r[0] for r in await self.c.fetch(
                f"SELECT chunk FROM {_table(name)} WHERE message_id = $1 ORDER BY off", mid))
        else:
            got = await self.c.fetchval("SELECT lo_get(lo) FROM largeobject WHERE id = $1", mid)
        return len(got)

    async def delete(self, name: str, mid: uuid.UUID) -> None:
        if name == "toast":
            await self.c.execute("UPDATE toast SET body = NULL WHERE id = $1", mid)
        elif name == "ring":
            return  # nothing: its turn truncates the partition
        elif name.startswith("rows"):
            await self.c.execute(f"DELETE FROM {_table(name)} WHERE message_id = $1", mid)
        else:
            await self.c.execute("SELECT lo_unlink(lo) FROM largeobject WHERE id = $1", mid)


async def main() -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f"DROP DATABASE IF EXISTS {DB}")
    await admin.execute(f"CREATE DATABASE {DB}")
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{DB}")
    try:
        await conn.execute(SCHEMA)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        lay = Layout(conn)
        bodies = [os.urandom(SIZE) for _ in range(8)]
        spent = {(name, ph): 0.0 for name in LAYOUTS for ph in PHASES}
        # "rows" as in a running system: pages that deleted bodies left, kept by vacuum
        filled = [uuid.uuid4() for _ in range(N)]
        for i, mid in enumerate(filled):
            await lay.store("rows", mid, bodies[i % 8])
        await conn.execute("DELETE FROM rows")
        await conn.execute("VACUUM rows")

        async def timed(key: tuple[str, str], step: Awaitable[object]) -> None:
            t = _cpu_s(pid)
            await step
            spent[key] += _cpu_s(pid) - t

        for _ in range(2):
            for name in LAYOUTS:
                ids = [uuid.uuid4() for _ in range(N)]
                for i, mid in enumerate(ids):
                    await timed((name, "store"), lay.store(name, mid, bodies[i % 8]))
                for mid in ids:
                    await timed((name, "read"), lay.read(name, mid))
                for mid in ids:
                    await timed((name, "delete"), lay.delete(name, mid))
                await timed((name, "vacuum"), conn.execute(
                    "TRUNCATE ring" if name == "ring" else f"VACUUM {_table(name)}"))
                await conn.execute("CHECKPOINT")
        print(f"PostgreSQL backend CPU per {SIZE // 1024} KiB body, ms ({2 * N} bodies per layout)")
        print(f"{'layout':12s}" + "".join(f"{ph:>9s}" for ph in PHASES) + f"{'total':>9s}")
        for name in LAYOUTS:
            ms = [1000 * spent[(name, ph)] / (2 * N) for ph in PHASES]
            print(f"{name:12s}" + "".join(f"{v:9.2f}" for v in ms) + f"{sum(ms):9.2f}")
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
