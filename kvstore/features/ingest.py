"""Ingestion: pushed events as the writes that store them (the speed layer's path, and the batch layer's).

Each event (entity id, event time, a value for every feature of its view) becomes two merges
(``PutOp(merge=True)``): its row in the retained event log (``keys.event_key``: a duplicated event is the same key
and the same row) and into the entity's online row, where per feature the newest event time wins whatever order
events arrive in (``replication.event_time``). Events of one push for the same entity are merged into one online
write first, which is the same join the store would make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import DefinitionError, FeatureView
from kvstore.features.keys import encoded_event, event_key, event_row, online_key
from kvstore.messages import PutOp
from replication.event_time import Row, encode_row, merge_rows

# Events one push may carry.
MAX_PUSH_EVENTS = 10_000
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Event:
    entity: int | str
    event_ts_ms: int
    values: dict[str, Any]


def parse_events(view: FeatureView, raw: object) -> list[Event]:
    """The events of a push body's ``events`` list, checked against ``view``; KvError (400) naming the first bad
    one (``events[i]``)."""
    if not isinstance(raw, list) or not raw:
        raise KvError(ErrorCode.BAD_REQUEST, "events must be a non-empty list")
    if len(raw) > MAX_PUSH_EVENTS:
        raise KvError(ErrorCode.TOO_LARGE, f"a push holds at most {MAX_PUSH_EVENTS} events, this one {len(raw)}")
    events = []
    join_key = view.entity.join_key
    for index, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise DefinitionError("an event is an object")
            # Sorted as text: msgpack may give bytes and str names side by side, which do not compare.
            unknown = sorted((set(item) - {join_key, "entity", "event_ts_ms", "values"}), key=repr)
            if unknown:
                raise DefinitionError(f"unknown field {unknown[0]!r:.60} (expected entity, event_ts_ms, values)")
            if "entity" in item and join_key in item:
                # Two ids for one event: whichever were taken, the other would be silently dropped.
                raise DefinitionError(f"give entity or {join_key}, not both")
            entity = item.get("entity", item.get(join_key))
            view.entity.key_of(entity)
            ts = item.get("event_ts_ms")
            if type(ts) is not int or not 0 <= ts <= _INT64_MAX:
                raise DefinitionError("event_ts_ms must be whole milliseconds since the epoch, >= 0")
            values = view.check_values(item.get("values"))
            # Strings must be UTF-8 to be stored (a JSON "\ud800" escape is a lone surrogate, which cannot be).
            encoded_event(ts, {**values, join_key: entity})
            events.append(Event(entity, ts, values))  # type: ignore[arg-type]
        except UnicodeEncodeError:
            message = f"events[{index}]: a string is not valid UTF-8 (it holds a lone surrogate)"
            raise KvError(ErrorCode.BAD_REQUEST, message) from None
        except KvError as exc:
            raise KvError(exc.code, f"events[{index}]: {exc.message}") from None
    return events


def push_ops(view: FeatureView, events: Sequence[Event], *, replication: str = "", w: str = "") -> list[PutOp]:
    """The merges that store ``events``: one per distinct event in the log, one per entity's online row, each with
    the write settings given (``replication`` in leader mode, ``w`` in leaderless mode)."""
    ops: dict[str, PutOp] = {}
    online: dict[str, Row] = {}
    for event in events:
        entity_key = view.entity.key_of(event.entity)
        fresh = event_row(event.event_ts_ms, event.values)
        row = encode_row(fresh)
        key = event_key(view.name, entity_key, event.event_ts_ms, row)
        ops[key] = PutOp(key, row, None, replication, w, merge=True)
        held = online.get(entity_key)
        online[entity_key] = fresh if held is None else merge_rows(held, fresh)
    for entity_key, merged in online.items():
        key = online_key(view.name, entity_key)
        ops[key] = PutOp(key, encode_row(merged), None, replication, w, merge=True)
    return list(ops.values())
