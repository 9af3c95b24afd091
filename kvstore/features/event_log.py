"""Export of the retained event log (``__fs/ev/`` keys) to Parquet: the offline store training data is joined on.

The input is a scan of the event log in key order, so every stored event of one ``(view, entity, event time)``
comes in one run of adjacent keys (two different events at the same time are two keys, ``keys.event_key``).
Each run is merged with ``merge_rows`` into one row, the same merge the online store applies, so the files hold
exactly one row per ``(entity, event_ts)`` and a point-in-time join needs no deduplication of its own.

Layout: ``<out_dir>/<view>/part-00000.parquet``, ``part-00001.parquet``, ... one file per ``chunk_rows`` rows,
each written as soon as it fills (memory stays bounded by ``chunk_rows`` rows per view whatever the log's size),
with typed columns: the entity's join key, ``event_timestamp`` (``timestamp[ms, UTC]``), then the view's features.
Every view of the definitions gets at least one (possibly empty) file, so a reader always finds its schema.
Earlier ``part-*.parquet`` files of a view are removed first: an export replaces the previous one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kvstore.features.definitions import DefinitionError, Definitions, FeatureView
from kvstore.features.keys import parse_event_key
from replication.event_time import Row, decode_row, merge_rows

log = logging.getLogger(__name__)

TIMESTAMP_COLUMN = "event_timestamp"
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")
ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "bytes": pa.binary(),
    "int64_list": pa.list_(pa.int64()),
    "float64_list": pa.list_(pa.float64()),
    "string_list": pa.list_(pa.string()),
}
ENTITY_ARROW_TYPES: dict[str, pa.DataType] = {"int64": pa.int64(), "string": pa.string()}


def event_log_schema(view: FeatureView) -> pa.Schema:
    """The columns of ``view``'s exported events: join key, ``event_timestamp``, then the features (sorted)."""
    return pa.schema(
        [
            pa.field(view.entity.join_key, ENTITY_ARROW_TYPES[view.entity.value_type]),
            pa.field(TIMESTAMP_COLUMN, TIMESTAMP_TYPE),
            *(pa.field(name, ARROW_TYPES[kind]) for name, kind in view.features.items()),
        ]
    )


def write_event_log(
    items: Iterable[tuple[str, bytes]], definitions: Definitions, out_dir: Path, *, chunk_rows: int = 65_536
) -> dict[str, list[Path]]:
    """Write the event log ``items`` (keys and stored rows, in key order) as Parquet under ``out_dir``; the files
    written, per view. ValueError names the key of an undecodable or out-of-order item."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    writers = {name: _ViewWriter(view, Path(out_dir) / name, chunk_rows) for name, view in definitions.views.items()}
    skipped = 0
    previous_key: str | None = None
    # The run of adjacent keys of one (view, entity, ts) being merged.
    pending: tuple[str, str, int] | None = None
    pending_row: Row = {}
    pending_key = ""
    for key, value in items:
        if previous_key is not None and key <= previous_key:
            raise ValueError(f"event-log keys must come in increasing order: {key!r:.200} after {previous_key!r:.200}")
        previous_key = key
        try:
            view_name, entity_key, event_ts_ms = parse_event_key(key)
        except ValueError as exc:
            raise ValueError(f"not an event-log key: {key!r:.200} ({exc})") from None
        if view_name not in writers:
            skipped += 1
            continue
        try:
            row = decode_row(value, merged=True)
        except ValueError as exc:
            raise ValueError(f"event-log key {key!r:.200}: {exc}") from None
        event = (view_name, entity_key, event_ts_ms)
        if event == pending:
            pending_row = merge_rows(pending_row, row)
            continue
        if pending is not None:
            writers[pending[0]].add(pending[1], pending[2], pending_row, pending_key)
        pending, pending_row, pending_key = event, row, key
    if pending is not None:
        writers[pending[0]].add(pending[1], pending[2], pending_row, pending_key)
    if skipped:
        log.info("event log export skipped %d events of views the definitions do not have", skipped)
    return {name: writer.close() for name, writer in writers.items()}


class _ViewWriter:
    """One view's column buffers, written out as a Parquet file each time ``chunk_rows`` rows have gathered."""

    def __init__(self, view: FeatureView, directory: Path, chunk_rows: int) -> None:
        self.view = view
        self.directory = directory
        self.chunk_rows = chunk_rows
        self.schema = event_log_schema(view)
        self.entities: list[int | str] = []
        self.timestamps: list[int] = []
        self.features: dict[str, list[Any]] = {name: [] for name in view.features}
        self.paths: list[Path] = []
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("part-*.parquet"):
            stale.unlink()

    def add(self, entity_key: str, event_ts_ms: int, row: Row, key: str) -> None:
        """Buffer one merged event; ``key`` (one of its keys) names it in errors."""
        entity = self.view.entity
        try:
            entity_value = entity.value_of(entity_key)
            if entity.key_of(entity_value) != entity_key:
                raise DefinitionError(f"{entity_key!r:.80} is not the canonical form of an {entity.value_type} id")
            # A feature added since the event was written is missing from its row: null, as for any missing value.
            values = self.view.check_values({name: row[name][1] if name in row else None for name in self.features})
        except (ValueError, DefinitionError) as exc:
            message = exc.message if isinstance(exc, DefinitionError) else str(exc)
            raise ValueError(f"event-log key {key!r:.200} does not fit view {self.view.name!r}: {message}") from None
        self.entities.append(entity_value)
        self.timestamps.append(event_ts_ms)
        for name, value in values.items():
            self.features[name].append(value)
        if len(self.timestamps) >= self.chunk_rows:
            self._flush()

    def close(self) -> list[Path]:
        if self.timestamps or not self.paths:
            self._flush()
        return self.paths

    def _flush(self) -> None:
        columns = [
            pa.array(self.entities, self.schema.field(0).type),
            pa.array(self.timestamps, TIMESTAMP_TYPE),
            *(pa.array(values, ARROW_TYPES[self.view.features[name]]) for name, values in self.features.items()),
        ]
        path = self.directory / f"part-{len(self.paths):05d}.parquet"
        pq.write_table(pa.Table.from_arrays(columns, schema=self.schema), path)
        self.paths.append(path)
        self.entities, self.timestamps = [], []
        self.features = {name: [] for name in self.view.features}
