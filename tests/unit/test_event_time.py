"""Event-time rows (replication/event_time.py): the merge is a join whatever the arrival order, the encoding is
canonical and its decoder refuses every malformed or oversized input with ValueError, and leaderless mode's
``EventTimePolicy`` converges whatever order writes and merges arrive in."""

from __future__ import annotations

import math
from functools import reduce

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.dvv import Sibling, Versions
from replication.event_time import (
    MAX_CELLS,
    MAX_LIST_ITEMS,
    MAX_NAME_CHARS,
    MAX_ROW_BYTES,
    EventTimePolicy,
    Row,
    decode_row,
    encode_row,
    merge_encoded,
    merge_rows,
)
from replication.vclock import VectorClock

INT64_MAX = (1 << 63) - 1
# A loaded machine makes the first draws slow; what is checked does not depend on speed.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=INT64_MAX),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
# Few names and few times, so that rows share cells and event times tie often.
names = st.sampled_from(["a", "b", "c", "é", "long_feature_name"])
cells = st.tuples(st.integers(min_value=0, max_value=5), values)
rows = st.dictionaries(names, cells, max_size=5)

NOTHING: Row = {}  # merge_rows never changes its arguments


def packed(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def enc(row: Row) -> bytes:
    return encode_row(row)


# ---------------------------------------------------------------- merge laws


@RELAXED
@given(rows, rows)
def test_merge_is_commutative(a: Row, b: Row) -> None:
    assert enc(merge_rows(a, b)) == enc(merge_rows(b, a))


@RELAXED
@given(rows, rows, rows)
def test_merge_is_associative(a: Row, b: Row, c: Row) -> None:
    assert enc(merge_rows(merge_rows(a, b), c)) == enc(merge_rows(a, merge_rows(b, c)))


@RELAXED
@given(rows, rows)
def test_merge_is_idempotent_and_a_duplicate_changes_nothing(a: Row, b: Row) -> None:
    ab = merge_rows(a, b)
    assert enc(merge_rows(a, a)) == enc(a)
    assert enc(merge_rows(ab, b)) == enc(ab)
    assert enc(merge_rows(ab, a)) == enc(ab)


@RELAXED
@given(st.lists(rows, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_the_order_of_arrival_does_not_matter(writes: list[Row], rnd: object) -> None:
    shuffled = list(writes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    in_order = reduce(merge_rows, writes, NOTHING)
    assert enc(reduce(merge_rows, shuffled, NOTHING)) == enc(in_order)
    # The same writes through the encoded form, each starting from nothing stored.
    stored: bytes | None = None
    for row in shuffled:
        stored = merge_encoded(stored, enc(row))
    assert stored == enc(in_order)


@RELAXED
@given(st.lists(rows, min_size=1, max_size=6))
def test_per_cell_the_newest_event_time_wins_ties_by_the_larger_packed_value(writes: list[Row]) -> None:
    merged = reduce(merge_rows, writes, NOTHING)
    assert set(merged) == {name for row in writes for name in row}
    for name, (ts, value) in merged.items():
        candidates = [row[name] for row in writes if name in row]
        newest = max(t for t, _ in candidates)
        assert ts == newest
        assert packed(value) == max(packed(v) for t, v in candidates if t == newest)


def test_newest_event_time_wins_per_cell_with_real_values() -> None:
    old = {"clicks": (100, 3), "country": (100, "fr")}
    new = {"clicks": (200, 5)}
    late_old = {"country": (50, "de")}
    assert merge_rows(merge_rows(old, new), late_old) == {"clicks": (200, 5), "country": (100, "fr")}
    # A tie of event times: the larger packed value wins on every replica, whatever arrived first.
    assert merge_rows({"x": (7, 1)}, {"x": (7, 2)}) == merge_rows({"x": (7, 2)}, {"x": (7, 1)}) == {"x": (7, 2)}
    # None is an explicit missing value, ordered like any other value.
    assert merge_rows({"x": (9, None)}, {"x": (8, 1.5)}) == {"x": (9, None)}


def test_merge_does_not_alias_its_inputs() -> None:
    b: Row = {"x": (1, 1)}
    merged = merge_rows({}, b)
    merged["y"] = (2, 2)
    assert b == {"x": (1, 1)}


# ---------------------------------------------------------------- encoding


@RELAXED
@given(rows)
def test_encoding_round_trips_and_is_canonical(row: Row) -> None:
    data = enc(row)
    decoded = decode_row(data)
    assert enc(decoded) == data
    assert list(decoded) == sorted(row)
    for name, (ts, value) in row.items():
        assert decoded[name][0] == ts
        assert packed(decoded[name][1]) == packed(value)
    # Insertion order of the dict does not matter.
    assert enc(dict(reversed(list(row.items())))) == data


def test_the_encoding_is_a_sorted_list_of_name_time_value() -> None:
    data = encode_row({"b": (2, [1, 2]), "a": (1, b"\x00")})
    assert msgpack.unpackb(data, raw=False) == [["a", 1, b"\x00"], ["b", 2, [1, 2]]]
    assert decode_row(data) == {"a": (1, b"\x00"), "b": (2, [1, 2])}
    assert decode_row(encode_row({})) == {}


def test_a_float_nan_round_trips_by_its_bytes() -> None:
    data = encode_row({"x": (1, math.nan)})
    assert math.isnan(decode_row(data)["x"][1])
    assert encode_row(decode_row(data)) == data


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"": (1, 1)}, "name"),
        ({"x" * (MAX_NAME_CHARS + 1): (1, 1)}, "name"),
        ({"x": (-1, 1)}, "event time"),
        ({"x": (INT64_MAX + 1, 1)}, "event time"),
        ({"x": (True, 1)}, "event time"),
        ({"x": (1.0, 1)}, "event time"),
        ({"x": (1, 1 << 63)}, "not a feature value"),
        ({"x": (1, {"a": 1})}, "not a feature value"),
        ({"x": (1, (1, 2))}, "not a feature value"),
        ({"x": (1, [[1]])}, "not a feature value"),
        ({"x": (1, [0] * (MAX_LIST_ITEMS + 1))}, "at most"),
        ({f"c{i}": (1, 1) for i in range(MAX_CELLS + 1)}, "at most"),
        ({"x": (1, b"\x00" * MAX_ROW_BYTES)}, "bytes encoded"),
    ],
)
def test_encoding_refuses_what_no_decoder_would_accept(row: Row, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_row(row)


def raw(cells: object) -> bytes:
    return bytes(msgpack.packb(cells, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        raw({"a": 1}),
        raw("row"),
        raw([["a", 1]]),
        raw([["a", 1, 2, 3]]),
        raw([[1, 1, 2]]),
        raw([["b", 1, 1], ["a", 1, 1]]),  # not sorted
        raw([["a", 1, 1], ["a", 2, 2]]),  # a name twice
        raw([["a", -1, 1]]),
        raw([["a", 1.5, 1]]),
        raw([["a", 1, {"k": 1}]]),
        raw([["a", 1, [[1]]]]),
        raw([["a", 1, 1]]) + b"\x00",  # trailing bytes
        raw([["a", 1, msgpack.ExtType(5, b"x")]]),
        raw([["a", 1, 1]] * 2)[:-1],  # cut short
        raw([[f"c{i}", 1, 1] for i in range(MAX_CELLS + 1)]),
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b"\x91" * 100_000,  # nested far deeper than any row
        b"\x00" * (MAX_ROW_BYTES + 1),
    ],
)
def test_decoding_refuses_bad_bytes_with_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_row(data)
    with pytest.raises(ValueError):
        merge_encoded(None, data)
    with pytest.raises(ValueError):
        merge_encoded(encode_row({"a": (1, 1)}), data)


@settings(RELAXED, max_examples=300)
@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_returns_a_row_or_raises_value_error(data: bytes) -> None:
    try:
        row = decode_row(data)
    except ValueError:
        return
    assert decode_row(encode_row(row)) == row or encode_row(decode_row(encode_row(row))) == encode_row(row)


@settings(RELAXED, max_examples=200)
@given(rows, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_flipped_byte_of_a_row_decodes_or_raises_value_error(row: Row, at: int, byte: int) -> None:
    data = bytearray(enc(row))
    data[at % len(data)] = byte
    try:
        decoded = decode_row(bytes(data))
    except ValueError:
        return
    assert enc(decoded) == enc(decode_row(enc(decoded)))


# ---------------------------------------------------------------- EventTimePolicy

POLICY = EventTimePolicy()


def row_of(state: Versions) -> Row:
    (sibling,) = state.siblings
    assert sibling.value is not None
    return decode_row(sibling.value, merged=True)


def written(state: Versions | None, node: str, counter: int, row: Row, ts_ms: int = 0) -> Versions:
    return POLICY.write(state, VectorClock(), (node, counter), enc(row), ts_ms)


def test_the_policy_is_named_event_time() -> None:
    assert POLICY.name == "event-time"


def test_a_write_merges_its_row_into_the_one_held() -> None:
    first = written(None, "n1", 1, {"x": (10, 1), "y": (10, "a")})
    second = written(first, "n1", 2, {"x": (5, 0), "y": (20, "b")})
    assert row_of(second) == {"x": (10, 1), "y": (20, "b")}
    assert second.context == VectorClock.of({"n1": 2})
    assert [s.dot for s in second.siblings] == [("n1", 2)]


def test_a_delete_and_a_reused_dot_are_refused() -> None:
    state = written(None, "n1", 1, {"x": (1, 1)})
    with pytest.raises(ValueError, match="cannot be deleted"):
        POLICY.write(state, VectorClock(), ("n1", 2), None, 0)
    with pytest.raises(ValueError, match="dot"):
        written(state, "n1", 1, {"x": (2, 2)})


def test_a_malformed_row_is_refused_by_a_write() -> None:
    with pytest.raises(ValueError):
        POLICY.write(None, VectorClock(), ("n1", 1), b"\x91\x01", 0)


def test_a_state_that_is_not_one_row_is_refused() -> None:
    two = Versions(
        (Sibling(("n1", 1), enc({"x": (1, 1)}), 0), Sibling(("n2", 1), enc({"x": (2, 1)}), 0)),
        VectorClock.of({"n1": 1, "n2": 1}),
    )
    with pytest.raises(ValueError, match="one row"):
        POLICY.merge(two, written(None, "n3", 1, {"x": (1, 1)}))


nodes = st.sampled_from(["n1", "n2", "n3"])
writes = st.lists(st.tuples(nodes, rows), min_size=1, max_size=8)


def replicas_after(ops: list[tuple[str, Row]]) -> dict[str, Versions]:
    """Each node's state after coordinating its own writes of ``ops`` (dots numbered per node)."""
    states: dict[str, Versions] = {}
    for node, row in ops:
        held = states.get(node)
        counter = 1 if held is None else held.context.get(node) + 1
        states[node] = written(held, node, counter, row, counter)
    return states


@RELAXED
@given(writes, st.randoms(use_true_random=False))
def test_replicas_merged_in_any_order_hold_the_join_of_every_write(ops: list[tuple[str, Row]], rnd: object) -> None:
    states = list(replicas_after(ops).values())
    expected = reduce(merge_rows, [row for _, row in ops], NOTHING)
    in_order = reduce(POLICY.merge, states)
    shuffled = list(states)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    other = reduce(POLICY.merge, shuffled)
    assert other == in_order
    assert enc(row_of(in_order)) == enc(expected)
    assert in_order.context == reduce(VectorClock.merge, [s.context for s in states])


@RELAXED
@given(writes, writes)
def test_policy_merge_is_commutative_associative_and_idempotent(
    ops_a: list[tuple[str, Row]], ops_b: list[tuple[str, Row]]
) -> None:
    a = reduce(POLICY.merge, replicas_after(ops_a).values())
    b = reduce(POLICY.merge, replicas_after([(n.replace("n", "m"), r) for n, r in ops_b]).values())
    c = written(None, "z", 1, {"a": (3, 3)})
    assert POLICY.merge(a, b) == POLICY.merge(b, a)
    assert POLICY.merge(POLICY.merge(a, b), c) == POLICY.merge(a, POLICY.merge(b, c))
    assert POLICY.merge(a, a) == a
    assert POLICY.merge(POLICY.merge(a, b), b) == POLICY.merge(a, b)


def test_merging_with_an_empty_state_keeps_the_row_and_joins_contexts() -> None:
    state = written(None, "n1", 1, {"x": (1, 1)})
    empty = Versions((), VectorClock.of({"n2": 4}))
    merged = POLICY.merge(empty, state)
    assert row_of(merged) == {"x": (1, 1)}
    assert merged.context == VectorClock.of({"n1": 1, "n2": 4})
    assert POLICY.merge(empty, empty) == empty


def test_the_policy_merges_any_two_states_replicas_may_hold() -> None:
    half = {f"a{i}": (1, i) for i in range(MAX_CELLS // 2 + 1)}
    other = {f"b{i}": (1, i) for i in range(MAX_CELLS // 2 + 1)}
    merged = POLICY.merge(written(None, "n1", 1, half), written(None, "n2", 1, other))
    assert len(row_of(merged)) == len(half) + len(other)
