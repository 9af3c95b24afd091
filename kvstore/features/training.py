"""Training data: point-in-time correct joins of entity rows against the exported event log (``event_log.py``).

For each entity row (join key, timestamp T) and each requested view, the view's event of that entity with the
largest event time <= T gives the values, unless the view has a TTL and ``T >= event_ts + ttl_ms`` (then nulls);
no such event: nulls. The export already merged the events of one ``(entity, event_ts)`` into one row, so this is
exactly an as-of join. Every entity row gives exactly one output row, in the input order: the engines join on a
row number added to the input and sort by it, and the feature columns are appended to the caller's own table, so
its columns come back untouched.

Engines: ``duckdb`` (default; an in-memory connection, the entity rows handed over as Arrow without a copy, one
``ASOF LEFT JOIN`` per view over ``<event_log_dir>/<view>/*.parquet``) and ``spark`` (``training_spark.py``,
imported only when asked, for logs that outgrow one machine; the same files, the same results).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from kvstore.features.definitions import DefinitionError, Definitions
from kvstore.features.event_log import ARROW_TYPES, TIMESTAMP_COLUMN
from kvstore.features.join_request import ROW_COLUMN, TS_COLUMN, ViewRequest

if TYPE_CHECKING:
    import duckdb
    import pandas

ENGINES = ("duckdb", "spark")


def historical_features(
    entity_rows: pandas.DataFrame | pa.Table,
    features: Sequence[str],
    definitions: Definitions,
    event_log_dir: Path,
    *,
    timestamp_column: str = TIMESTAMP_COLUMN,
    engine: str = "duckdb",
    full_feature_names: bool = False,
) -> pa.Table:
    """``entity_rows``' columns followed by the requested ``"view:feature"`` columns, point-in-time correct, one
    row per entity row in the same order. DefinitionError for a bad reference, a missing column or engine."""
    if engine not in ENGINES:
        raise DefinitionError(f"unknown engine {engine!r:.40}: expected one of {', '.join(ENGINES)}")
    if isinstance(entity_rows, pa.Table):
        table = entity_rows
    else:
        try:
            table = pa.Table.from_pandas(entity_rows, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DefinitionError(f"the entity rows do not convert to Arrow columns: {exc}") from None
    requests = plan(features, definitions, table.column_names, full_feature_names)
    log_dir = Path(event_log_dir)
    for request in requests:
        if not any((log_dir / request.view.name).glob("*.parquet")):
            raise DefinitionError(f"no exported events of view {request.view.name!r} under {log_dir}")
    keyed = _entity_keys(table, requests, timestamp_column)
    if engine == "spark":
        from kvstore.features.training_spark import spark_point_in_time

        joined = spark_point_in_time(keyed, requests, log_dir)
    else:
        joined = _duckdb_point_in_time(keyed, requests, log_dir)
    if joined.num_rows != table.num_rows:
        raise RuntimeError(f"the {engine} join gave {joined.num_rows} rows for {table.num_rows} entity rows")
    kinds = {
        name: ARROW_TYPES[request.view.features[feature]]
        for request in requests
        for feature, name in zip(request.features, request.output_names, strict=True)
    }
    result = table
    for reference in features:  # in the order asked for
        name = _output_name(reference, full_feature_names)
        result = result.append_column(pa.field(name, kinds[name]), joined.column(name).cast(kinds[name]))
    return result


def plan(
    features: Sequence[str], definitions: Definitions, entity_columns: Sequence[str], full_feature_names: bool
) -> list[ViewRequest]:
    """The ``"view:feature"`` references grouped by view (in order of first mention), with their output names."""
    if isinstance(features, str):
        raise DefinitionError("features is a list of 'view:feature' references, not one string")
    if not features:
        raise DefinitionError("ask for at least one 'view:feature'")
    by_view: dict[str, list[str]] = {}
    for reference in features:
        view_name, sep, feature = reference.partition(":") if isinstance(reference, str) else ("", "", "")
        if not sep or not view_name or not feature:
            raise DefinitionError(f"a feature reference is 'view:feature', got {reference!r:.80}")
        if view_name not in definitions.views:
            known = ", ".join(definitions.views) or "none"
            raise DefinitionError(f"no feature view {view_name!r:.80} (views: {known:.200})")
        if feature not in definitions.views[view_name].features:
            raise DefinitionError(f"view {view_name!r} has no feature {feature!r:.80}")
        chosen = by_view.setdefault(view_name, [])
        if feature in chosen:
            raise DefinitionError(f"feature {reference!r} is asked for twice")
        chosen.append(feature)
    taken = {name: "a column of the entity rows" for name in entity_columns}
    for reserved in (ROW_COLUMN, TS_COLUMN):
        if reserved in taken:
            raise DefinitionError(f"the entity rows may not have a column named {reserved!r}")
    requests = []
    for view_name, chosen in by_view.items():
        names = tuple(_output_name(f"{view_name}:{f}", full_feature_names) for f in chosen)
        for feature, name in zip(chosen, names, strict=True):
            if name in taken:
                hint = "" if full_feature_names else " (full_feature_names=True names columns view__feature)"
                clash = f"output column {name!r} of {view_name}:{feature} clashes with {taken[name]}"
                raise DefinitionError(clash + hint)
            taken[name] = f"{view_name}:{feature}"
        requests.append(ViewRequest(definitions.views[view_name], tuple(chosen), names))
    return requests


def _output_name(reference: str, full_feature_names: bool) -> str:
    view, _, feature = reference.partition(":")
    return f"{view}__{feature}" if full_feature_names else feature


def _entity_keys(table: pa.Table, requests: Sequence[ViewRequest], timestamp_column: str) -> pa.Table:
    """What the engines join: a row number, the timestamp as integer milliseconds, and each join key."""
    if timestamp_column not in table.column_names:
        raise DefinitionError(f"the entity rows have no timestamp column {timestamp_column!r:.80}")
    columns: dict[str, pa.Array[Any] | pa.ChunkedArray[Any]] = {
        ROW_COLUMN: pa.array(range(table.num_rows), pa.int64()),
        TS_COLUMN: _as_ms(table, timestamp_column),
    }
    for request in requests:
        entity = request.view.entity
        if entity.join_key in columns:
            continue
        if entity.join_key not in table.column_names:
            raise DefinitionError(f"the entity rows have no column {entity.join_key!r} (view {request.view.name!r})")
        column = table.column(entity.join_key)
        wanted = pa.int64() if entity.value_type == "int64" else pa.string()
        integer = pa.types.is_integer(column.type)
        text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if (entity.value_type == "int64" and not integer) or (entity.value_type == "string" and not text):
            raise DefinitionError(f"column {entity.join_key!r} is {column.type}, entity {entity.name!r} needs {wanted}")
        columns[entity.join_key] = column.cast(wanted)
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def _as_ms(table: pa.Table, name: str) -> pa.ChunkedArray[Any]:
    """Column ``name`` as int64 milliseconds since the epoch: a timestamp (any unit; naive is UTC) or an integer."""
    column = table.column(name)
    kind = column.type
    if pa.types.is_integer(kind):
        return column.cast(pa.int64())
    if pa.types.is_timestamp(kind):
        # Finer units truncate to the millisecond (event times are whole milliseconds, so a row at 1.5 ms sees one
        # at 1 ms; no overflow is possible); seconds are multiplied, checked.
        try:
            as_ms = column.cast(pa.timestamp("ms", tz=kind.tz), safe=kind.unit == "s")
        except pa.ArrowException as exc:
            raise DefinitionError(f"timestamp column {name!r}: a time beyond int64 milliseconds: {exc}") from None
        return as_ms.cast(pa.int64())
    raise DefinitionError(f"timestamp column {name!r} is {kind}: expected a timestamp or integer milliseconds")


def _duckdb_point_in_time(keyed: pa.Table, requests: Sequence[ViewRequest], log_dir: Path) -> pa.Table:
    selects = [f"e.{_quote(ROW_COLUMN)}"]
    joins = []
    for index, request in enumerate(requests):
        alias, ttl_ms = f"v{index}", request.view.ttl_ms
        key = _quote(request.view.entity.join_key)
        event_ms = _quote(TS_COLUMN)
        # Expired at T >= event_ts + ttl_ms (the same instant the online store stops serving it).
        live = f"e.{event_ms} < {alias}.{event_ms} + {ttl_ms}" if ttl_ms > 0 else None
        for feature, name in zip(request.features, request.output_names, strict=True):
            value = f"{alias}.{_quote(feature)}"
            selects.append(f"{f'CASE WHEN {live} THEN {value} END' if live else value} AS {_quote(name)}")
        columns = ", ".join(_quote(f) for f in request.features)
        path = _literal(str(log_dir / request.files))
        joins.append(
            f"ASOF LEFT JOIN (SELECT {key}, epoch_ms({_quote(TIMESTAMP_COLUMN)}) AS {event_ms}, {columns} "
            f"FROM read_parquet({path})) AS {alias} "
            f"ON e.{key} = {alias}.{key} AND e.{event_ms} >= {alias}.{event_ms}"
        )
    query = f"SELECT {', '.join(selects)} FROM keyed AS e {' '.join(joins)} ORDER BY e.{_quote(ROW_COLUMN)}"
    # A cursor is a connection of its own (registrations stay private to the call, calls may run in threads)
    # onto one in-memory database, opened once: opening a database costs more than the join.
    import duckdb

    with _database().cursor() as connection:
        connection.register("keyed", keyed)
        try:
            joined: pa.Table = connection.sql(query).to_arrow_table()
        except duckdb.Error as exc:
            # Typically files exported under older definitions (a feature since added): export the log again.
            raise DefinitionError(f"the event log under {log_dir} does not fit the definitions: {exc}") from None
    return joined


@functools.cache
def _database() -> duckdb.DuckDBPyConnection:
    import duckdb

    return duckdb.connect(":memory:")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write training data as one Parquet file (the directory is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
