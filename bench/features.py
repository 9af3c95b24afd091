"""The feature store against Feast, on the same data in the same run (issue 16's benchmark).

    python bench/features.py [--quick] [--json] [--no-feast] [--tmp-dir DIR]

1. ``feature_data.write_dataset`` writes the shared dataset into a temporary directory: entity ``driver``, view
   ``driver_stats`` (5 features, TTL 7 days), 100,000 events of 10,000 drivers over 30 days, 10,000 training
   entity rows, as Parquet, and the definitions as kvstore TOML.
2. Feast's side (``feast_side.py``) runs in Feast's own virtualenv (``feast_env.py`` creates it once: Feast
   0.67, SQLite online store, DuckDB offline store): ``get_online_features`` in process and over ``feast serve``
   (1 x 5 and 100 x 5 entities x features, p50/p99), historical retrieval of the 10,000 entity rows (median of 3)
   and pandas ``merge_asof`` of the same join there. Without Feast (it cannot be installed, or ``--no-feast``)
   the report says why and shows kvstore's figures alone.
3. kvstore's side, ``measure_kvstore``, in this process, with the same figure names (``FIGURES``).

The table gives each figure's absolute value on both sides and Feast / kvstore (how many times faster kvstore
is), then the issue's targets for the figures measured. Prints the report, then one JSON line (``--json``:
the JSON line only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import feature_data as fd
import feature_kvstore
import pandas as pd
from feast_env import run_feast
from report_format import filesystem_of, rounded

REFERENCE_RUNS = 3


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str


FIGURES = (
    Figure("in_process_1x5_p50_ms", "online in-process 1x5 p50", "ms"),
    Figure("in_process_1x5_p99_ms", "online in-process 1x5 p99", "ms"),
    Figure("in_process_100x5_p50_ms", "online in-process 100x5 p50", "ms"),
    Figure("in_process_100x5_p99_ms", "online in-process 100x5 p99", "ms"),
    Figure("http_1x5_p50_ms", "online HTTP 1x5 p50", "ms"),
    Figure("http_1x5_p99_ms", "online HTTP 1x5 p99", "ms"),
    Figure("http_100x5_p50_ms", "online HTTP 100x5 p50", "ms"),
    Figure("http_100x5_p99_ms", "online HTTP 100x5 p99", "ms"),
    Figure("historical_s", "historical 10k x 100k", "s"),
    Figure("merge_asof_s", "pandas merge_asof, same join", "s"),
)


@dataclass(frozen=True)
class Target:
    text: str
    key: str
    limit_ms_or_s: float | None = None  # an absolute bound on kvstore's figure
    feast_key: str | None = None  # kvstore's figure below Feast's figure of this key
    reference_factor: float | None = None  # kvstore's figure within this factor of its own merge_asof


TARGETS = (
    Target("in-process 1x5 p50 under 10 us", "in_process_1x5_p50_ms", limit_ms_or_s=0.010),
    Target("in-process 100x5 p50 under 100 us", "in_process_100x5_p50_ms", limit_ms_or_s=0.100),
    Target("HTTP 100x5 p50 under 1 ms", "http_100x5_p50_ms", limit_ms_or_s=1.0),
    Target("historical faster than Feast with DuckDB", "historical_s", feast_key="historical_s"),
    Target("historical within 2x of pandas merge_asof", "historical_s", reference_factor=2.0),
)


def feast_figures(doc: dict[str, Any]) -> dict[str, float]:
    """Feast side's JSON document as figures named as in ``FIGURES``."""
    figures: dict[str, float] = {}
    for path, prefix in (("online_in_process", "in_process"), ("online_http", "http")):
        for shape, stats in doc[path].items():
            figures[f"{prefix}_{shape}_p50_ms"] = stats["p50_ms"]
            figures[f"{prefix}_{shape}_p99_ms"] = stats["p99_ms"]
    figures["historical_s"] = doc["historical"]["feast_s"]
    figures["merge_asof_s"] = doc["historical"]["merge_asof_s"]
    return figures


def measure_kvstore(data_dir: Path, effort: feature_kvstore.Effort, reference_runs: int) -> dict[str, float]:
    """kvstore's figures on the dataset in ``data_dir``, named as in ``FIGURES`` (``bench/feature_kvstore.py``),
    with the pandas ``merge_asof`` reference measured in this process, the bound the historical target is set
    against."""
    entity_ids = list(range(fd.FIRST_DRIVER_ID, fd.FIRST_DRIVER_ID + 100))
    figures = feature_kvstore.measure_kvstore(
        data_dir / fd.DEFINITIONS_FILE,
        fd.VIEW,
        data_dir / fd.FEATURES_FILE,
        data_dir / fd.ENTITY_ROWS_FILE,
        entity_ids,
        effort,
    )
    features = pd.read_parquet(data_dir / fd.FEATURES_FILE)
    entity_rows = pd.read_parquet(data_dir / fd.ENTITY_ROWS_FILE)
    durations = []
    for _ in range(reference_runs):
        started = time.perf_counter()
        fd.point_in_time_reference(features, entity_rows)
        durations.append(time.perf_counter() - started)
    figures["merge_asof_s"] = statistics.median(durations)
    return figures


def comparison(feast: dict[str, float], kvstore: dict[str, float]) -> list[dict[str, Any]]:
    """One row per figure either side measured: both values and Feast / kvstore (None where one is missing);
    kvstore figures outside ``FIGURES`` come last, without a Feast value."""
    known = {f.key for f in FIGURES}
    figures = [*FIGURES, *(Figure(k, k, "") for k in kvstore if k not in known)]
    rows = []
    for figure in figures:
        theirs, ours = feast.get(figure.key), kvstore.get(figure.key)
        if theirs is None and ours is None:
            continue
        speedup = theirs / ours if theirs is not None and ours else None
        rows.append({**vars(figure), "feast": theirs, "kvstore": ours, "feast_over_kvstore": speedup})
    return rows


def verdicts(feast: dict[str, float], kvstore: dict[str, float]) -> list[dict[str, Any]]:
    """The issue's targets whose figures were measured, met or not."""
    out = []
    for target in TARGETS:
        ours = kvstore.get(target.key)
        if ours is None:
            continue
        if target.limit_ms_or_s is not None:
            bound = target.limit_ms_or_s
        elif target.feast_key is not None and target.feast_key in feast:
            bound = feast[target.feast_key]
        elif target.reference_factor is not None and "merge_asof_s" in kvstore:
            bound = target.reference_factor * kvstore["merge_asof_s"]
        else:
            continue
        out.append({"target": target.text, "kvstore": ours, "bound": bound, "met": ours < bound})
    return out


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} us" if unit == "ms" and value < 0.1 else f"{value:.3g} {unit}".strip()


def render(report: dict[str, Any]) -> str:
    feast = report["feast"]
    if feast is None:
        feast_line = f"Feast: skipped ({report['feast_skipped']})"
    else:
        check = feast["historical"]["check"]
        feast_line = (
            f"Feast {feast['feast_version']} (pandas {feast['pandas_version']}): local provider, "
            f"{feast['online_store']} online store, {feast['offline_store']} offline store; "
            f"apply {feast['apply_s']:.2f} s, materialize {feast['materialize_s']:.2f} s; "
            f"its training rows agree with merge_asof on {check['rows_agreeing']:,} of {check['entity_rows']:,} "
            f"({check['rows_missing']} missing)"
        )
        ttl = feast["online_ttl_check"]
        feast_line += (
            f"\nFeast online TTL: served {ttl['values_served']:,} of {ttl['values']:,} values (100 drivers) although "
            f"the newest event is {ttl['newest_event_age_s'] / 86_400:.0f} days old and the TTL "
            f"{ttl['ttl_s'] / 86_400:g} days"
        )
    s = report["dataset"]
    lines = [
        f"Feature store vs Feast: {s['feature_rows']:,} events of {s['drivers']:,} drivers, 5 features, "
        f"{s['entity_rows']:,} entity rows (seed {s['seed']}){' --quick' if report['quick'] else ''} "
        f"({report['cpu_count']} CPUs, load {report['load_average_1m']:.1f}, Python {report['python']}, "
        f"data on {report['data_filesystem']})",
        feast_line,
        "",
        f"{'figure':<30} {'Feast':>10} {'kvstore':>10} {'Feast/kvstore':>14}",
    ]
    for row in report["comparison"]:
        ratio = "-" if row["feast_over_kvstore"] is None else f"{row['feast_over_kvstore']:.2f}x"
        lines.append(
            f"{row['label']:<30} {_cell(row['feast'], row['unit']):>10} {_cell(row['kvstore'], row['unit']):>10} "
            f"{ratio:>14}"
        )
    if set(report["kvstore"]) <= {"merge_asof_s"}:
        lines += ["", "kvstore's feature store is not measured yet: only the merge_asof reference on its side."]
    lines += [f"target: {v['target']}: {'MET' if v['met'] else 'NOT MET'}" for v in report["targets"]]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    # --smoke: a small dataset and short runs, for the test that the bench works (figures mean nothing).
    shape = fd.DatasetShape(2_000, 500, 500) if args.smoke else fd.DatasetShape()
    if args.smoke:
        effort, reference_runs = feature_kvstore.Effort(200, 0.5, 1), 1
    elif args.quick:
        effort, reference_runs = feature_kvstore.Effort(2_000, 3.0, 3), 1
    else:
        effort, reference_runs = feature_kvstore.Effort(), REFERENCE_RUNS
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-features-", dir=args.tmp_dir) as tmp:
        data_dir = Path(tmp)
        fd.write_dataset(data_dir, shape)
        if args.no_feast:
            feast_doc, reason = None, "--no-feast"
        else:
            feast_doc, reason = run_feast(data_dir, args.quick)
        kvstore = measure_kvstore(data_dir, effort, reference_runs)
        data_filesystem = filesystem_of(data_dir)
    feast = {} if feast_doc is None else feast_figures(feast_doc)
    report: dict[str, Any] = rounded(
        {
            "bench": "features",
            "quick": args.quick,
            "smoke": args.smoke,
            "dataset": vars(shape),
            "cpu_count": os.cpu_count(),
            # The machine is shared: the load around the run says how much the figures can be trusted.
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "data_filesystem": data_filesystem,
            "feast": feast_doc,
            "feast_skipped": None if feast_doc is not None else reason,
            "kvstore": kvstore,
            "comparison": comparison(feast, kvstore),
            "targets": verdicts(feast, kvstore),
        }
    )
    return report


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and one historical run per side")
    parser.add_argument("--smoke", action="store_true", help="a small dataset and short runs (to test the bench)")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    parser.add_argument("--no-feast", action="store_true", help="measure kvstore alone")
    parser.add_argument("--tmp-dir", help="where the temporary directory with the dataset goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    report = run_bench(args)
    if report["feast"] is None:
        print(f"Feast comparison skipped: {report['feast_skipped']}", file=sys.stderr)
    if not args.json:
        print(render(report))
        print()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
