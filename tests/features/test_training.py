"""Point-in-time training data: the DuckDB join over the exported event log equals an independent pandas
``merge_asof`` reference on generated data (late and duplicate events, ties, TTL boundaries, entities with no
history), the output keeps every entity row in order, references are checked, and Spark gives DuckDB's result."""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.features.definitions import DefinitionError, Definitions, Entity, FeatureView
from kvstore.features.event_log import write_event_log
from kvstore.features.keys import encoded_event, event_key
from kvstore.features.training import historical_features, write_parquet
from replication.event_time import merge_encoded

DRIVER = Entity("driver", "driver_id")
STATS = FeatureView("stats", DRIVER, {"trips": "int64", "rate": "float64", "tags": "string_list"}, ttl_ms=0)
USER = Entity("user", "user_id", value_type="string")
PROFILE = FeatureView("profile", USER, {"name": "string", "vip": "bool"})

Event = tuple[Any, int, dict[str, Any]]  # (entity id, event_ts_ms, values)


def definitions(ttl_ms: int) -> Definitions:
    recent = FeatureView("recent", DRIVER, {"label": "string", "ok": "bool", "trips": "int64"}, ttl_ms=ttl_ms)
    return Definitions({"driver": DRIVER, "user": USER}, {"stats": STATS, "recent": recent, "profile": PROFILE})


def export(defs: Definitions, events: dict[str, list[Event]], out_dir: Path, arrival: random.Random) -> None:
    """Store ``events`` the way the cluster does (each merged into its key, in a shuffled arrival order, duplicates
    included) and export a key-ordered scan of them."""
    arrivals = [(view, event) for view, view_events in events.items() for event in view_events]
    arrival.shuffle(arrivals)
    stored: dict[str, bytes] = {}
    for view, (entity, ts, values) in arrivals:
        row = encoded_event(ts, values)
        key = event_key(view, defs.views[view].entity.key_of(entity), ts, row)
        stored[key] = merge_encoded(stored.get(key), row)
    write_event_log(sorted(stored.items()), defs, out_dir, chunk_rows=7)


def reference(
    entity_rows: pd.DataFrame, view: FeatureView, events: list[Event], features: list[str], names: list[str]
) -> pd.DataFrame:
    """The point-in-time join written independently with pandas: events of one (entity, ts) merged per feature
    (the value with the larger msgpack bytes wins a tie), then merge_asof backward with exact matches, the TTL as
    a tolerance (a value is live while T - ts <= ttl - 1), then the input order restored."""
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for entity, ts, values in events:
        current = merged.setdefault((entity, ts), dict(values))
        for name, value in values.items():
            if msgpack.packb(value, use_bin_type=True) > msgpack.packb(current[name], use_bin_type=True):
                current[name] = value
    key = view.entity.join_key
    right = pd.DataFrame(
        [
            {key: e, "__ts": ts, **{n: v[f] for f, n in zip(features, names, strict=True)}}
            for (e, ts), v in merged.items()
        ],
        columns=[key, "__ts", *names],
    )
    right = right.astype({key: "int64", "__ts": "int64"}).astype({n: object for n in names}).sort_values("__ts")
    left = entity_rows[[key, "__T"]].assign(__order=range(len(entity_rows))).sort_values("__T", kind="stable")
    joined = pd.merge_asof(
        left,
        right,
        left_on="__T",
        right_on="__ts",
        by=key,
        direction="backward",
        allow_exact_matches=True,
        tolerance=view.ttl_ms - 1 if view.ttl_ms > 0 else None,
    )
    return joined.sort_values("__order")[names].reset_index(drop=True)


def plain(value: Any) -> Any:
    """pandas' missing values as None, for comparing with Arrow's Python values."""
    if isinstance(value, list):
        return value
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


feature_values = {
    "trips": st.none() | st.integers(-5, 5),
    "rate": st.none() | st.floats(-10, 10, allow_nan=False) | st.sampled_from([0.0, -0.0]),
    "tags": st.none() | st.lists(st.sampled_from(["a", "b"]), max_size=2),
    "label": st.none() | st.sampled_from(["x", "y", "z", ""]),
    "ok": st.none() | st.booleans(),
}
VIEW_FEATURES = {"stats": ["trips", "rate", "tags"], "recent": ["label", "ok", "trips"]}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, dict[str, list[Event]], pd.DataFrame, int]:
    ttl_ms = draw(st.sampled_from([0, 1, 2, 5, 13]))
    events: dict[str, list[Event]] = {}
    for view, names in VIEW_FEATURES.items():
        values = st.fixed_dictionaries({name: feature_values[name] for name in names})
        base = draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 40), values), max_size=25))
        # Duplicated events, and a second, different event at an existing (entity, ts).
        duplicates = draw(st.lists(st.sampled_from(base), max_size=5)) if base else []
        ties = [(e, ts, draw(values)) for e, ts, _ in draw(st.lists(st.sampled_from(base), max_size=4))] if base else []
        events[view] = base + duplicates + ties
    # Entity rows: random ones (entities 5 and 6 have no history; times before any event), the TTL boundaries
    # T == ts + ttl - 1 and T == ts + ttl of events, and duplicates of rows.
    rows = draw(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 60)), min_size=1, max_size=20))
    for entity, ts, _ in events["recent"][:6]:
        rows += [(entity, ts + max(ttl_ms, 1) - 1), (entity, ts + ttl_ms), (entity, ts)]
    rows += draw(st.lists(st.sampled_from(rows), max_size=5))
    rows = draw(st.permutations(rows))
    frame = pd.DataFrame(
        {
            "driver_id": pd.array([e for e, _ in rows], dtype="int64"),
            "event_timestamp": pd.to_datetime([t for _, t in rows], unit="ms", utc=True).astype("datetime64[ms, UTC]"),
            "__T": [t for _, t in rows],
        }
    )
    return ttl_ms, events, frame, draw(st.integers(0, 2**32))


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="kvstore-training-test-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_duckdb_join_equals_a_pandas_merge_asof_reference(scenario: tuple[Any, ...], scratch: Path) -> None:
    ttl_ms, events, entity_rows, seed = scenario
    defs = definitions(ttl_ms)
    with tempfile.TemporaryDirectory(dir=scratch) as out:
        export(defs, events, Path(out), random.Random(seed))
        refs = [f"{view}:{f}" for view, names in VIEW_FEATURES.items() for f in names]
        result = historical_features(entity_rows.drop(columns="__T"), refs, defs, Path(out), full_feature_names=True)
    assert result.num_rows == len(entity_rows)
    assert result.column_names[:2] == ["driver_id", "event_timestamp"]
    assert result.column("driver_id").to_pylist() == entity_rows["driver_id"].tolist()
    assert result.column("event_timestamp").to_pylist() == entity_rows["event_timestamp"].tolist()
    for view, names in VIEW_FEATURES.items():
        columns = [f"{view}__{f}" for f in names]
        expected = reference(entity_rows, defs.views[view], events[view], names, columns)
        for column in columns:
            got = result.column(column).to_pylist()
            want = [plain(v) for v in expected[column].tolist()]
            assert got == want, column


def write_log(defs: Definitions, out: Path, events: dict[str, list[tuple[object, int, dict[str, Any]]]]) -> None:
    stored: dict[str, bytes] = {}
    for view, view_events in events.items():
        for entity, ts, values in view_events:
            row = encoded_event(ts, values)
            stored[event_key(view, defs.views[view].entity.key_of(entity), ts, row)] = row
    write_event_log(sorted(stored.items()), defs, out)


def test_rows_keep_their_order_and_columns_with_integer_timestamps_and_string_entities(tmp_path: Path) -> None:
    defs = definitions(10)
    write_log(
        defs,
        tmp_path,
        {
            "stats": [
                (1, 100, {"trips": 7, "rate": 0.5, "tags": ["a"]}),
                (1, 200, {"trips": 8, "rate": None, "tags": []}),
            ],
            "recent": [(1, 195, {"label": "late", "ok": True, "trips": 3})],
            "profile": [("ann", 50, {"name": "Ann", "vip": True})],
        },
    )
    entity_rows = pa.table(
        {
            "note": ["c", "a", "b", "d", "e"],
            "driver_id": pa.array([1, 1, 2, 1, 1], pa.int32()),
            "user_id": ["ann", "bob", "ann", "ann", "ann"],
            "ts": [200, 99, 300, 204, 205],
        }
    )
    refs = ["stats:trips", "stats:rate", "recent:label", "profile:vip", "stats:tags"]
    result = historical_features(entity_rows, refs, defs, tmp_path, timestamp_column="ts")
    assert result.column_names == ["note", "driver_id", "user_id", "ts", "trips", "rate", "label", "vip", "tags"]
    assert result.schema.field("driver_id").type == pa.int32()  # the caller's columns come back as they were
    assert result.to_pydict() == {
        "note": ["c", "a", "b", "d", "e"],
        "driver_id": [1, 1, 2, 1, 1],
        "user_id": ["ann", "bob", "ann", "ann", "ann"],
        "ts": [200, 99, 300, 204, 205],
        "trips": [8, None, None, 8, 8],
        "rate": [None, None, None, None, None],
        "label": ["late", None, None, "late", None],  # ttl 10: live at 204, expired at 195 + 10
        "vip": [True, None, True, True, True],
        "tags": [[], None, None, [], []],
    }
    assert result.schema.field("tags").type == pa.list_(pa.string())


def test_an_entity_row_at_sub_millisecond_precision_sees_the_event_of_its_millisecond(tmp_path: Path) -> None:
    defs = definitions(0)
    write_log(defs, tmp_path, {"stats": [(1, 1_700_000_000_001, {"trips": 1, "rate": 1.0, "tags": None})]})
    times = pd.to_datetime(["2023-11-14T22:13:20.0015Z", "2023-11-14T22:13:20.0009Z"], utc=True)
    rows = pd.DataFrame({"driver_id": [1, 1], "event_timestamp": times})
    assert historical_features(rows, ["stats:trips"], defs, tmp_path).column("trips").to_pylist() == [1, None]


def test_rows_without_a_key_or_a_time_get_nulls(tmp_path: Path) -> None:
    defs = definitions(0)
    write_log(defs, tmp_path, {"stats": [(1, 10, {"trips": 3, "rate": None, "tags": None})]})
    rows = pa.table({"driver_id": pa.array([1, None, 1], pa.int64()), "event_timestamp": pa.array([12, 12, None])})
    assert historical_features(rows, ["stats:trips"], defs, tmp_path).column("trips").to_pylist() == [3, None, None]


def test_an_export_older_than_the_definitions_is_refused_clearly(tmp_path: Path) -> None:
    old = definitions(0)
    write_log(old, tmp_path, {"stats": [(1, 10, {"trips": 3, "rate": None, "tags": None})]})
    newer = FeatureView("stats", DRIVER, {**STATS.features, "added": "string"})
    defs = Definitions({"driver": DRIVER}, {"stats": newer})
    rows = pa.table({"driver_id": [1], "event_timestamp": [12]})
    with pytest.raises(DefinitionError, match="does not fit the definitions"):
        historical_features(rows, ["stats:added"], defs, tmp_path)


def test_output_can_be_written_as_parquet(tmp_path: Path) -> None:
    defs = definitions(0)
    write_log(defs, tmp_path / "log", {"stats": [(3, 5, {"trips": 2, "rate": 2.5, "tags": ["b"]})]})
    rows = pa.table({"driver_id": [3], "event_timestamp": [6]})
    result = historical_features(rows, ["stats:rate"], defs, tmp_path / "log")
    write_parquet(result, tmp_path / "out" / "train.parquet")
    assert pd.read_parquet(tmp_path / "out" / "train.parquet")["rate"].tolist() == [2.5]


@pytest.mark.parametrize(
    ("refs", "kwargs", "message"),
    [
        (["nope:trips"], {}, "no feature view 'nope'"),
        (["stats:nope"], {}, "view 'stats' has no feature 'nope'"),
        (["stats"], {}, "'view:feature'"),
        ("stats:trips", {}, "not one string"),
        ([], {}, "at least one"),
        (["stats:trips", "recent:trips"], {}, "full_feature_names=True"),
        (["stats:trips", "stats:trips"], {}, "asked for twice"),
        (["stats:trips"], {"engine": "pandas"}, "unknown engine 'pandas'"),
        (["stats:trips"], {"timestamp_column": "when"}, "no timestamp column 'when'"),
        (["profile:vip"], {}, "no column 'user_id'"),
    ],
)
def test_bad_requests_are_refused_clearly(tmp_path: Path, refs: Any, kwargs: dict[str, Any], message: str) -> None:
    defs = definitions(0)
    write_log(defs, tmp_path, {})
    rows = pa.table({"driver_id": [1], "event_timestamp": [1]})
    with pytest.raises(DefinitionError, match=message):
        historical_features(rows, refs, defs, tmp_path, **kwargs)


def test_a_feature_named_like_an_entity_column_or_a_wrong_key_type_is_refused(tmp_path: Path) -> None:
    defs = definitions(0)
    write_log(defs, tmp_path, {})
    with pytest.raises(DefinitionError, match="clashes with a column of the entity rows"):
        rows = pa.table({"driver_id": [1], "event_timestamp": [1], "trips": [0]})
        historical_features(rows, ["stats:trips"], defs, tmp_path)
    with pytest.raises(DefinitionError, match="entity 'driver' needs int64"):
        historical_features(pa.table({"driver_id": ["1"], "event_timestamp": [1]}), ["stats:trips"], defs, tmp_path)
    with pytest.raises(DefinitionError, match="expected a timestamp or integer"):
        historical_features(pa.table({"driver_id": [1], "event_timestamp": ["x"]}), ["stats:trips"], defs, tmp_path)
    with pytest.raises(DefinitionError, match="do not convert to Arrow"):
        frame = pd.DataFrame({"driver_id": [1, "x"], "event_timestamp": [1, 2]})
        historical_features(frame, ["stats:trips"], defs, tmp_path)
    with pytest.raises(DefinitionError, match="beyond int64 milliseconds"):
        seconds = pa.array([2**62], pa.timestamp("s"))
        historical_features(pa.table({"driver_id": [1], "event_timestamp": seconds}), ["stats:trips"], defs, tmp_path)
    with pytest.raises(DefinitionError, match="no exported events of view 'stats'"):
        historical_features(pa.table({"driver_id": [1], "event_timestamp": [1]}), ["stats:trips"], defs, tmp_path / "x")


def spark_unavailable() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install pyspark to run the Spark engine's test)"
    if shutil.which("java") is None:
        return "Java is not installed (the Spark engine needs a JVM)"
    try:
        subprocess.run(["java", "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "java -version fails: no usable JVM for Spark"
    return None


def seeded_dataset(rng: random.Random) -> tuple[dict[str, list[Event]], pd.DataFrame]:
    """Events of every view (duplicates and ties included) and entity rows, for comparing the engines."""
    users = ["ann", "bob", "cy"]

    def event(view: str) -> Event:
        ts = rng.randint(0, 40)
        if view == "stats":
            trips = rng.choice([None, rng.randint(0, 9)])
            return rng.randint(0, 4), ts, {"trips": trips, "rate": rng.random(), "tags": ["a"]}
        if view == "recent":
            label = rng.choice([None, "x", "y"])
            return rng.randint(0, 4), ts, {"label": label, "ok": rng.choice([None, True]), "trips": 1}
        return rng.choice(users), ts, {"name": rng.choice([None, "Ann", "Bob"]), "vip": rng.choice([None, False, True])}

    events: dict[str, list[Event]] = {}
    for view in ("stats", "recent", "profile"):
        base = [event(view) for _ in range(40)]
        ties = [(e, ts, event(view)[2]) for e, ts, _ in rng.sample(base, 5)]
        events[view] = base + rng.sample(base, 5) + ties
    count = 60
    times = [rng.randint(0, 60) for _ in range(count)]
    rows = pd.DataFrame(
        {
            "driver_id": [rng.randint(0, 6) for _ in range(count)],
            "user_id": [rng.choice([*users, "dee"]) for _ in range(count)],
            "event_timestamp": pd.to_datetime(times, unit="ms", utc=True),
        }
    )
    return events, rows


@pytest.mark.timeout(120)
def test_spark_engine_gives_the_duckdb_result(tmp_path: Path) -> None:
    reason = spark_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    defs = definitions(5)
    events, rows = seeded_dataset(random.Random(16))
    export(defs, events, tmp_path, random.Random(1))
    refs = [f"{view}:{f}" for view, names in VIEW_FEATURES.items() for f in names] + ["profile:name", "profile:vip"]
    expected = historical_features(rows, refs, defs, tmp_path, full_feature_names=True)
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        # A short job: the JVM's quick compiler only (its optimizing one costs more than it saves here).
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        .getOrCreate()
    )
    try:
        got = historical_features(rows, refs, defs, tmp_path, full_feature_names=True, engine="spark")
    finally:
        spark.stop()
    assert got.schema == expected.schema
    assert got.to_pylist() == expected.to_pylist()
    assert expected.column("stats__trips").null_count < expected.num_rows  # the data does join something
