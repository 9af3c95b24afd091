"""Offline sources: a view's events read from a Parquet file, a directory of Parquet files, or a CSV file, in
bounded chunks (what materialization streams into the online store).

Files are streamed with pyarrow's dataset scanner (Parquet, one file at a time, in path order) and its CSV
streaming reader, ``chunk_rows`` rows per record batch, so memory stays bounded by the chunk whatever the file's
size. Every row is checked as pushed events are (``Entity.key_of``, ``FeatureView.check_values``), and a bad one
raises DefinitionError naming the file and the row (1-based, counting data rows, not a CSV's header).

The timestamp column may be an Arrow timestamp of any unit (a naive one is UTC), integer milliseconds since the
epoch, or ISO-8601 text (a CSV's natural form; without an offset it is UTC). In CSV, list features are JSON
arrays (``"[1, 2]"``) and bytes features are the cell's UTF-8 bytes. ``after_ms < event_ts_ms <= until_ms``
selects the events of an incremental materialization.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from kvstore.features.definitions import DefinitionError, FeatureView, Source
from kvstore.features.event_log import ENTITY_ARROW_TYPES

# CSV column types: what pyarrow parses itself; lists arrive as text and are decoded from JSON.
_CSV_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "bytes": pa.binary(),
    "int64_list": pa.string(),
    "float64_list": pa.string(),
    "string_list": pa.string(),
}
_CSV_BLOCK_BYTES = 1 << 20
_UNIT_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}  # (multiply, divide)


class OfflineEvent(NamedTuple):
    entity: int | str
    event_ts_ms: int
    values: dict[str, Any]


def read_events(
    view: FeatureView,
    source: Source,
    *,
    chunk_rows: int = 50_000,
    after_ms: int | None = None,
    until_ms: int | None = None,
) -> Iterator[list[OfflineEvent]]:
    """The events of ``source`` for ``view``, checked, in lists of at most ``chunk_rows`` (none empty)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    chunk: list[OfflineEvent] = []
    for path, first_row, batch in _batches(view, source, chunk_rows):
        for event in _events(view, source, path, first_row, batch, after_ms, until_ms):
            chunk.append(event)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _batches(view: FeatureView, source: Source, chunk_rows: int) -> Iterator[tuple[str, int, pa.RecordBatch]]:
    """``(file, 1-based number of the batch's first row in it, batch)`` over the source's files."""
    columns = [view.entity.join_key, source.timestamp_column, *view.features]
    path = Path(source.path)
    if not path.exists():
        raise DefinitionError(f"offline source {path} does not exist")
    if source.format == "csv":
        yield from _csv_batches(view, source, path, columns)
        return
    try:
        dataset = pads.dataset(str(path), format="parquet")
    except (pa.ArrowException, OSError) as exc:
        raise DefinitionError(f"offline source {path}: not readable as Parquet: {exc}") from None
    for fragment in sorted(dataset.get_fragments(), key=lambda f: str(f.path)):
        missing = [c for c in columns if c not in fragment.physical_schema.names]
        if missing:
            raise DefinitionError(f"{fragment.path}: no column {missing[0]!r} (view {view.name!r})")
        row = 1
        try:
            for batch in fragment.to_batches(columns=columns, batch_size=chunk_rows):
                yield fragment.path, row, batch
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DefinitionError(f"{fragment.path}: not readable as Parquet: {exc}") from None


def _csv_batches(
    view: FeatureView, source: Source, path: Path, columns: list[str]
) -> Iterator[tuple[str, int, pa.RecordBatch]]:
    types = {view.entity.join_key: ENTITY_ARROW_TYPES[view.entity.value_type], source.timestamp_column: pa.string()}
    types.update({name: _CSV_TYPES[kind] for name, kind in view.features.items()})
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=True),
        )
    except (pa.ArrowException, OSError) as exc:
        raise DefinitionError(f"{path}: not readable as CSV for view {view.name!r}: {exc}") from None
    row = 1
    try:
        for batch in reader:
            yield str(path), row, batch
            row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        # pyarrow names the offending CSV row itself.
        raise DefinitionError(f"{path}: {exc}") from None


def _events(
    view: FeatureView,
    source: Source,
    path: str,
    first_row: int,
    batch: pa.RecordBatch,
    after_ms: int | None,
    until_ms: int | None,
) -> Iterator[OfflineEvent]:
    all_times = _timestamps_ms(batch.column(source.timestamp_column), path, first_row).to_pylist()
    # A null time is kept, to be reported below.
    rows = [
        i
        for i, ts in enumerate(all_times)
        if ts is None or ((after_ms is None or ts > after_ms) and (until_ms is None or ts <= until_ms))
    ]
    if not rows:
        return
    picked = batch.take(pa.array(rows, pa.int64()))
    entity_values = picked.column(view.entity.join_key).to_pylist()
    features = {name: picked.column(name).to_pylist() for name in view.features}
    lists = {name for name, kind in view.features.items() if kind.endswith("_list")}
    for i, row in enumerate(rows):
        where = f"{path} row {first_row + row}"
        event_ts_ms, entity = all_times[row], entity_values[i]
        if event_ts_ms is None or event_ts_ms < 0:
            raise DefinitionError(f"{where}: no event time (at or after 1970) in {source.timestamp_column!r}")
        try:
            entity_id = view.entity.value_of(view.entity.key_of(entity))
            raw = {name: _json_list(cells[i], name) if name in lists else cells[i] for name, cells in features.items()}
            values = view.check_values(raw)
        except DefinitionError as exc:
            raise DefinitionError(f"{where}: {exc.message}") from None
        yield OfflineEvent(entity_id, event_ts_ms, values)


def _timestamps_ms(column: pa.Array[Any], path: str, first_row: int) -> pa.Array[Any]:
    """The event times of a batch as int64 ms (checked arithmetic: an out-of-range time is an error, not a wrap)."""
    kind = column.type
    try:
        if pa.types.is_timestamp(kind):
            # Integer division truncates, which is the floor for the event times kvstore keeps (never before 1970).
            multiply, divide = _UNIT_MS[kind.unit]
            return pc.divide(pc.multiply_checked(column.cast(pa.int64()), multiply), divide)
        if pa.types.is_integer(kind):
            return column.cast(pa.int64())
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            texts = column.to_pylist()
            return pa.array([_parse_time(text, path, first_row + i) for i, text in enumerate(texts)], pa.int64())
    except (pa.ArrowException, OverflowError) as exc:
        raise DefinitionError(f"{path}: an event time beyond int64 milliseconds near row {first_row}: {exc}") from None
    raise DefinitionError(f"{path}: the timestamp column is {kind}: expected a timestamp, integer ms or ISO-8601 text")


def _parse_time(text: str | None, path: str, row: int) -> int | None:
    """ISO-8601 text (no offset: UTC) or a whole number of milliseconds, as ms since the epoch."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DefinitionError(f"{path} row {row}: event time {text!r:.60} is not ISO-8601 or milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _json_list(text: object, name: str) -> object:
    """A CSV cell of a list feature: JSON text decoded (anything else is left for ``check_values`` to refuse)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        raise DefinitionError(f"feature {name!r}: {text!r:.40} is not a JSON list") from None
