"""The event-log export: one typed row per (view, entity, event time), events of one time merged as the online
store merges them, bounded chunks as separate files, unknown views skipped, bad keys and values named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kvstore.features.definitions import Definitions, Entity, FeatureView
from kvstore.features.event_log import event_log_schema, write_event_log
from kvstore.features.keys import encoded_event, event_key
from replication.event_time import encode_row

DRIVER = Entity("driver", "driver_id")
USER = Entity("user", "user_id", value_type="string")
ALL_TYPES = {
    "i": "int64",
    "f": "float64",
    "s": "string",
    "b": "bool",
    "raw": "bytes",
    "il": "int64_list",
    "fl": "float64_list",
    "sl": "string_list",
}
EVERYTHING = FeatureView("everything", USER, ALL_TYPES)
STATS = FeatureView("stats", DRIVER, {"trips": "int64", "rate": "float64"}, ttl_ms=1000)
DEFS = Definitions({"driver": DRIVER, "user": USER}, {"everything": EVERYTHING, "stats": STATS})


def item(view: str, entity_key: str, ts: int, values: dict[str, Any]) -> tuple[str, bytes]:
    row = encoded_event(ts, values)
    return event_key(view, entity_key, ts, row), row


def test_schema_types_follow_the_feature_types() -> None:
    fields: list[tuple[str, pa.DataType]] = [
        ("user_id", pa.string()),
        ("event_timestamp", pa.timestamp("ms", tz="UTC")),
        ("b", pa.bool_()),
        ("f", pa.float64()),
        ("fl", pa.list_(pa.float64())),
        ("i", pa.int64()),
        ("il", pa.list_(pa.int64())),
        ("raw", pa.binary()),
        ("s", pa.string()),
        ("sl", pa.list_(pa.string())),
    ]
    assert event_log_schema(EVERYTHING) == pa.schema(fields)
    assert event_log_schema(STATS).field("driver_id").type == pa.int64()


def test_every_type_round_trips_and_events_of_one_time_are_merged(tmp_path: Path) -> None:
    full = {"i": -3, "f": 1.5, "s": "é", "b": False, "raw": b"\x00\xff", "il": [1, 2], "fl": [0.5], "sl": ["a", ""]}
    nulls = dict.fromkeys(ALL_TYPES)
    items = sorted(
        [
            item("everything", "ann", 5, full),
            item("everything", "ann", 9, nulls),
            item("stats", "7", 10, {"trips": 1, "rate": 0.25}),
            item("stats", "7", 10, {"trips": 2, "rate": None}),  # same time, another event: merged per feature
            item("stats", "10", 3, {"trips": 0, "rate": 3}),
        ]
    )
    paths = write_event_log(items, DEFS, tmp_path)
    assert paths == {
        "everything": [tmp_path / "everything" / "part-00000.parquet"],
        "stats": [tmp_path / "stats" / "part-00000.parquet"],
    }
    everything = pq.read_table(paths["everything"][0])
    assert everything.schema == event_log_schema(EVERYTHING)
    assert everything.to_pylist() == [
        {"user_id": "ann", "event_timestamp": everything.column(1)[0].as_py(), **full},
        {"user_id": "ann", "event_timestamp": everything.column(1)[1].as_py(), **nulls},
    ]
    assert everything.column("event_timestamp").cast(pa.int64()).to_pylist() == [5, 9]
    stats = pq.read_table(paths["stats"][0])
    # Key order: entity "10" sorts before "7"; at (7, 10) the larger packed value of each feature won.
    assert stats.column("driver_id").to_pylist() == [10, 7]
    assert stats.column("event_timestamp").cast(pa.int64()).to_pylist() == [3, 10]
    assert stats.column("trips").to_pylist() == [0, 2]
    assert stats.column("rate").to_pylist() == [3.0, 0.25]  # an int pushed to a float64 feature is a float


def test_chunks_become_files_and_a_second_export_replaces_the_first(tmp_path: Path) -> None:
    items = [item("stats", str(entity), ts, {"trips": ts, "rate": None}) for entity in range(3) for ts in range(4)]
    paths = write_event_log(sorted(items), DEFS, tmp_path, chunk_rows=5)
    assert [p.name for p in paths["stats"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in paths["stats"]] == [5, 5, 2]
    assert pq.read_table(tmp_path / "stats").num_rows == 12
    # A view without events still gets a file, so its schema is there for readers.
    assert pq.read_table(paths["everything"][0]).num_rows == 0
    again = write_event_log(sorted(items)[:2], DEFS, tmp_path, chunk_rows=5)
    assert sorted((tmp_path / "stats").glob("*.parquet")) == again["stats"]
    assert pq.read_table(tmp_path / "stats").num_rows == 2


def test_views_the_definitions_lack_are_skipped(tmp_path: Path) -> None:
    items = sorted([item("gone", "1", 1, {"x": 1}), item("stats", "1", 1, {"trips": 1, "rate": 1.0})])
    paths = write_event_log(items, DEFS, tmp_path)
    assert set(paths) == {"everything", "stats"}
    assert not (tmp_path / "gone").exists()
    assert pq.read_table(tmp_path / "stats").num_rows == 1


def test_features_added_since_an_event_are_null_and_removed_ones_ignored(tmp_path: Path) -> None:
    key, _ = item("stats", "1", 1, {"trips": 1, "rate": 1.0})
    row = encode_row({"trips": (1, 4), "old": (1, "x")})
    write_event_log([(key, row)], DEFS, tmp_path)
    assert pq.read_table(tmp_path / "stats").to_pylist()[0] | {"event_timestamp": None} == {
        "driver_id": 1,
        "event_timestamp": None,
        "trips": 4,
        "rate": None,
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([("__fs/ev/stats/1/zz/abc", b"")], "not an event-log key"),
        ([("__fs/on/stats/1", b"")], "not an event-log key"),
        ([(item("stats", "1", 1, {"trips": 1, "rate": 1.0})[0], b"\xc1")], "event-log key '__fs/ev/stats/1/"),
        ([item("stats", "x", 1, {"trips": 1, "rate": 1.0})], "does not fit view 'stats'"),
        ([item("stats", "01", 1, {"trips": 1, "rate": 1.0})], "not the canonical form"),
        ([item("stats", "1", 1, {"trips": "many", "rate": 1.0})], "feature 'trips' must be int64"),
        ([item("stats", "2", 1, {"trips": 1, "rate": 1}), item("stats", "1", 1, {"trips": 1, "rate": 1})], "order"),
    ],
)
def test_bad_items_raise_a_value_error_naming_the_key(
    tmp_path: Path, items: list[tuple[str, bytes]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_event_log(items, DEFS, tmp_path)
