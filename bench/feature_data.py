"""The feature store benchmark's shared dataset: one entity, one feature view, its events and training entity rows.

Both sides of ``bench/features.py`` read the same files, so the figures compare the same work:

- entity ``driver``, join key ``driver_id`` (int64);
- view ``driver_stats``: conv_rate float64, acc_rate float64, avg_daily_trips int64, rating float64,
  trips_today int64, TTL 7 days;
- ``driver_stats.parquet``: 100,000 events (one row each, every feature set) of 10,000 drivers, at event times
  drawn over 30 days, all distinct (so "the event at or before T" never needs a tie-break and every engine
  agrees on it), written in generation order, i.e. out of time order as late events arrive;
- ``entity_rows.parquet``: 10,000 training rows (driver_id, event_timestamp) over the same 30 days plus one day
  past the last event, a twentieth of them of drivers with no events at all (their features stay null);
- ``features.toml``: the same definitions as kvstore reads them (``kvstore.features.definitions.load``).

Timestamps are Parquet ``timestamp[ms, UTC]`` in a column ``event_timestamp``, as kvstore keeps them; a side
that wants another unit converts on its own side. Everything derives from ``seed``: the same seed writes the
same data.

``point_in_time_reference`` is the training join done with pandas ``merge_asof``: the reference both the Feast
side and the kvstore side time, and check their results against. This module needs numpy and pandas (with
pyarrow for Parquet) only, no kvstore, so the Feast environment's Python imports it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ENTITY = "driver"
JOIN_KEY = "driver_id"
VIEW = "driver_stats"
TIMESTAMP_COLUMN = "event_timestamp"
FEATURES = {
    "conv_rate": "float64",
    "acc_rate": "float64",
    "avg_daily_trips": "int64",
    "rating": "float64",
    "trips_today": "int64",
}
TTL_S = 7 * 86_400
FIRST_DRIVER_ID = 1001
# 2026-01-01T00:00:00Z: fixed, so the files do not depend on the day they are written.
START_MS = 1_767_225_600_000
SPAN_MS = 30 * 86_400_000
# Entity rows run this far past the last event, so some fall out of every TTL.
ENTITY_TAIL_MS = 86_400_000

FEATURES_FILE = "driver_stats.parquet"
ENTITY_ROWS_FILE = "entity_rows.parquet"
DEFINITIONS_FILE = "features.toml"


@dataclass(frozen=True)
class DatasetShape:
    feature_rows: int = 100_000
    drivers: int = 10_000
    entity_rows: int = 10_000
    seed: int = 16


def _timestamps(ms: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(ms, unit="ms", utc=True), name=TIMESTAMP_COLUMN).astype("datetime64[ms, UTC]")


def feature_frame(shape: DatasetShape) -> pd.DataFrame:
    """The view's events, in generation order."""
    rng = np.random.default_rng([shape.seed, 1])
    n = shape.feature_rows
    drivers = FIRST_DRIVER_ID + rng.integers(0, shape.drivers, n, dtype=np.int64)
    event_ms = START_MS + rng.choice(SPAN_MS, n, replace=False).astype(np.int64)
    return pd.DataFrame(
        {
            JOIN_KEY: drivers,
            TIMESTAMP_COLUMN: _timestamps(event_ms),
            "conv_rate": rng.random(n),
            "acc_rate": rng.random(n),
            "avg_daily_trips": rng.integers(0, 1_000, n, dtype=np.int64),
            "rating": np.round(1.0 + 4.0 * rng.random(n), 2),
            "trips_today": rng.integers(0, 50, n, dtype=np.int64),
        }
    )


def entity_frame(shape: DatasetShape) -> pd.DataFrame:
    """Training entity rows: known drivers and, one in twenty, drivers past the last one (no events)."""
    rng = np.random.default_rng([shape.seed, 2])
    unknown = max(1, shape.drivers // 20)
    drivers = FIRST_DRIVER_ID + rng.integers(0, shape.drivers + unknown, shape.entity_rows, dtype=np.int64)
    row_ms = START_MS + rng.integers(0, SPAN_MS + ENTITY_TAIL_MS, shape.entity_rows, dtype=np.int64)
    return pd.DataFrame({JOIN_KEY: drivers, TIMESTAMP_COLUMN: _timestamps(row_ms)})


def definitions_toml() -> str:
    """The entity and the view as kvstore's TOML, with the Parquet file as the view's source."""
    features = ", ".join(f'{name} = "{kind}"' for name, kind in FEATURES.items())
    return (
        f"[entities.{ENTITY}]\n"
        f'join_key = "{JOIN_KEY}"\n'
        'value_type = "int64"\n'
        "\n"
        f"[views.{VIEW}]\n"
        f'entity = "{ENTITY}"\n'
        f"ttl_s = {TTL_S}\n"
        f"features = {{ {features} }}\n"
        f'source = {{ path = "{FEATURES_FILE}", timestamp_column = "{TIMESTAMP_COLUMN}" }}\n'
    )


def write_dataset(data_dir: Path, shape: DatasetShape = DatasetShape()) -> None:
    """The two Parquet files and the definitions, in ``data_dir`` (created if missing)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    feature_frame(shape).to_parquet(data_dir / FEATURES_FILE, index=False)
    entity_frame(shape).to_parquet(data_dir / ENTITY_ROWS_FILE, index=False)
    (data_dir / DEFINITIONS_FILE).write_text(definitions_toml())


def point_in_time_reference(features: pd.DataFrame, entity_rows: pd.DataFrame) -> pd.DataFrame:
    """The training join with ``merge_asof``: each entity row, in its order, with the features of its driver's
    latest event at or before its timestamp, null where there is none or it is expired (T >= event + TTL)."""
    left = entity_rows.reset_index(drop=True).rename_axis("row").reset_index().sort_values(TIMESTAMP_COLUMN)
    right = features.rename(columns={TIMESTAMP_COLUMN: "feature_timestamp"}).sort_values("feature_timestamp")
    joined = pd.merge_asof(
        left,
        right,
        left_on=TIMESTAMP_COLUMN,
        right_on="feature_timestamp",
        by=JOIN_KEY,
        direction="backward",
        # merge_asof's tolerance is inclusive; an event expires at exactly T = event + TTL.
        tolerance=pd.Timedelta(seconds=TTL_S) - pd.Timedelta(milliseconds=1),
    )
    return joined.sort_values("row").drop(columns=["row", "feature_timestamp"]).reset_index(drop=True)
