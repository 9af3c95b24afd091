"""Feast's side of the feature store benchmark, run by the Feast environment's Python (``feast_env.py``).

    <feast venv>/bin/python bench/feast_side.py DATA_DIR [--quick]

DATA_DIR holds the dataset ``feature_data.py`` writes. This script imports Feast, pandas, pyarrow, the standard
library and its sibling ``feature_data`` (numpy, pandas, pyarrow only), never kvstore: it runs in Feast's own
virtualenv, whose versions of pandas and pyarrow are Feast's choice.

It builds a Feast repository in a temporary directory the way Feast's local quickstart does: the local provider,
a SQLite online store, the Parquet file as a ``FileSource`` with the DuckDB offline store (the file offline store,
i.e. Dask, when this Feast has no DuckDB store), a file registry. It applies the entity and the view (TTL
included), materializes the whole time range, and measures:

- ``get_online_features`` in this process, 1 entity x 5 features and 100 x 5, over drivers drawn from the
  dataset (seeded): p50/p99 of ``ONLINE_CALLS`` calls each after a few untimed ones;
- the same over ``feast serve`` (HTTP, ``POST /get-online-features`` with JSON, one keep-alive connection),
  the server started on a free 127.0.0.1 port and always stopped, errors and SIGTERM included;
- ``get_historical_features`` of the 10,000 entity rows against the view's 100,000 rows, to a DataFrame:
  median of ``HISTORICAL_RUNS`` runs; and the same join with pandas ``merge_asof``
  (``feature_data.point_in_time_reference``) in this process, median of as many runs, as the reference. Feast's
  result is checked against it: the share of entity rows whose five features agree.

Feast wants nanosecond timestamps in entity DataFrames; the Parquet files keep milliseconds, and the conversion
happens here only. Progress goes to stderr; the last line of stdout is one JSON document of the figures
(latencies in ms, durations in s).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feature_data as fd
import pandas as pd

ONLINE_CALLS = {1: 1_000, 100: 200}
QUICK_ONLINE_CALLS = {1: 200, 100: 50}
WARMUP_CALLS = 20
HISTORICAL_RUNS = 3
SERVE_START_TIMEOUT_S = 120.0
SERVE_STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 30.0
FEATURE_REFS = [f"{fd.VIEW}:{name}" for name in fd.FEATURES]


def log(message: str) -> None:
    print(f"[feast side] {message}", file=sys.stderr, flush=True)


def percentiles_ms(durations_s: list[float]) -> dict[str, float]:
    ordered = sorted(durations_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000, "calls": len(ordered)}


def time_calls(call: Callable[[list[int]], object], batches: list[list[int]]) -> dict[str, float]:
    for batch in batches[:WARMUP_CALLS]:
        call(batch)
    durations = []
    for batch in batches:
        started = time.perf_counter()
        call(batch)
        durations.append(time.perf_counter() - started)
    return percentiles_ms(durations)


def feast_module(name: str = "feast") -> Any:
    """A Feast module, imported by name: the shared venv that type-checks bench/ has no Feast."""
    return importlib.import_module(name)


def offline_store_type() -> str:
    try:
        feast_module("feast.infra.offline_stores.duckdb")
    except ImportError:
        return "file"
    return "duckdb"


def write_repo(repo: Path, offline: str) -> None:
    """feature_store.yaml, as ``feast init`` lays a local repository out."""
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {repo / 'online_store.db'}\n"
        "offline_store:\n"
        f"  type: {offline}\n"
        "entity_key_serialization_version: 3\n"
    )


def definitions(data_dir: Path) -> list[Any]:
    """The entity and the view of ``feature_data``, as Feast objects."""
    feast, types = feast_module(), feast_module("feast.types")
    driver = feast.Entity(name=fd.ENTITY, join_keys=[fd.JOIN_KEY], value_type=feast.ValueType.INT64)
    source = feast.FileSource(path=str(data_dir / fd.FEATURES_FILE), timestamp_field=fd.TIMESTAMP_COLUMN)
    dtypes = {"float64": types.Float64, "int64": types.Int64}
    schema = [feast.Field(name=name, dtype=dtypes[kind]) for name, kind in fd.FEATURES.items()]
    view = feast.FeatureView(
        name=fd.VIEW,
        entities=[driver],
        ttl=timedelta(seconds=fd.TTL_S),
        schema=[feast.Field(name=fd.JOIN_KEY, dtype=types.Int64), *schema],
        online=True,
        source=source,
    )
    return [driver, view]


def apply_and_materialize(repo: Path, data_dir: Path, features: pd.DataFrame) -> tuple[Any, float, float]:
    """The store, with the definitions applied and every event materialized; those two durations in s."""
    store = feast_module().FeatureStore(repo_path=str(repo))
    started = time.perf_counter()
    store.apply(definitions(data_dir))
    apply_s = time.perf_counter() - started
    first = features[fd.TIMESTAMP_COLUMN].min().to_pydatetime()
    last = features[fd.TIMESTAMP_COLUMN].max().to_pydatetime()
    started = time.perf_counter()
    store.materialize(first - timedelta(seconds=1), last + timedelta(seconds=1))
    return store, apply_s, time.perf_counter() - started


def entity_batches(drivers: list[int], size: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(drivers, size) for _ in range(count)]


def measure_online_in_process(store: Any, drivers: list[int], calls: dict[int, int]) -> dict[str, Any]:
    def call(batch: list[int]) -> object:
        return store.get_online_features(features=FEATURE_REFS, entity_rows=[{fd.JOIN_KEY: d} for d in batch]).to_dict()

    return {
        f"{size}x5": time_calls(call, entity_batches(drivers, size, count, seed=size)) for size, count in calls.items()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def feast_server(repo: Path, log_path: Path) -> Iterator[int]:
    """``feast serve`` on a free loopback port, stopped on exit, errors and SIGTERM included. It stays in this
    process's group, so ``feast_env.run_feast`` killing that group on a time-out takes the server with it."""
    port = free_port()
    feast_cli = Path(sys.executable).with_name("feast")
    command = [str(feast_cli), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"]
    # --max-requests would restart the worker mid-measurement (its default is 1000 requests).
    command += ["--max-requests", "1000000"]
    with log_path.open("wb") as server_log:
        process = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        wait_ready(process, port, log_path)
        yield port
    finally:
        stop(process)


def wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"feast serve exited with status {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"feast serve did not answer /health on port {port} within {SERVE_START_TIMEOUT_S:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server (gunicorn's master, which stops its worker), SIGKILL if it lingers (an orphaned
    gunicorn worker exits when it sees its master gone)."""
    process.terminate()
    try:
        process.wait(SERVE_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure_online_http(port: int, drivers: list[int], calls: dict[int, int]) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)

    def call(batch: list[int]) -> object:
        body = json.dumps({"features": FEATURE_REFS, "entities": {fd.JOIN_KEY: batch}})
        connection.request("POST", "/get-online-features", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /get-online-features: HTTP {response.status}: {payload[:300]!r}")
        return payload

    try:
        return {
            f"{size}x5": time_calls(call, entity_batches(drivers, size, count, seed=1000 + size))
            for size, count in calls.items()
        }
    finally:
        connection.close()


def online_ttl_check(store: Any, drivers: list[int], features: pd.DataFrame) -> dict[str, Any]:
    """What Feast's online read serves for 100 drivers when every event of the dataset is older than the view's
    TTL (the data ends in January 2026): a store enforcing the TTL on read serves none of these values."""
    newest = features[fd.TIMESTAMP_COLUMN].max()
    served = store.get_online_features(
        features=FEATURE_REFS, entity_rows=[{fd.JOIN_KEY: d} for d in drivers[:100]]
    ).to_dict()
    values = [v for name in fd.FEATURES for v in served[name]]
    return {
        "values": len(values),
        "values_served": sum(v is not None for v in values),
        "newest_event_age_s": (pd.Timestamp.now(tz="UTC") - newest).total_seconds(),
        "ttl_s": fd.TTL_S,
    }


def median_run(job: Callable[[], pd.DataFrame], runs: int) -> tuple[float, list[float], pd.DataFrame]:
    durations, result = [], pd.DataFrame()
    for _ in range(runs):
        started = time.perf_counter()
        result = job()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), durations, result


def agreement(feast_df: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any]:
    """Feast's training rows against the reference, matched on (driver_id, event_timestamp): rows present, and
    rows whose five features are equal (both null counts as equal)."""
    keys = [fd.JOIN_KEY, fd.TIMESTAMP_COLUMN]
    ours = reference.copy()
    theirs = feast_df[keys + list(fd.FEATURES)].copy()
    for frame in (ours, theirs):
        frame[fd.TIMESTAMP_COLUMN] = pd.to_datetime(frame[fd.TIMESTAMP_COLUMN], utc=True).astype("datetime64[ns, UTC]")
    joined = ours.merge(theirs, on=keys, how="left", suffixes=("", "_feast"), indicator=True)
    same = pd.Series(True, index=joined.index)
    for name in fd.FEATURES:
        a, b = joined[name].astype("float64"), joined[f"{name}_feast"].astype("float64")
        same &= (a == b) | (a.isna() & b.isna())
    return {
        "entity_rows": len(reference),
        "rows_returned": len(feast_df),
        "rows_missing": int((joined["_merge"] == "left_only").sum()),
        "rows_agreeing": int(same.sum()),
    }


def measure_historical(store: Any, features: pd.DataFrame, entity_rows: pd.DataFrame, runs: int) -> dict[str, Any]:
    feast_entities = entity_rows.copy()
    feast_entities[fd.TIMESTAMP_COLUMN] = feast_entities[fd.TIMESTAMP_COLUMN].astype("datetime64[ns, UTC]")

    def feast_job() -> pd.DataFrame:
        frame: pd.DataFrame = store.get_historical_features(entity_df=feast_entities, features=FEATURE_REFS).to_df()
        return frame

    feast_s, feast_runs, feast_df = median_run(feast_job, runs)
    reference_s, reference_runs, reference = median_run(lambda: fd.point_in_time_reference(features, entity_rows), runs)
    return {
        "feast_s": feast_s,
        "feast_runs_s": feast_runs,
        "merge_asof_s": reference_s,
        "merge_asof_runs_s": reference_runs,
        "check": agreement(feast_df, reference),
    }


def run(data_dir: Path, quick: bool) -> dict[str, Any]:
    feast = feast_module()
    calls = QUICK_ONLINE_CALLS if quick else ONLINE_CALLS
    features = pd.read_parquet(data_dir / fd.FEATURES_FILE)
    entity_rows = pd.read_parquet(data_dir / fd.ENTITY_ROWS_FILE)
    drivers = sorted(int(d) for d in features[fd.JOIN_KEY].unique())
    offline = offline_store_type()
    report: dict[str, Any] = {
        "feast_version": feast.__version__,
        "pandas_version": pd.__version__,
        "python": sys.version.split()[0],
        "offline_store": offline,
        "online_store": "sqlite",
        "feature_rows": len(features),
        "entity_rows": len(entity_rows),
    }
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-feast-") as tmp:
        repo = Path(tmp)
        write_repo(repo, offline)
        log(f"feast {feast.__version__}: apply and materialize {len(features)} rows ({offline} offline store)")
        store, report["apply_s"], report["materialize_s"] = apply_and_materialize(repo, data_dir, features)
        report["online_ttl_check"] = online_ttl_check(store, drivers, features)
        log("get_online_features in process")
        report["online_in_process"] = measure_online_in_process(store, drivers, calls)
        log("feast serve over HTTP")
        with feast_server(repo, repo / "serve.log") as port:
            report["online_http"] = measure_online_http(port, drivers, calls)
        log("historical retrieval")
        report["historical"] = measure_historical(store, features, entity_rows, 1 if quick else HISTORICAL_RUNS)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Feast's side of bench/features.py (run in Feast's venv)")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="fewer calls, one historical run")
    args = parser.parse_args(argv)
    # Feast's deprecation and experimental-feature warnings are noise in a benchmark's output.
    warnings.simplefilter("ignore")
    # SIGTERM unwinds like an error, so the server and the temporary repository are cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run(args.data_dir.resolve(), args.quick)
    report["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
