"""bench/features.py without Feast: the shared dataset is deterministic and kvstore reads its definitions, the
merge_asof reference joins as the issue says, and the report's plumbing (figures, ratios, targets) holds."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
from bench_loader import load_bench

from kvstore.features.definitions import load

SMALL = {"feature_rows": 2_000, "drivers": 200, "entity_rows": 500}


@pytest.fixture(scope="module")
def data() -> ModuleType:
    return load_bench("feature_data")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("features")


def test_the_same_seed_writes_the_same_files_and_another_seed_other_data(data: ModuleType, tmp_path: Path) -> None:
    shape = data.DatasetShape(**SMALL)
    data.write_dataset(tmp_path / "a", shape)
    data.write_dataset(tmp_path / "b", shape)
    for name in (data.FEATURES_FILE, data.ENTITY_ROWS_FILE, data.DEFINITIONS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = data.DatasetShape(**SMALL, seed=17)
    assert not data.feature_frame(shape).equals(data.feature_frame(other))
    assert not data.entity_frame(shape).equals(data.entity_frame(other))


def test_the_default_dataset_has_the_issue_s_shape(data: ModuleType, tmp_path: Path) -> None:
    data.write_dataset(tmp_path)
    features = pd.read_parquet(tmp_path / data.FEATURES_FILE)
    entity_rows = pd.read_parquet(tmp_path / data.ENTITY_ROWS_FILE)
    assert list(features.columns) == ["driver_id", "event_timestamp", *data.FEATURES]
    assert len(features) == 100_000 and len(entity_rows) == 10_000
    assert str(features["event_timestamp"].dtype) == "datetime64[ms, UTC]"
    assert str(entity_rows["event_timestamp"].dtype) == "datetime64[ms, UTC]"
    assert features["event_timestamp"].is_unique
    assert not features["event_timestamp"].is_monotonic_increasing  # written out of time order
    assert features["driver_id"].between(1001, 11_000).all()
    assert (entity_rows["driver_id"] > 11_000).any()  # drivers with no events
    assert features["event_timestamp"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert features["event_timestamp"].max() < pd.Timestamp("2026-01-31", tz="UTC")


def test_kvstore_loads_the_definitions_it_writes(data: ModuleType, tmp_path: Path) -> None:
    data.write_dataset(tmp_path, data.DatasetShape(**SMALL))
    definitions = load(tmp_path / data.DEFINITIONS_FILE)
    driver = definitions.entities["driver"]
    assert (driver.join_key, driver.value_type) == ("driver_id", "int64")
    view = definitions.view("driver_stats")
    assert view.entity == driver
    assert view.features == {
        "acc_rate": "float64",
        "avg_daily_trips": "int64",
        "conv_rate": "float64",
        "rating": "float64",
        "trips_today": "int64",
    }
    assert view.ttl_ms == 7 * 86_400_000
    assert view.source is not None
    assert view.source.path == str(tmp_path / "driver_stats.parquet")
    assert (view.source.timestamp_column, view.source.format) == ("event_timestamp", "parquet")


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_the_reference_takes_the_latest_event_at_or_before_each_row_within_the_ttl(data: ModuleType) -> None:
    day = pd.Timedelta(days=1)
    t0 = _ts("2026-01-01")
    values = {name: [1.0, 2.0, 3.0] for name in data.FEATURES}
    values["conv_rate"] = [0.1, 0.2, 0.3]
    features = pd.DataFrame(
        {"driver_id": [1, 1, 2], "event_timestamp": [t0 + 2 * day, t0, t0], **values}  # out of time order
    )
    ttl = pd.Timedelta(seconds=data.TTL_S)
    entity_rows = pd.DataFrame(
        {
            "driver_id": [1, 1, 1, 2, 2, 3],
            "event_timestamp": [
                t0 + 3 * day,  # the event of day 2
                t0 - day,  # before any event: null
                t0 + day,  # the event of day 0, not the later one
                t0 + ttl - pd.Timedelta(milliseconds=1),  # the last instant the event of day 0 is alive
                t0 + ttl,  # expired at exactly event + TTL
                t0,  # a driver with no events
            ],
        }
    )
    joined = data.point_in_time_reference(features, entity_rows)
    assert list(joined["driver_id"]) == [1, 1, 1, 2, 2, 3]  # every row, in its order
    assert list(joined["event_timestamp"]) == list(entity_rows["event_timestamp"])
    assert joined["conv_rate"].tolist()[0] == 0.1 and joined["conv_rate"].tolist()[2] == 0.2
    assert joined["conv_rate"].tolist()[3] == 0.3
    assert joined["conv_rate"].isna().tolist() == [False, True, False, False, True, True]


FEAST_DOC: dict[str, Any] = {
    "online_in_process": {"1x5": {"p50_ms": 0.12, "p99_ms": 0.2}, "100x5": {"p50_ms": 4.0, "p99_ms": 5.0}},
    "online_http": {"1x5": {"p50_ms": 1.0, "p99_ms": 2.0}, "100x5": {"p50_ms": 8.0, "p99_ms": 9.0}},
    "historical": {"feast_s": 0.1, "merge_asof_s": 0.04},
}


def test_feast_s_document_becomes_the_table_s_figures(bench: ModuleType) -> None:
    figures = bench.feast_figures(FEAST_DOC)
    assert set(figures) == {f.key for f in bench.FIGURES}
    assert figures["in_process_100x5_p50_ms"] == 4.0 and figures["http_1x5_p99_ms"] == 2.0
    assert (figures["historical_s"], figures["merge_asof_s"]) == (0.1, 0.04)


def test_ratios_and_targets_cover_what_each_side_measured(bench: ModuleType) -> None:
    feast = bench.feast_figures(FEAST_DOC)
    kvstore = {"in_process_1x5_p50_ms": 0.006, "historical_s": 0.05, "merge_asof_s": 0.02, "feed_events_per_s": 9e4}
    rows = {row["key"]: row for row in bench.comparison(feast, kvstore)}
    assert rows["in_process_1x5_p50_ms"]["feast_over_kvstore"] == pytest.approx(20.0)
    assert rows["historical_s"]["feast_over_kvstore"] == pytest.approx(2.0)
    assert rows["http_1x5_p50_ms"]["kvstore"] is None and rows["http_1x5_p50_ms"]["feast_over_kvstore"] is None
    assert rows["feed_events_per_s"]["feast"] is None  # a kvstore-only figure still shows
    verdicts = {v["target"]: v for v in bench.verdicts(feast, kvstore)}
    assert verdicts["in-process 1x5 p50 under 10 us"]["met"] is True
    assert verdicts["historical faster than Feast with DuckDB"]["met"] is True
    assert verdicts["historical within 2x of pandas merge_asof"]["met"] is False  # 0.05 s > 2 x 0.02 s
    assert "HTTP 100x5 p50 under 1 ms" not in verdicts  # not measured on kvstore's side


def test_a_quick_run_without_feast_reports_the_skip_and_the_reference(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--smoke", "--no-feast"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["feast"] is None and report["feast_skipped"] == "--no-feast"
    # Every figure of the table and kvstore's own, each measured (the smoke run's values mean nothing).
    assert {f.key for f in bench.FIGURES} <= set(report["kvstore"])
    assert {"feed_events_per_s", "feed_lag_p50_ms", "materialize_events_per_s"} <= set(report["kvstore"])
    assert all(value > 0 for value in report["kvstore"].values())
    assert [row["key"] for row in report["comparison"]][: len(bench.FIGURES)] == [f.key for f in bench.FIGURES]
    assert "Feast: skipped (--no-feast)" in out and "skipped: --no-feast" in err


def test_a_run_with_feast_s_figures_renders_both_sides(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {
        **FEAST_DOC,
        "feast_version": "0.67.0",
        "pandas_version": "2.3.3",
        "online_store": "sqlite",
        "offline_store": "duckdb",
        "apply_s": 0.02,
        "materialize_s": 1.2,
        "online_ttl_check": {
            "values": 500,
            "values_served": 500,
            "newest_event_age_s": 30 * 86_400.0,
            "ttl_s": 604_800,
        },
    }
    doc["historical"] = {
        **FEAST_DOC["historical"],
        "check": {"entity_rows": 10_000, "rows_agreeing": 9_999, "rows_missing": 1},
    }
    monkeypatch.setattr(bench, "run_feast", lambda data_dir, quick: (doc, "reusing the venv"))
    monkeypatch.setattr(bench, "measure_kvstore", lambda data_dir, effort, runs: {"merge_asof_s": 0.02})
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "Feast 0.67.0 (pandas 2.3.3): local provider, sqlite online store, duckdb offline store" in out
    assert "agree with merge_asof on 9,999 of 10,000 (1 missing)" in out
    assert "served 500 of 500 values (100 drivers) although the newest event is 30 days old and the TTL 7 days" in out
    http_line = next(line for line in out.splitlines() if line.startswith("online HTTP 100x5 p50"))
    assert http_line.split()[-4:] == ["8", "ms", "-", "-"]  # Feast's figure, none from kvstore yet
    report = json.loads(out.strip().splitlines()[-1])
    assert report["feast_skipped"] is None and len(report["comparison"]) == len(bench.FIGURES)


def test_a_ready_feast_venv_is_reused_without_installing(tmp_path: Path) -> None:
    feast_env = load_bench("feast_env")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    (tmp_path / feast_env.READY_MARK.name).write_text(feast_env.FEAST_REQUIREMENT)
    python, reason = feast_env.feast_python(tmp_path)
    assert python == tmp_path / "bin" / "python" and reason == f"reusing {tmp_path}"
