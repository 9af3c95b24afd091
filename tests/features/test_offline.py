"""Offline sources: Parquet files and directories and CSV files read in bounded chunks, every timestamp form
converted to milliseconds, the incremental window applied, and bad rows named by file and row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kvstore.features.definitions import DefinitionError, Entity, FeatureView, Source
from kvstore.features.offline import OfflineEvent, read_events

DRIVER = Entity("driver", "driver_id")
USER = Entity("user", "user_id", value_type="string")
STATS = FeatureView("stats", DRIVER, {"trips": "int64", "rate": "float64"})
PROFILE = FeatureView("profile", USER, {"name": "string", "vip": "bool", "scores": "int64_list", "raw": "bytes"})
T0 = 1_700_000_000_000


def stats_table(count: int, ts: pa.Array[Any] | None = None) -> pa.Table:
    return pa.table(
        {
            "driver_id": pa.array(range(count), pa.int64()),
            "event_timestamp": ts if ts is not None else pa.array([T0 + i for i in range(count)], pa.timestamp("ms")),
            "trips": pa.array([i % 3 if i % 4 else None for i in range(count)], pa.int64()),
            "rate": pa.array([i / 2 for i in range(count)], pa.float64()),
            "ignored": pa.array(["x"] * count),
        }
    )


def flat(chunks: list[list[OfflineEvent]]) -> list[OfflineEvent]:
    return [event for chunk in chunks for event in chunk]


def test_a_parquet_file_is_read_in_chunks_of_checked_events(tmp_path: Path) -> None:
    pq.write_table(stats_table(7), tmp_path / "stats.parquet")
    chunks = list(read_events(STATS, Source(str(tmp_path / "stats.parquet")), chunk_rows=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert flat(chunks)[:2] == [
        OfflineEvent(0, T0, {"trips": None, "rate": 0.0}),
        OfflineEvent(1, T0 + 1, {"trips": 1, "rate": 0.5}),
    ]


def test_a_directory_of_parquet_files_is_read_file_by_file_in_path_order(tmp_path: Path) -> None:
    table = stats_table(5)
    pq.write_table(table.slice(3), tmp_path / "b.parquet")
    pq.write_table(table.slice(0, 3), tmp_path / "a.parquet")
    events = flat(list(read_events(STATS, Source(str(tmp_path)), chunk_rows=2)))
    assert [e.entity for e in events] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "timestamps",
    [
        pa.array([T0 * 1000 + 999, T0 * 1000 + 1999], pa.timestamp("us", tz="UTC")),
        pa.array([T0 * 1_000_000, (T0 + 1) * 1_000_000 + 5], pa.timestamp("ns")),
        pa.array([T0 // 1000, T0 // 1000], pa.timestamp("s", tz="America/New_York")),
        pa.array([T0, T0 + 1], pa.int64()),
        pa.array([T0, T0 + 1], pa.uint64()),
    ],
)
def test_timestamps_of_any_unit_and_zone_or_integer_ms_become_ms(tmp_path: Path, timestamps: pa.Array[Any]) -> None:
    pq.write_table(stats_table(2, timestamps), tmp_path / "s.parquet")
    got = [e.event_ts_ms for e in flat(list(read_events(STATS, Source(str(tmp_path / "s.parquet")))))]
    assert got[0] == T0
    assert got[1] in (T0, T0 + 1)


def test_the_window_keeps_events_after_after_ms_up_to_until_ms(tmp_path: Path) -> None:
    pq.write_table(stats_table(10), tmp_path / "s.parquet")
    source = Source(str(tmp_path / "s.parquet"))
    window = flat(list(read_events(STATS, source, after_ms=T0 + 2, until_ms=T0 + 5, chunk_rows=2)))
    assert [e.event_ts_ms - T0 for e in window] == [3, 4, 5]
    assert len(flat(list(read_events(STATS, source, after_ms=T0 + 100)))) == 0
    assert len(flat(list(read_events(STATS, source, until_ms=T0)))) == 1


def test_csv_with_iso_times_lists_bytes_and_string_entities(tmp_path: Path) -> None:
    path = tmp_path / "profile.csv"
    path.write_text(
        "user_id,when,name,vip,scores,raw,extra\n"
        'ann,2023-11-14T22:13:20Z,Ann,true,"[1, 2]",xy,1\n'
        "bob,2023-11-14T23:13:20.5+01:00,,false,,,2\n"
        f"cy,{T0 + 7},Cy,,[],,3\n"
        "dee,2023-11-14 22:13:21,Dee,1,[3],z,4\n"
    )
    events = flat(list(read_events(PROFILE, Source(str(path), timestamp_column="when"), chunk_rows=2)))
    assert events == [
        OfflineEvent("ann", T0, {"name": "Ann", "vip": True, "scores": [1, 2], "raw": b"xy"}),
        OfflineEvent("bob", T0 + 500, {"name": None, "vip": False, "scores": None, "raw": None}),
        OfflineEvent("cy", T0 + 7, {"name": "Cy", "vip": None, "scores": [], "raw": None}),
        OfflineEvent("dee", T0 + 1000, {"name": "Dee", "vip": True, "scores": [3], "raw": b"z"}),
    ]
    assert datetime.fromtimestamp(T0 / 1000, UTC) - datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC) == timedelta(0)


def test_a_bad_row_is_named_by_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "profile.csv"
    path.write_text(
        f"user_id,event_timestamp,name,vip,scores,raw\nann,{T0},Ann,true,[1],x\nbob,{T0},Bob,true,[1.5],x\n"
    )
    with pytest.raises(DefinitionError, match=r"profile\.csv row 2: feature 'scores' must be int64"):
        list(read_events(PROFILE, Source(str(path))))
    path.write_text("user_id,event_timestamp,name,vip,scores,raw\nann,yesterday,Ann,true,[1],x\n")
    with pytest.raises(DefinitionError, match=r"row 1: event time 'yesterday' is not ISO-8601"):
        list(read_events(PROFILE, Source(str(path))))
    path.write_text(f'user_id,event_timestamp,name,vip,scores,raw\nann,{T0},Ann,true,"[1,x]",x\n')
    with pytest.raises(DefinitionError, match=r"row 1: feature 'scores'.* not a JSON list"):
        list(read_events(PROFILE, Source(str(path))))
    path.write_text(f"user_id,event_timestamp,name,vip,scores,raw\na/b,{T0},Ann,true,[1],x\n")
    with pytest.raises(DefinitionError, match=r"row 1: user_id must be a string"):
        list(read_events(PROFILE, Source(str(path))))


def test_bad_parquet_rows_and_files_are_refused_clearly(tmp_path: Path) -> None:
    table = stats_table(3).set_column(0, "driver_id", pa.array([1, None, 3], pa.int64()))
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(DefinitionError, match=r"s\.parquet row 2: driver_id must be an int64"):
        list(read_events(STATS, Source(str(tmp_path / "s.parquet"))))
    pq.write_table(stats_table(3, pa.array([T0, None, T0], pa.int64())), tmp_path / "s.parquet")
    with pytest.raises(DefinitionError, match=r"row 2: no event time"):
        list(read_events(STATS, Source(str(tmp_path / "s.parquet"))))
    pq.write_table(stats_table(2).drop_columns(["rate"]), tmp_path / "s.parquet")
    with pytest.raises(DefinitionError, match="no column 'rate'"):
        list(read_events(STATS, Source(str(tmp_path / "s.parquet"))))
    pq.write_table(stats_table(2, pa.array([1.5, 2.5])), tmp_path / "s.parquet")
    with pytest.raises(DefinitionError, match="the timestamp column is double"):
        list(read_events(STATS, Source(str(tmp_path / "s.parquet"))))
    pq.write_table(stats_table(2, pa.array([2**63, 1], pa.uint64())), tmp_path / "s.parquet")
    with pytest.raises(DefinitionError, match="beyond int64 milliseconds"):
        list(read_events(STATS, Source(str(tmp_path / "s.parquet"))))
    (tmp_path / "s.csv").write_text(f"driver_id,event_timestamp,trips,rate\n1,{2**64},3,1.0\n")
    with pytest.raises(DefinitionError, match="beyond int64 milliseconds"):
        list(read_events(STATS, Source(str(tmp_path / "s.csv"))))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DefinitionError, match="not readable as Parquet"):
        list(read_events(STATS, Source(str(tmp_path / "junk.parquet"))))
    with pytest.raises(DefinitionError, match="does not exist"):
        list(read_events(STATS, Source(str(tmp_path / "missing.parquet"))))
    (tmp_path / "s.csv").write_text("driver_id,event_timestamp,trips\n1,2,3\n")
    with pytest.raises(DefinitionError, match=r"s\.csv"):
        list(read_events(STATS, Source(str(tmp_path / "s.csv"))))
