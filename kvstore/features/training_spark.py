"""The point-in-time join of ``training.py`` as a PySpark job over the same exported Parquet files, for event logs
that outgrow one machine. Imported only when ``engine="spark"`` is asked for; pyspark is an optional extra.

Spark has no as-of join, so each view's join is the usual scalable form of one: the entity rows and the view's
events are unioned, partitioned by the join key and ordered by time, with an event sorting before an entity row
at the same time (``event_ts <= T`` includes equality); the last event struct seen so far (nulls ignored, so only
entity rows are skipped, while an event's own null features stay null) is the one the entity row gets. No row is
dropped or duplicated: the window keeps every row of the union and the entity rows are kept by a flag.

The entity rows travel to Spark as a Parquet file in a temporary directory and the result comes back the same
way, so neither side is limited to what fits in the driver's memory as Python objects. The session is the active
one if the caller made one (its master, its settings), else a local one bound to the loopback interface.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kvstore.features.definitions import DefinitionError
from kvstore.features.event_log import TIMESTAMP_COLUMN
from kvstore.features.join_request import ROW_COLUMN, TS_COLUMN, ViewRequest

try:
    from pyspark.sql import DataFrame, SparkSession, Window
    from pyspark.sql import functions as F
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise DefinitionError(f"engine 'spark' needs pyspark installed (pip install pyspark): {exc}") from None

_EVENT = "__kvstore_event"
_IS_ENTITY = "__kvstore_is_entity"


def spark_point_in_time(keyed: pa.Table, requests: Sequence[ViewRequest], log_dir: Path) -> pa.Table:
    """For each row of ``keyed`` (row number, T in ms, join keys): the requested features, in row order."""
    spark = SparkSession.getActiveSession() or _local_session()
    with tempfile.TemporaryDirectory(prefix="kvstore-spark-") as scratch:
        pq.write_table(keyed, Path(scratch) / "entities.parquet")
        entities = spark.read.parquet(str(Path(scratch) / "entities.parquet"))
        # Each view's result is written on its own and the columns are put side by side here, by row number:
        # cheaper than joining the views' results in Spark (a shuffle each), and every result has one row per
        # entity row.
        result = keyed.select([ROW_COLUMN])
        for index, request in enumerate(requests):
            out = Path(scratch) / f"view-{index}"
            _view_join(spark, entities, request, log_dir).write.parquet(str(out))
            joined = pq.read_table(out).sort_by(ROW_COLUMN)
            if not joined.column(ROW_COLUMN).equals(result.column(ROW_COLUMN)):
                raise RuntimeError(f"the Spark join of view {request.view.name!r} lost or duplicated entity rows")
            for name in request.output_names:
                result = result.append_column(name, joined.column(name))
    return result


def _local_session() -> SparkSession:
    """A session on this machine, reachable on the loopback interface only."""
    builder = SparkSession.builder.master("local[*]").appName("kvstore-training")
    for name, value in (("spark.driver.bindAddress", "127.0.0.1"), ("spark.driver.host", "127.0.0.1")):
        builder = builder.config(name, value)
    return builder.getOrCreate()


def _view_join(spark: SparkSession, entities: DataFrame, request: ViewRequest, log_dir: Path) -> DataFrame:
    """``(row number, output columns...)`` of one view for every entity row."""
    key = request.view.entity.join_key
    events = spark.read.parquet(str(log_dir / request.view.name))
    event_ms = F.unix_millis(F.col(TIMESTAMP_COLUMN))
    # One struct per event (its time and features) so that "the last event" keeps its null features as nulls.
    event_struct = F.struct(event_ms.alias(TS_COLUMN), *(F.col(f) for f in request.features))
    feature_types = dict(events.dtypes)
    null_event = F.lit(None).cast(
        "struct<" + ",".join([f"{TS_COLUMN}:bigint", *(f"`{f}`:{feature_types[f]}" for f in request.features)]) + ">"
    )
    unioned = events.select(
        F.col(key),
        event_ms.alias(TS_COLUMN),
        F.lit(None).cast("bigint").alias(ROW_COLUMN),
        F.lit(1).alias(_IS_ENTITY),
        event_struct.alias(_EVENT),
    ).unionByName(
        entities.select(
            F.col(key),
            F.col(TS_COLUMN),
            F.col(ROW_COLUMN),
            F.lit(2).alias(_IS_ENTITY),
            null_event.alias(_EVENT),
        )
    )
    window = (
        Window.partitionBy(key)
        .orderBy(F.col(TS_COLUMN), F.col(_IS_ENTITY))
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    latest = F.last(F.col(_EVENT), ignorenulls=True).over(window)
    joined = unioned.withColumn(_EVENT, latest).where(F.col(_IS_ENTITY) == 2)
    ttl_ms = request.view.ttl_ms
    # Expired at T >= event_ts + ttl_ms, as in the DuckDB engine and the online store.
    live: Any = F.col(TS_COLUMN) < F.col(f"{_EVENT}.{TS_COLUMN}") + ttl_ms if ttl_ms > 0 else None
    columns = []
    for feature, name in zip(request.features, request.output_names, strict=True):
        value = F.col(_EVENT).getField(feature)
        columns.append((F.when(live, value) if live is not None else value).alias(name))
    return joined.select(F.col(ROW_COLUMN), *columns)
