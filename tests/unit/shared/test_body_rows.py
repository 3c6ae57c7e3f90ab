"""How a body is cut into mail.bodies rows (shared/bodies.rows, what ingest stores): no
copy, no row over CHUNK, offsets contiguous, and the migrations' chunk size; which ring
slot each turn writes to, and the migration's ring of the same size."""

from __future__ import annotations

import importlib

import pytest

from shared import bodies
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


def test_the_migration_makes_as_many_ring_partitions_as_the_code_writes_to() -> None:
    migration = importlib.import_module("migrations.versions.0011_body_ring")
    assert migration.RING == bodies.RING


def test_each_turn_writes_to_the_next_ring_slot_and_comes_round_after_ring_turns() -> None:
    slot_s = 10.0
    slots = [bodies.slot_at(t, slot_s) for t in (0.0, 9.99, 10.0, 25.0, 30.0, 40.0)]
    assert slots == [1, 1, 2, 3, 4, 1]
    assert {bodies.slot_of(turn) for turn in range(100)} == set(range(1, bodies.RING + 1))
    # the slot a turn empties (the next turn's) is never the one being written to
    assert all(bodies.slot_of(t + 1) != bodies.slot_of(t) for t in range(100))


def test_a_slot_names_its_partition_and_nothing_else_is_a_slot() -> None:
    assert bodies.partition(bodies.KEPT) == "bodies_kept"
    assert [bodies.partition(s) for s in range(1, bodies.RING + 1)] == [
        "bodies_ring1", "bodies_ring2", "bodies_ring3", "bodies_ring4"]
    for bad in (-1, bodies.RING + 1):
        with pytest.raises(ValueError):
            bodies.partition(bad)
