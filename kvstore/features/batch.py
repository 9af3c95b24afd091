"""The batch layer and training data, over a cluster: materialization, recompute, export, point-in-time joins.

- ``materialize``: reads a view's offline source (Parquet or CSV, ``offline.py``) in bounded chunks, with a progress
  bar, and pushes its events (into the event log and the online rows, as any push). It is *incremental*: it takes
  only events after the view's materialization watermark (``__fs/wm/<view>``) up to ``until_ms`` (default: the
  newest in the source), then moves the watermark there; the next run covers only what came after. Events the
  source receives later with older times are the speed layer's (push) to deliver; ``full=True`` ignores the
  watermark and pushes everything again, which changes nothing already there (a push is idempotent).
- ``recompute``: rebuilds a view's online rows from the retained event log, by pushing its events again (the
  online row of each entity becomes the join of all its events; event-log keys are unchanged).
- ``export_event_log``: the event log as Parquet files, one directory per view (``event_log.py``), for DuckDB,
  Spark or any engine.
- ``historical_features``: point-in-time correct training data (``training.py``) from an export (made on the fly
  when no directory is given).
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import Definitions, Source
from kvstore.features.event_log import write_event_log
from kvstore.features.ingest import Event
from kvstore.features.keys import EVENTS_PREFIX, events_prefix, parse_event_key
from kvstore.features.offline import read_events
from kvstore.features.training import historical_features as join_point_in_time
from replication.event_time import decode_row

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from kvstore.features.client import FeatureClient

# A scan page as large as a node serves (limits.max_scan_limit): an export is one round trip per this many events.
SCAN_PAGE_KEYS = 10_000


@dataclass(frozen=True)
class Materialized:
    view: str
    events: int
    # The watermark before and after the run (None: none before; after: unchanged when nothing was pushed).
    watermark_before_ms: int | None
    watermark_after_ms: int | None


def watermark(fs: FeatureClient, view: str) -> int | None:
    doc = fs.client.call("GET", f"/features/watermarks/{view}", idempotent=True)
    value: int | None = doc["watermark_ms"]
    return value


def materialize(
    fs: FeatureClient,
    view_name: str,
    *,
    source: Source | None = None,
    until_ms: int | None = None,
    full: bool = False,
    progress: bool = True,
    chunk_rows: int = 10_000,
) -> Materialized:
    view = fs.view(view_name)
    source = source or view.source
    if source is None:
        raise KvError(ErrorCode.BAD_REQUEST, f"view {view_name!r} has no offline source: give one")
    before = watermark(fs, view_name)
    after_ms = None if full else before
    pushed = 0
    newest: int | None = None
    with tqdm(desc=f"materialize {view_name}", unit="event", disable=not progress) as bar:
        for chunk in read_events(view, source, chunk_rows=chunk_rows, after_ms=after_ms, until_ms=until_ms):
            events = [Event(e.entity, e.event_ts_ms, e.values) for e in chunk]
            pushed += fs.push(view_name, events, batch_size=min(len(events), 5000) or 1)
            newest = max([newest or 0, *(e.event_ts_ms for e in chunk)])
            bar.update(len(chunk))
    mark = until_ms if until_ms is not None else newest
    if mark is not None and (before is None or mark > before):
        fs.client.call("PUT", f"/features/watermarks/{view_name}", {"watermark_ms": mark})
    return Materialized(view_name, pushed, before, watermark(fs, view_name))


def event_log_items(fs: FeatureClient, prefix: str = EVENTS_PREFIX) -> Iterator[tuple[str, bytes]]:
    """Every event-log key under ``prefix`` and its row, in key order: in pages of ``SCAN_PAGE_KEYS``, or of the
    node's own maximum when it was configured lower (its refusal names it)."""
    page_keys = SCAN_PAGE_KEYS
    try:
        pages = fs.client.scan_pages(prefix, page_size=page_keys)
        first = next(pages, None)
    except KvError as exc:
        bound = re.search(r"scan limit must be 1\.\.(\d+)", exc.message)
        if exc.code is not ErrorCode.BAD_REQUEST or bound is None:
            raise
        pages = fs.client.scan_pages(prefix, page_size=int(bound.group(1)))
        first = next(pages, None)
    for page in itertools.chain([] if first is None else [first], pages):
        for item in page.items:
            yield item.key, item.value


def recompute(fs: FeatureClient, view_name: str, *, progress: bool = True, batch_size: int = 5000) -> int:
    """Push every event of ``view_name``'s log again; the number of events."""
    view = fs.view(view_name)

    def events() -> Iterator[Event]:
        for key, value in event_log_items(fs, events_prefix(view_name)):
            _, entity, event_ts_ms = parse_event_key(key)
            row = decode_row(value, merged=True)
            yield Event(view.entity.value_of(entity), event_ts_ms, {name: cell[1] for name, cell in row.items()})

    with tqdm(desc=f"recompute {view_name}", unit="event", disable=not progress) as bar:
        pushed = 0
        batch: list[Event] = []
        for event in events():
            batch.append(event)
            if len(batch) == batch_size:
                pushed += fs.push(view_name, batch, batch_size=batch_size)
                bar.update(len(batch))
                batch = []
        if batch:
            pushed += fs.push(view_name, batch, batch_size=batch_size)
            bar.update(len(batch))
    return pushed


def export_event_log(
    fs: FeatureClient, out_dir: Path, views: Sequence[str] | None = None, definitions: Definitions | None = None
) -> dict[str, list[Path]]:
    """The event log of ``views`` (default: every view) as Parquet under ``out_dir/<view>/``."""
    definitions = definitions or fs.registry().definitions
    names = list(definitions.views) if views is None else list(views)
    for name in names:
        definitions.view(name)
    files: dict[str, list[Path]] = {}
    for name in names:
        files.update(write_event_log(event_log_items(fs, events_prefix(name)), definitions, out_dir))
    return files


def historical_features(
    fs: FeatureClient,
    entity_rows: pandas.DataFrame | pyarrow.Table,
    features: Sequence[str],
    *,
    event_log_dir: Path | None = None,
    timestamp_column: str = "event_timestamp",
    engine: str = "duckdb",
    full_feature_names: bool = False,
) -> pyarrow.Table:
    """Point-in-time correct values of ``features`` (``"view:feature"``) for each entity row."""
    definitions = fs.registry().definitions
    views = sorted({ref.partition(":")[0] for ref in features})
    options: dict[str, Any] = {
        "timestamp_column": timestamp_column,
        "engine": engine,
        "full_feature_names": full_feature_names,
    }
    if event_log_dir is not None:
        return join_point_in_time(entity_rows, features, definitions, event_log_dir, **options)
    with tempfile.TemporaryDirectory(prefix="kvstore-event-log-") as tmp:
        export_event_log(fs, Path(tmp), views, definitions)
        return join_point_in_time(entity_rows, features, definitions, Path(tmp), **options)
