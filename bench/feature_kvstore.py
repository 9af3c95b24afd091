"""The kvstore side of the feature store benchmark (``bench/features.py``): the same data, the figures Feast gives.

One local node (single mode, ``fsync = "batch"``: the bench measures reads and the feed, not the disk) gets the
definitions and the feature rows (pushed through ``materialize``), then:

- in-process online reads (``FeatureClient.get_online_features`` on the in-process replica): 1 x 5 and 100 x 5;
- HTTP online reads (``POST /features/online``, msgpack both ways) on a kept-alive connection: 1 x 5 and 100 x 5;
- the change feed: events pushed at a steady pace by a second process's worth of client (a thread here), each
  stamped with its push time as its event time, and the lag until the in-process replica holds it, p50/p99, with
  the events per second that went through;
- historical retrieval: the event log exported as Parquet, then the point-in-time join of the entity rows on
  DuckDB (median of runs), beside a pandas ``merge_asof`` of the same data (the reference the issue names).
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from kvstore.change_feed import ChangeFeed, Changes
from kvstore.cluster import LocalCluster
from kvstore.features import batch
from kvstore.features.client import FeatureClient
from kvstore.features.definitions import Source, load
from kvstore.features.ingest import Event
from kvstore.features.keys import online_prefix
from replication.event_time import decode_row


def timed(name: str, call: Callable[[], Any], runs: int) -> dict[str, float]:
    """``<name>_p50_ms`` and ``<name>_p99_ms`` of ``runs`` calls, after a warm-up."""
    samples = []
    for _ in range(min(runs // 10, 200)):
        call()
    for _ in range(runs):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    ordered = sorted(samples)
    return {
        f"{name}_p50_ms": ordered[len(ordered) // 2] / 1e6,
        f"{name}_p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6,
    }


@dataclass(frozen=True)
class Effort:
    """How long each measurement runs: online calls (100-entity reads take a tenth), seconds of pushing through
    the change feed, runs of the historical join."""

    calls: int = 20_000
    feed_s: float = 10.0
    historical_runs: int = 5


def measure_kvstore(
    toml_path: Path, view: str, feature_rows: Path, entity_rows: Path, entity_ids: list[int], effort: Effort
) -> dict[str, float]:
    """kvstore's figures, named as ``bench/features.py``'s ``FIGURES`` (milliseconds, seconds), and its own."""
    definitions = load(toml_path)
    features = list(definitions.view(view).features)[:5]
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-features-") as work:
        cluster = LocalCluster.create(Path(work) / "cluster", nodes=1, fsync="batch")
        cluster.up()
        try:
            with FeatureClient(cluster.urls(), timeout_s=60) as fs:
                return _measure(fs, cluster.urls()[0], definitions, view, features, feature_rows, entity_rows,
                                entity_ids, effort)
        finally:
            cluster.down(purge=True)


def _measure(
    fs: FeatureClient,
    url: str,
    definitions: Any,
    view: str,
    features: list[str],
    feature_rows: Path,
    entity_rows: Path,
    entity_ids: list[int],
    effort: Effort,
) -> dict[str, float]:
    out: dict[str, float] = {}
    fs.apply(definitions)
    started = time.perf_counter()
    done = batch.materialize(fs, view, source=Source(str(feature_rows)), progress=False)
    out["materialize_events_per_s"] = done.events / (time.perf_counter() - started)

    fs.serve_locally([view])
    one, hundred = entity_ids[:1], entity_ids[:100]
    runs = effort.calls
    out.update(timed("in_process_1x5", lambda: fs.get_online_features(view, one, features), runs))
    out.update(timed("in_process_100x5", lambda: fs.get_online_features(view, hundred, features), runs // 10))
    out.update(_http_online("http_1x5", url, view, one, features, runs // 10))
    out.update(_http_online("http_100x5", url, view, hundred, features, runs // 10))
    out.update(_feed_lag(fs, url, view, definitions, features, effort.feed_s))

    import pyarrow.parquet as pq

    entity_table = pq.read_table(entity_rows)
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-log-") as log_dir:
        started = time.perf_counter()
        batch.export_event_log(fs, Path(log_dir), [view])
        out["export_s"] = time.perf_counter() - started
        from kvstore.features.training import historical_features

        refs = [f"{view}:{name}" for name in features]
        times = []
        for _ in range(effort.historical_runs):
            started = time.perf_counter()
            table = historical_features(entity_table, refs, fs.registry().definitions, Path(log_dir))
            times.append(time.perf_counter() - started)
        out["historical_s"] = statistics.median(times)
        if table.num_rows != entity_table.num_rows:
            raise RuntimeError(f"the join returned {table.num_rows} rows for {entity_table.num_rows} entity rows")
    return out


def _http_online(
    name: str, url: str, view: str, entities: list[int], features: list[str], runs: int
) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = msgpack.packb({"view": view, "entities": entities, "features": features})
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}

    def call() -> None:
        connection.request("POST", "/features/online", body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")

    try:
        return timed(name, call, runs)
    finally:
        connection.close()


def _feed_lag(
    fs: FeatureClient, url: str, view: str, definitions: Any, features: list[str], seconds: float
) -> dict[str, float]:
    """Push events stamped with their push time; measure when each reaches a change-feed reader in this process."""
    spec = definitions.view(view)
    batch_size = 50
    arrived_ns: list[int] = []
    lags_ms: list[float] = []
    feature = features[0]

    def on_frame(frame: object) -> None:
        if isinstance(frame, Changes):
            now_ms = time.time_ns() / 1e6
            for change in frame.changes:
                if change.value is not None:
                    ts = decode_row(change.value)[feature][0]
                    lags_ms.append(now_ms - ts)
                    arrived_ns.append(time.perf_counter_ns())

    feed = ChangeFeed([url], prefix=online_prefix(view), on_frame=on_frame)
    time.sleep(1.0)  # let the feed read what materialize wrote
    lags_ms.clear()
    arrived_ns.clear()
    stop = threading.Event()
    pushed = [0]
    base_entity = 10_000_000

    def pusher() -> None:
        entity = base_entity
        while not stop.is_set():
            now_ms = time.time_ns() // 1_000_000
            events = []
            for _ in range(batch_size):
                values = {name: _value_of(spec.features[name]) for name in spec.features}
                events.append(Event(entity, now_ms, values))
                entity += 1
            pushed[0] += fs.push(view, events, batch_size=batch_size)

    thread = threading.Thread(target=pusher)
    started_ns = time.perf_counter_ns()
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    deadline = time.monotonic() + 10
    while len(lags_ms) < pushed[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    feed.close()
    elapsed_s = ((arrived_ns[-1] if arrived_ns else time.perf_counter_ns()) - started_ns) / 1e9
    ordered = sorted(lags_ms)
    if len(ordered) < pushed[0]:
        raise RuntimeError(f"the feed delivered {len(ordered)} of {pushed[0]} pushed events within 10 s")
    return {
        "feed_events_per_s": len(ordered) / elapsed_s,
        "feed_lag_p50_ms": ordered[len(ordered) // 2],
        "feed_lag_p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def _value_of(kind: str) -> Any:
    return {"int64": 1, "float64": 0.5, "string": "x", "bool": True}.get(kind)
