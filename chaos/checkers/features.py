"""The feature store's three checks (issue 16, part 7), on a ``features`` workload's history and final state.

History shape (``chaos.workloads.FeaturesWorkload``):

- a push: ``f = "push"``, ``value = [{"entity", "event_ts_ms", "values": {feature: value}}, ...]``, completion
  ``ok`` (every merge acknowledged), ``fail`` (definitely none happened) or ``info`` (unknown);
- a read: ``f = "read"``, ``key`` = the entity's key (``Entity.key_of``), completion ``ok`` with ``value =
  {feature: [event_ts_ms, value]}`` (the entity's online row) or ``null`` (no row).

The final state (``FinalRows``, read by ``replica_rows`` from every replica's store after heal and quiet time,
before anything could repair a replica) is ``{store key: {node: row or None}}`` for every key of the feature store
any replica of its partition holds, each replica of that partition listed (None: it holds no row).

The checks, each with its own verdict:

1. ``acked`` (**no acknowledged event lost**): every event of every ``ok`` push is in the event log on every
   replica of its key (``keys.event_key``: the key holds exactly the event's row; merging a row into itself
   changes nothing), and every replica of the entity's online row holds, per feature, a cell at least as new by
   ``(event_ts_ms, packed value)`` as the event's (the row merged with the event is the row). Events of failed
   pushes found in the log are listed (``unexpected``), outside the verdict: an error called definite that was not.
2. ``monotonic`` (**online values never go back in event time for a session**): a session is one client
   process (it runs one op at a time; after an ``info`` op it goes on as a new process, so its reads stay in
   order). Per session, per (entity, feature), the event times its successive ``ok`` reads saw never decrease,
   and a read never finds no row after one that found a cell. Leader and single mode serve linearizable reads
   (``read-index``, the default), which are monotonic. Leaderless mode holds it with reads that repair before
   they answer (``repair = "sync"``: every replica a read asked holds what it returned, and at least ``r`` did),
   ``r`` quorums that intersect (``2r > N``) and strict quorums (``sloppy = false``: a fallback that stood in
   would be a replica the next read need not meet). With async repair, or ``r = 1``, a session's next read may
   ask replicas that never saw what the last one returned. One gap remains with these settings: a sync read
   that runs out of time answers with ``r`` replies merged and its repairs unacknowledged, so a cell only its
   coordinator held may be missed by the session's next read if that one goes to another coordinator (a client
   on a node that holds no replica of the key, whose first replica fell silent).
3. ``recompute`` (**after quiet time the online store equals the batch recompute**): the final event log is the
   events every replica holds (they must agree, key by key, or the log is reported diverged); the recompute of
   an entity's online row is ``merge_rows`` of all its events; every replica of every entity's online row must
   hold exactly that (an online row without events, or events without an online row, differ too).

Each check's JSON says ``valid`` and lists what went wrong (the first ``_SHOWN``; counts are complete).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.history import History, JsonObject
from kvstore.features.definitions import FeatureView
from kvstore.features.keys import (
    EVENTS_PREFIX,
    ONLINE_PREFIX,
    encoded_event,
    event_key,
    event_row,
    online_key,
    parse_event_key,
    parse_online_key,
)
from kvstore.storage.base import Record
from replication import dvv
from replication.event_time import Row, decode_row, merge_rows

# {store key: {node: the replica's row, None when it holds none}}
FinalRows = dict[str, dict[str, Row | None]]
_SHOWN = 50


@dataclass(frozen=True)
class FeaturesFinal:
    """What the checks need apart from the history: the view the workload pushed to, and the replicas' rows."""

    view: FeatureView
    rows: FinalRows


def replica_rows(
    copies: Mapping[tuple[int, str], Iterable[tuple[str, Record]]], replicas: Sequence[Sequence[str]]
) -> FinalRows:
    """Every online and event-log key any replica of its partition holds (``copies``: each replica's copy of
    each partition, all of them), with each replica's decoded row. A leaderless record keeps the key's state
    in its context (one sibling: the row); leader and single mode store the row as the value."""
    held: dict[tuple[int, str], dict[str, Row | None]] = {}
    for (partition, node), copy in copies.items():
        held[(partition, node)] = {
            key: _row_of(record) for key, record in copy if key.startswith((ONLINE_PREFIX, EVENTS_PREFIX))
        }
    rows: FinalRows = {}
    for (partition, _node), keys in held.items():
        for key in keys:
            if key not in rows:
                rows[key] = {n: held.get((partition, n), {}).get(key) for n in replicas[partition]}
    return rows


def _row_of(record: Record) -> Row | None:
    if record.context:
        values = dvv.decode(record.context).values
        row: Row | None = None
        for value in values:
            row = decode_row(value) if row is None else merge_rows(row, decode_row(value))
        return row
    return None if record.value is None else decode_row(record.value)


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class _Pushed:
    entity_key: str
    ts: int
    row: Row
    key: str  # its event-log key


def _plain(value: Any) -> Any:
    """A history value as JSON holds it (a loaded history keeps objects as ``JsonObject``, lists as tuples)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, JsonObject):
        return {k: _plain(v) for k, v in value.items}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _events(view: FeatureView, pushed: Any) -> list[_Pushed]:
    out = []
    for event in _plain(pushed) or []:
        entity_key = view.entity.key_of(event["entity"])
        ts = event["event_ts_ms"]
        values = view.check_values(event["values"])
        out.append(_Pushed(entity_key, ts, event_row(ts, values),
                           event_key(view.name, entity_key, ts, encoded_event(ts, values))))
    return out


def _cells(row: Row) -> dict[str, list[Any]]:
    return {name: [ts, value] for name, (ts, value) in sorted(row.items())}


# ---------------------------------------------------------------- 1. acknowledged events


def check_acked(history: History, final: FeaturesFinal) -> dict[str, Any]:
    view, rows = final.view, final.rows
    lost: list[dict[str, Any]] = []
    behind: list[dict[str, Any]] = []
    acknowledged = 0
    # Event keys only failed pushes carried (an event pushed twice may have failed once and landed once).
    failed_keys: set[str] = set()
    maybe_pushed: set[str] = set()
    for op in history.ops():
        if op.f != "push":
            continue
        pushed = {e.key for e in _events(view, op.invoke.value)}
        (failed_keys if op.type == "fail" else maybe_pushed).update(pushed)
        if op.type != "ok":
            continue
        for event in _events(view, op.value):
            acknowledged += 1
            held = rows.get(event.key)
            missing = sorted(n for n, row in (held or {}).items() if row != event.row)
            if held is None or missing:
                lost.append({"push": op.invoke_index, "entity": event.entity_key, "event_ts_ms": event.ts,
                             "key": event.key, "missing_on": missing or "every replica"})
            on_key = online_key(view.name, event.entity_key)
            online = rows.get(on_key)
            stale = sorted(n for n, row in (online or {}).items() if row is None or merge_rows(row, event.row) != row)
            if online is None or stale:
                behind.append({"push": op.invoke_index, "entity": event.entity_key, "event": _cells(event.row),
                               "behind_on": stale or "every replica (no online row)",
                               "online": {n: None if (r := (online or {}).get(n)) is None else _cells(r)
                                          for n in stale}})
    unexpected = sorted(key for key in failed_keys - maybe_pushed
                        if any(row is not None for row in rows.get(key, {}).values()))
    return {
        "valid": not lost and not behind,
        "acknowledged_events": acknowledged,
        "lost_count": len(lost),
        "lost": lost[:_SHOWN],
        "online_behind_count": len(behind),
        "online_behind": behind[:_SHOWN],
        "unexpected_count": len(unexpected),
        "unexpected": unexpected[:_SHOWN],
    }


# ---------------------------------------------------------------- 2. monotonic sessions


def check_monotonic(history: History) -> dict[str, Any]:
    # Per (session, entity): per feature, the newest event time a read saw and that read's index.
    seen: dict[tuple[Any, str], dict[str, tuple[int, int]]] = {}
    violations: list[dict[str, Any]] = []
    reads = 0
    for op in sorted(history.ops(), key=lambda o: o.invoke_index):
        if op.f != "read" or op.type != "ok":
            continue
        reads += 1
        entity = str(op.key)
        row = _plain(op.value) or {}
        newest = seen.setdefault((op.process, entity), {})
        for feature, (earlier_ts, earlier_read) in newest.items():
            ts = row[feature][0] if feature in row else None
            if ts is None or ts < earlier_ts:
                violations.append({"process": op.process, "entity": entity, "feature": feature,
                                   "earlier_read": earlier_read, "earlier_ts": earlier_ts, "read": op.invoke_index,
                                   "ts": ts})
        for feature, (ts, _value) in row.items():
            if feature not in newest or ts > newest[feature][0]:
                newest[feature] = (ts, op.invoke_index)
    return {"valid": not violations, "reads": reads, "sessions": len({process for process, _ in seen}),
            "violation_count": len(violations), "violations": violations[:_SHOWN]}


# ---------------------------------------------------------------- 3. batch recompute


def check_recompute(final: FeaturesFinal) -> dict[str, Any]:
    view, rows = final.view, final.rows
    log: dict[str, Row] = {}  # per entity key, merge_rows of its events
    log_diverged: list[dict[str, Any]] = []
    online: dict[str, dict[str, Row | None]] = {}
    events = 0
    for key, by_node in sorted(rows.items()):
        if key.startswith(EVENTS_PREFIX):
            name, entity_key, _ts = parse_event_key(key)
            if name != view.name:
                continue
            events += 1
            held = [row for row in by_node.values() if row is not None]
            if len(held) != len(by_node) or any(row != held[0] for row in held):
                log_diverged.append({"key": key, "rows": {n: None if r is None else _cells(r)
                                                          for n, r in sorted(by_node.items())}})
            for row in held:
                log[entity_key] = merge_rows(log.get(entity_key, {}), row)
        elif key.startswith(ONLINE_PREFIX):
            name, entity_key = parse_online_key(key)
            if name == view.name:
                online[entity_key] = by_node
    differ: list[dict[str, Any]] = []
    for entity_key in sorted(set(log) | set(online)):
        expected = log.get(entity_key)
        replicas = online.get(entity_key)
        wrong = sorted(n for n, row in (replicas or {}).items() if row != expected)
        if replicas is None or wrong:
            differ.append({
                "entity": entity_key,
                "recomputed": None if expected is None else _cells(expected),
                "differ_on": wrong or "every replica (no online row)",
                "online": {n: None if (r := (replicas or {}).get(n)) is None else _cells(r) for n in wrong},
            })
    return {
        "valid": not differ and not log_diverged,
        "events": events,
        "entities": len(set(log) | set(online)),
        "online_differs_count": len(differ),
        "online_differs": differ[:_SHOWN],
        "event_log_diverged_count": len(log_diverged),
        "event_log_diverged": log_diverged[:_SHOWN],
    }


CHECKS = {"features-acked", "features-monotonic", "features-recompute"}


def check(name: str, history: History, final: FeaturesFinal | None) -> dict[str, Any]:
    """The named check's JSON verdict; "unknown" for a check of the final state when none was read."""
    if name == "features-monotonic":
        return check_monotonic(history)
    if final is None:
        return {"valid": "unknown", "reason": "no replica's final rows were given to check"}
    if name == "features-acked":
        return check_acked(history, final)
    if name == "features-recompute":
        return check_recompute(final)
    raise ValueError(f"unknown feature store check {name!r}")

