"""`kvstore features ...` end to end, as the README shows it: a real 3-node cluster driven through subprocesses."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from .support import kvstore, text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "features"


def test_the_readme_feature_store_commands(cluster_dir: Path, tmp_path: Path) -> None:
    d = str(cluster_dir)
    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "3", "--mode", "leader")
    assert up.returncode == 0, text(up)

    applied = kvstore("features", "apply", str(EXAMPLES / "features.toml"), "--dir", d)
    assert applied.returncode == 0, text(applied)
    assert applied.stdout.decode().strip() == "registry version 1 (applied); views: driver_stats"
    again = kvstore("features", "apply", str(EXAMPLES / "features.toml"), "--dir", d)
    assert again.stdout.decode().strip() == "registry version 1 (unchanged); views: driver_stats"

    materialized = kvstore("features", "materialize", "driver_stats", "--quiet", "--dir", d)
    assert materialized.returncode == 0, text(materialized)
    # 100 rows in the CSV; the watermark moves to the newest event time (2026-11-05T23:40:00Z is the last row).
    assert materialized.stdout.decode().startswith("materialized 100 events of driver_stats; watermark None -> ")
    # Incremental: nothing after the watermark, nothing pushed.
    rerun = kvstore("features", "materialize", "driver_stats", "--quiet", "--dir", d)
    assert rerun.stdout.decode().startswith("materialized 0 events of driver_stats")

    now_ms = int(time.time() * 1000)
    event = {"entity": 1001, "event_ts_ms": now_ms, "values": {"conv_rate": 0.91, "acc_rate": 0.88,
                                                               "avg_daily_trips": 33}}
    pushed = kvstore("features", "push", "driver_stats", "-", "--dir", d, stdin=json.dumps(event).encode() + b"\n")
    assert (pushed.returncode, pushed.stdout.decode().strip()) == (0, "pushed 1 events to driver_stats"), text(pushed)

    got = kvstore("features", "get", "driver_stats", "1001", "1003", "--dir", d)
    assert got.returncode == 0, text(got)
    lines = got.stdout.decode().splitlines()
    assert lines[0] == "driver_id=1001  acc_rate=0.88  avg_daily_trips=33  conv_rate=0.91"
    # The CSV's events are weeks old and the TTL is two days.
    assert lines[1] == "driver_id=1003  acc_rate=expired  avg_daily_trips=expired  conv_rate=expired"

    as_json = json.loads(kvstore("features", "get", "driver_stats", "1009", "--json", "--dir", d).stdout)
    assert as_json["status"]["conv_rate"] == ["missing"]

    history = kvstore("features", "history", str(EXAMPLES / "entities.csv"), "--features",
                      "driver_stats:conv_rate,driver_stats:avg_daily_trips", "--dir", d)
    assert history.returncode == 0, text(history)
    rows = list(csv.DictReader(io.StringIO(history.stdout.decode())))
    expected = _point_in_time(EXAMPLES / "driver_stats.csv", EXAMPLES / "entities.csv", ttl_ms=172_800_000)
    assert [(r["driver_id"], r["conv_rate"] or None) for r in rows] == expected

    out = tmp_path / "training.parquet"
    written = kvstore("features", "history", str(EXAMPLES / "entities.csv"), "--features", "driver_stats:conv_rate",
                      "--out", str(out), "--dir", d)
    assert written.returncode == 0, text(written)
    assert pq.read_table(out).num_rows == 6  # every entity row kept, the one with no history too

    exported = kvstore("features", "export", str(tmp_path / "log"), "--dir", d)
    assert exported.returncode == 0, text(exported)
    log_rows = pq.read_table(tmp_path / "log" / "driver_stats").num_rows
    assert log_rows == 101  # the 100 materialized events and the pushed one

    recomputed = kvstore("features", "recompute", "driver_stats", "--quiet", "--dir", d)
    assert recomputed.stdout.decode().strip() == "recomputed driver_stats's online rows from 101 events"

    bad = kvstore("features", "get", "nope", "1", "--dir", d)
    assert bad.returncode == 1 and "no feature view 'nope'" in bad.stderr.decode()
    assert kvstore("put", "__fs/on/driver_stats/1001", "x", "--dir", d).returncode == 2


def _point_in_time(events_csv: Path, entities_csv: Path, ttl_ms: int) -> list[tuple[str, str | None]]:
    """The expected join, by brute force: per entity row the newest event at or before it, unless expired."""
    events: dict[str, list[tuple[int, str]]] = {}
    with events_csv.open() as f:
        for row in csv.DictReader(f):
            events.setdefault(row["driver_id"], []).append((_ms(row["event_timestamp"]), row["conv_rate"]))
    out = []
    with entities_csv.open() as f:
        for row in csv.DictReader(f):
            at = _ms(row["event_timestamp"])
            earlier = [e for e in events.get(row["driver_id"], []) if e[0] <= at]
            newest = max(earlier, default=None)
            value = None if newest is None or at >= newest[0] + ttl_ms else newest[1]
            out.append((row["driver_id"], value))
    return out


def _ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
