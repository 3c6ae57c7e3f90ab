"""How a body is cut into mail.bodies rows (shared/bodies.rows, what ingest stores): no
copy, no row over CHUNK, offsets contiguous, and the migration's chunk size."""

from __future__ import annotations

import importlib

import pytest

from shared.bodies import CHUNK as BODY_CHUNK
from shared.bodies import rows as body_rows


@pytest.mark.parametrize("sizes", [[1], [BODY_CHUNK], [BODY_CHUNK + 1], [3, 65536, 7999, 1],
                                   [1 << 20]])
def test_rows_are_views_of_the_pieces_at_contiguous_offsets(sizes: list[int]) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    rows = list(body_rows(pieces))
    assert b"".join(bytes(c) for _, c in rows) == b"".join(pieces)
    assert all(0 < len(c) <= BODY_CHUNK for _, c in rows)
    offs = [o for o, _ in rows]
    assert offs == [sum(len(c) for _, c in rows[:i]) for i in range(len(rows))]
    # views into the pieces as they arrived, never copies of them
    assert all(any(c.obj is p for p in pieces) for _, c in rows)


def test_the_migration_cuts_with_the_same_chunk_size() -> None:
    migration = importlib.import_module("migrations.versions.0009_body_chunks")
    assert migration.CHUNK == BODY_CHUNK
