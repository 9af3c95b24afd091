"""``kvstore features ...``: the feature store from the command line.

    kvstore features apply features.toml                  # definitions (TOML or a Python module)
    kvstore features push driver_stats events.jsonl       # JSON lines, or a .parquet or .csv file
    kvstore features materialize driver_stats             # the view's offline source, from its watermark on
    kvstore features get driver_stats 1001 1002           # the latest values, with their status
    kvstore features history entities.parquet --features driver_stats:conv_rate --out training.parquet

``kvstore.cli`` adds these commands (``add_features``), handing over its helpers for options and clients, so this
module does not import it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from kvstore.errors import ErrorCode, KvError
from kvstore.features import batch
from kvstore.features.client import FeatureClient
from kvstore.features.definitions import Source, load
from kvstore.features.ingest import MAX_PUSH_EVENTS, Event
from kvstore.features.offline import read_events

Command = Callable[..., Any]
UrlsOf = Callable[[argparse.Namespace], list[str]]

EXIT_OK = 0
# The most bytes of one JSON line of events read from a file or stdin.
MAX_LINE_BYTES = 16 * 1024 * 1024


def add_features(subparsers: Any, command: Command, add_target: Callable[[argparse.ArgumentParser], None],
                 urls_of: UrlsOf) -> None:
    features = subparsers.add_parser(
        "features",
        help="The feature store: apply definitions, push events, materialize, read online, build training data.",
        description="The ML feature store on the cluster (see the README's feature store section).",
        epilog="Examples:\n  kvstore features apply features.toml\n  kvstore features get driver_stats 1001",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = features.add_subparsers(metavar="ACTION")

    def client_of(args: argparse.Namespace) -> FeatureClient:
        return FeatureClient(urls_of(args), timeout_s=args.timeout_ms / 1000)

    sub = command(actions, "apply", "Apply definitions (a .toml file or a Python module) to the cluster; prints the "
                  "registry's version and whether it changed.", ["kvstore features apply features.toml"],
                  lambda args: _apply(client_of(args), args))
    sub.add_argument("file", type=Path)
    add_target(sub)

    sub = command(actions, "registry", "Print the applied definitions (JSON), the current or an older version.",
                  ["kvstore features registry", "kvstore features registry --version 1"],
                  lambda args: _registry(client_of(args), args))
    sub.add_argument("--version", type=int)
    add_target(sub)

    sub = command(actions, "push", "Push events to a view: JSON lines ({\"entity\", \"event_ts_ms\", \"values\"}) from "
                  "a file or stdin (-), or a Parquet or CSV file laid out as the view's offline source. Prints how "
                  "many were pushed. A push is idempotent: run it again after a failure.",
                  ["kvstore features push driver_stats events.jsonl",
                   "kvstore features push driver_stats new_stats.parquet"],
                  lambda args: _push(client_of(args), args))
    sub.add_argument("view")
    sub.add_argument("file", help="a .jsonl, .parquet or .csv file, or - for JSON lines on stdin")
    sub.add_argument("--timestamp-column", default="event_timestamp", help="Parquet/CSV: the event time column")
    sub.add_argument("--batch-size", type=int, default=5000, help=f"events per request (1 to {MAX_PUSH_EVENTS})")
    sub.add_argument("--w", help="leaderless mode: acknowledgements each write waits for")
    sub.add_argument("--replication", help="leader mode: sync, semi-sync or async")
    add_target(sub)

    sub = command(actions, "materialize", "Push a view's offline source from its materialization watermark on "
                  "(incremental), then move the watermark; with a progress bar.",
                  ["kvstore features materialize driver_stats",
                   "kvstore features materialize driver_stats --until-ms 1700000000000",
                   "kvstore features materialize driver_stats --source backfill.parquet --full"],
                  lambda args: _materialize(client_of(args), args))
    sub.add_argument("view")
    sub.add_argument("--source", type=Path, help="a Parquet or CSV file instead of the view's source")
    sub.add_argument("--timestamp-column", default="event_timestamp")
    sub.add_argument("--until-ms", type=int, help="take events up to this event time (default: all)")
    sub.add_argument("--full", action="store_true", help="ignore the watermark: push every event again")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    add_target(sub)

    sub = command(actions, "recompute", "Rebuild a view's online rows from the retained event log.",
                  ["kvstore features recompute driver_stats"], lambda args: _recompute(client_of(args), args))
    sub.add_argument("view")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    add_target(sub)

    sub = command(actions, "get", "Print the latest values of a view's features for entities (TTL enforced: an "
                  "expired value shows as expired).",
                  ["kvstore features get driver_stats 1001 1002", "kvstore features get driver_stats 1001 --json",
                   "kvstore features get driver_stats 1001 --features conv_rate,acc_rate --consistency lease"],
                  lambda args: _get(client_of(args), args))
    sub.add_argument("view")
    sub.add_argument("entities", nargs="+", help="entity ids")
    sub.add_argument("--features", help="comma-separated feature names (default: all)")
    sub.add_argument("--consistency", help="leader mode: how the rows are read")
    sub.add_argument("--r", help="leaderless mode: replies to wait for")
    sub.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    add_target(sub)

    sub = command(actions, "history", "Point-in-time correct training data: for each entity row (the join key and "
                  "a timestamp column), the features' latest values at or before its time, TTL respected; rows with "
                  "no earlier value are kept with nulls. Reads entity rows from Parquet or CSV, writes Parquet (or "
                  "prints CSV without --out).",
                  ["kvstore features history entities.parquet --features driver_stats:conv_rate,driver_stats:trips "
                   "--out training.parquet"], lambda args: _history(client_of(args), args))
    sub.add_argument("entity_rows", type=Path, help="a Parquet or CSV file of entity rows")
    sub.add_argument("--features", required=True, help="comma-separated view:feature references")
    sub.add_argument("--out", type=Path, help="write Parquet here (default: CSV on stdout)")
    sub.add_argument("--timestamp-column", default="event_timestamp")
    sub.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    sub.add_argument("--event-log", type=Path, help="an export to use instead of exporting the log now")
    sub.add_argument("--full-feature-names", action="store_true", help="name columns view__feature")
    add_target(sub)

    sub = command(actions, "export", "Export the event log as Parquet (one directory per view), for DuckDB, Spark "
                  "or any engine.", ["kvstore features export event-log/"],
                  lambda args: _export(client_of(args), args))
    sub.add_argument("out_dir", type=Path)
    sub.add_argument("--view", action="append", help="only this view (repeat for more)")
    add_target(sub)


def _apply(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        definitions = load(args.file)
        doc = fs.apply(definitions)
    views = ", ".join(definitions.views) or "none"
    state = "applied" if doc["changed"] else "unchanged"
    print(f"registry version {doc['version']} ({state}); views: {views}")
    return EXIT_OK


def _registry(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        registry = fs.registry(args.version)
    print(json.dumps(registry.to_json(), indent=2))
    return EXIT_OK


def _push(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        query = {"w": args.w, "replication": args.replication}
        if args.file.endswith((".parquet", ".csv")) or Path(args.file).is_dir():
            view = fs.view(args.view)
            source = Source(args.file, args.timestamp_column)
            pushed = 0
            for chunk in read_events(view, source, chunk_rows=args.batch_size):
                events = [Event(e.entity, e.event_ts_ms, e.values) for e in chunk]
                pushed += fs.push(args.view, events, batch_size=args.batch_size, **query)
        else:
            with _open_text(args.file) as lines:
                pushed = fs.push(args.view, _json_lines(lines), batch_size=args.batch_size, **query)
    print(f"pushed {pushed} events to {args.view}")
    return EXIT_OK


def _open_text(name: str) -> IO[str]:
    if name == "-":
        return sys.stdin
    return Path(name).open(encoding="utf-8")


def _json_lines(lines: IO[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES:
            raise KvError(ErrorCode.TOO_LARGE, f"line {number} is over {MAX_LINE_BYTES} bytes")
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"line {number} is not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise KvError(ErrorCode.BAD_REQUEST, f"line {number}: an event is a JSON object")
        yield event


def _materialize(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        source = None if args.source is None else Source(str(args.source), args.timestamp_column)
        done = batch.materialize(fs, args.view, source=source, until_ms=args.until_ms, full=args.full,
                                 progress=not args.quiet)
    print(f"materialized {done.events} events of {done.view}; watermark {done.watermark_before_ms} -> "
          f"{done.watermark_after_ms}")
    return EXIT_OK


def _recompute(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        pushed = batch.recompute(fs, args.view, progress=not args.quiet)
    print(f"recomputed {args.view}'s online rows from {pushed} events")
    return EXIT_OK


def _get(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        view = fs.view(args.view)
        entities = [view.entity.value_of(text) if view.entity.value_type == "int64" and _is_int(text) else text
                    for text in args.entities]
        names = None if args.features is None else [n.strip() for n in args.features.split(",") if n.strip()]
        answer = fs.get_online_features(args.view, entities, names, consistency=args.consistency, r=args.r)
    if args.json:
        print(json.dumps(answer.to_json(), indent=2, default=_json_default))
        return EXIT_OK
    for i, entity in enumerate(answer.entities):
        cells = []
        for name in answer.features:
            status = answer.status[name][i]
            shown = json.dumps(answer.values[name][i], default=_json_default) if status == "present" else status
            cells.append(f"{name}={shown}")
        print(f"{view.entity.join_key}={entity}  " + "  ".join(cells))
    return EXIT_OK


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _json_default(value: object) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _history(fs: FeatureClient, args: argparse.Namespace) -> int:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path: Path = args.entity_rows
    if not path.exists():
        raise KvError(ErrorCode.NOT_FOUND, f"{path} does not exist")
    rows = pa_csv.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path)
    features = [ref.strip() for ref in args.features.split(",") if ref.strip()]
    with fs:
        table = batch.historical_features(fs, rows, features, event_log_dir=args.event_log,
                                          timestamp_column=args.timestamp_column, engine=args.engine,
                                          full_feature_names=args.full_feature_names)
    if args.out is not None:
        pq.write_table(table, args.out)
        print(f"wrote {table.num_rows} rows x {table.num_columns} columns to {args.out}")
    else:
        pa_csv.write_csv(table, sys.stdout.buffer)
    return EXIT_OK


def _export(fs: FeatureClient, args: argparse.Namespace) -> int:
    with fs:
        files = batch.export_event_log(fs, args.out_dir, args.view)
    for view, paths in sorted(files.items()):
        print(f"{view}: {len(paths)} file(s) in {args.out_dir / view}")
    return EXIT_OK
