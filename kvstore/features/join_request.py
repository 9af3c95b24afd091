"""What a point-in-time join is asked, shared by its engines (``training.py``'s DuckDB, ``training_spark.py``):
per view the features and their output names, and the columns the engines add to the entity rows."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.features.definitions import FeatureView

# Columns the engines add to the entity rows; the caller's columns may not use these names.
ROW_COLUMN = "__kvstore_row"
TS_COLUMN = "__kvstore_ts_ms"


@dataclass(frozen=True)
class ViewRequest:
    """The features asked of one view and the output column each becomes."""

    view: FeatureView
    features: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def files(self) -> str:
        return f"{self.view.name}/*.parquet"
