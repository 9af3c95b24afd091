"""Event-time rows: a key whose value is a row of cells, each ``(event_ts_ms, value)``, merged so that the newest
event time wins per cell, whatever order writes arrive in.

This is what the feature store keeps (``kvstore/features``): an online row per entity and one per event of the
event log. A write *merges* its row into the stored one; merge is a join (commutative, associative, idempotent),
so every replica that has seen the same writes holds the same row in every mode: leader and single mode apply it
in log order (``kvstore.commands.MergeCommand``), leaderless mode uses it as the conflict policy of the feature
store's keys (``EventTimePolicy``), where read repair, hinted handoff and anti-entropy deliver states in any order.

Per cell the larger ``(event_ts_ms, packed value)`` wins: two events with the same time and different values
are ordered by their bytes, so the choice does not depend on arrival. A duplicated event changes nothing.

Encoding (canonical msgpack, so equal rows are equal bytes): ``[[name, event_ts_ms, value], ...]`` sorted by
name. A value is ``None``, a bool, an int64, a float, a string, bytes, or a list of those scalars. Decoding checks
everything (a peer's or a client's bytes are untrusted) and raises ValueError with a message for the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from replication.dvv import Dot, Sibling, Versions
from replication.vclock import VectorClock

# A row a client writes. Joins of rows written at several replicas concurrently may hold more (their cells'
# union), up to MERGED_FACTOR times as much: that bound is what a stored or merged row is held to.
MAX_ROW_BYTES = 1024 * 1024
MAX_CELLS = 1024
MERGED_FACTOR = 8
MAX_MERGED_ROW_BYTES = MERGED_FACTOR * MAX_ROW_BYTES
MAX_MERGED_CELLS = MERGED_FACTOR * MAX_CELLS
MAX_NAME_CHARS = 256
MAX_LIST_ITEMS = 65_536
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

Scalar = None | bool | int | float | str | bytes
Cell = tuple[int, Any]  # (event_ts_ms, value)
Row = dict[str, Cell]


def encode_row(row: Row) -> bytes:
    """The canonical bytes of ``row`` (checked: ValueError for a cell no decoder would accept)."""
    if len(row) > MAX_CELLS:
        raise ValueError(f"a row holds at most {MAX_CELLS} cells, this one {len(row)}")
    cells = []
    for name in sorted(row):
        ts, value = row[name]
        _check_name(name)
        _check_ts(ts)
        _check_value(value, name)
        cells.append([name, ts, value])
    data = msgpack.packb(cells, use_bin_type=True)
    if len(data) > MAX_ROW_BYTES:
        raise ValueError(f"a row is at most {MAX_ROW_BYTES} bytes encoded, this one {len(data)}")
    return data


def decode_row(data: bytes, *, merged: bool = False) -> Row:
    """The row ``data`` encodes; ValueError if it is not a canonical, bounded row (a written row's bounds, or with
    ``merged`` a stored or merged row's). Every merge decodes two rows and serving one per entity, so the checks
    are written out inline (a third of the cost of calls)."""
    max_bytes, max_cells = (MAX_MERGED_ROW_BYTES, MAX_MERGED_CELLS) if merged else (MAX_ROW_BYTES, MAX_CELLS)
    if len(data) > max_bytes:
        raise ValueError(f"a row is at most {max_bytes} bytes encoded, this one {len(data)}")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, max_array_len=MAX_LIST_ITEMS)
    except Exception as exc:
        raise ValueError(f"not an event-time row: {exc}") from None
    if type(raw) is not list or len(raw) > max_cells:
        raise ValueError(f"an event-time row is a list of at most {max_cells} [name, event_ts_ms, value] cells")
    row: Row = {}
    previous = ""
    for cell in raw:
        if type(cell) is not list or len(cell) != 3:
            raise ValueError("an event-time row's cell is [name, event_ts_ms, value]")
        name, ts, value = cell
        if type(name) is not str or not previous < name or len(name) > MAX_NAME_CHARS:
            _check_name(name)
            raise ValueError("an event-time row's cells must be sorted by name, each name once")
        if type(ts) is not int or ts < 0 or ts > _INT64_MAX:
            _check_ts(ts)
        kind = type(value)
        if kind is not float and kind is not str and value is not None and kind is not bool and kind is not bytes:
            _check_value(value, name)
        row[name] = (ts, value)
        previous = name
    return row


def decode_stored_row(data: bytes) -> Row:
    """A row read back from this node's own store, which only merges write (each checked every cell it wrote):
    decoded without checking the cells again, half the cost of ``decode_row`` on the online read path. Bytes that
    are not even a list of three-item cells are still a ValueError."""
    try:
        return {cell[0]: (cell[1], cell[2]) for cell in msgpack.unpackb(data, raw=False)}
    except Exception as exc:
        raise ValueError(f"not an event-time row: {exc!r:.200}") from None


def merge_rows(a: Row, b: Row) -> Row:
    """Per cell, the newer by ``(event_ts_ms, packed value)``."""
    if not a:
        return dict(b)
    merged = dict(a)
    for name, theirs in b.items():
        mine = merged.get(name)
        if mine is None or theirs[0] > mine[0] or (theirs[0] == mine[0] and _packed(theirs) > _packed(mine)):
            merged[name] = theirs
    return merged


def merge_encoded(stored: bytes | None, incoming: bytes, *, incoming_merged: bool = False) -> bytes:
    """``incoming`` (a written row, or with ``incoming_merged`` another replica's stored row) merged into ``stored``
    (None: nothing stored), encoded; ValueError for a malformed row or a join past the merged bounds."""
    row = decode_row(incoming, merged=incoming_merged)
    if stored is not None:
        row = merge_rows(decode_row(stored, merged=True), row)
    # Both decoded rows were checked cell by cell: encoded without checking them again.
    return _encode_checked(row)


def _encode_checked(row: Row) -> bytes:
    data: bytes = msgpack.packb([[name, *row[name]] for name in sorted(row)], use_bin_type=True)
    if len(data) > MAX_MERGED_ROW_BYTES or len(row) > MAX_MERGED_CELLS:
        raise ValueError(f"a stored row is at most {MAX_MERGED_ROW_BYTES} bytes encoded and {MAX_MERGED_CELLS} cells")
    return data


def _packed(cell: Cell) -> bytes:
    data: bytes = msgpack.packb(cell[1], use_bin_type=True)
    return data


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a cell's name is a string of 1 to {MAX_NAME_CHARS} characters, got {name!r:.80}")


def _check_ts(ts: object) -> None:
    if type(ts) is not int or not 0 <= ts <= _INT64_MAX:
        raise ValueError(f"a cell's event time is milliseconds since the epoch, 0 to {_INT64_MAX}, got {ts!r:.80}")


def _check_value(value: object, name: str) -> None:
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise ValueError(f"cell {name!r}: a list holds at most {MAX_LIST_ITEMS} items")
        for item in value:
            _check_scalar(item, name)
    else:
        _check_scalar(value, name)


def _check_scalar(value: object, name: str) -> None:
    if value is None or type(value) in (bool, float, str, bytes):
        return
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return
    raise ValueError(f"cell {name!r}: {type(value).__name__} {value!r:.40} is not a feature value")


@dataclass(frozen=True)
class EventTimePolicy:
    """Leaderless mode's conflict policy for event-time rows: a key's ``Versions`` holds one sibling, the row; a
    write merges its row in and merge joins two rows. A delete is refused: a row is only superseded by newer
    events (a tombstone would be a value no event time orders)."""

    name: str = "event-time"

    def write(
        self, state: Versions | None, seen: VectorClock, dot: Dot, value: bytes | None, timestamp_ms: int
    ) -> Versions:
        if value is None:
            raise ValueError("an event-time row cannot be deleted: newer events supersede it")
        node, counter = dot
        context = VectorClock() if state is None else state.context
        if counter <= context.get(node):
            raise ValueError(f"dot {dot} is not above the counter of {node} the state holds")
        current = _row_of(state)
        row = merge_encoded(current, value)
        return Versions((Sibling(dot, row, timestamp_ms),), context.merge(VectorClock.of({node: counter})))

    def merge(self, a: Versions, b: Versions) -> Versions:
        row_a, row_b = _row_of(a), _row_of(b)
        context = a.context.merge(b.context)
        newest = max((*a.siblings, *b.siblings), key=lambda s: (s.dot[1], s.dot[0], s.timestamp_ms), default=None)
        if newest is None:
            return Versions((), context)
        if row_a is None or row_b is None:
            row = merge_encoded(None, row_a if row_b is None else row_b, incoming_merged=True)  # type: ignore[arg-type]
        else:
            row = merge_encoded(row_a, row_b, incoming_merged=True)
        return Versions((Sibling(newest.dot, row, newest.timestamp_ms),), context)


def _row_of(state: Versions | None) -> bytes | None:
    if state is None or not state.siblings:
        return None
    if len(state.siblings) != 1 or state.siblings[0].value is None:
        raise ValueError("an event-time key holds one row")
    return state.siblings[0].value
