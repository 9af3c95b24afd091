"""Ingestion (``parse_events``, ``push_ops``), online serving (``resolve``) and the registry's codec: the pure parts
the cluster's routes and the in-process replica share."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import Definitions, Entity, FeatureView
from kvstore.features.ingest import MAX_PUSH_EVENTS, Event, parse_events, push_ops
from kvstore.features.keys import encoded_event, event_key, online_key, parse_event_key, parse_online_key
from kvstore.features.registry import EMPTY, Registry, RegistryCache, decode, newest, version_key
from kvstore.features.serving import EXPIRED, MISSING, PRESENT, requested_features, resolve
from replication.event_time import Row, decode_row, merge_rows

DRIVER = Entity("driver", "driver_id")
USER = Entity("user", "user_id", "string")
STATS = FeatureView("stats", DRIVER, {"trips": "int64", "rate": "float64"}, ttl_ms=1000)
TAGS = FeatureView("tags", USER, {"tags": "string_list"})
DEFINITIONS = Definitions({"driver": DRIVER, "user": USER}, {"stats": STATS, "tags": TAGS})


def event(entity: Any, ts: Any, trips: Any, rate: Any = 0.5) -> dict[str, Any]:
    return {"entity": entity, "event_ts_ms": ts, "values": {"trips": trips, "rate": rate}}


def bad_request(view: FeatureView, raw: object) -> KvError:
    with pytest.raises(KvError) as info:
        parse_events(view, raw)
    return info.value


# ---------------------------------------------------------------- parse_events


def test_parse_events_checks_and_normalises_each_event() -> None:
    events = parse_events(
        STATS, [event(7, 100, 3, 1), {"driver_id": 8, "event_ts_ms": 0, "values": {"trips": None, "rate": None}}]
    )
    assert events == [
        Event(7, 100, {"rate": 1.0, "trips": 3}),
        Event(8, 0, {"rate": None, "trips": None}),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "events must be a non-empty list"),
        ([], "events must be a non-empty list"),
        ({"entity": 1}, "events must be a non-empty list"),
        ([event(1, 1, 1), "x"], "events[1]: an event is an object"),
        ([event(1, 1, 1), {**event(2, 1, 1), "ttl": 5}], "events[1]: unknown field 'ttl'"),
        ([{"event_ts_ms": 1, "values": {"trips": 1, "rate": 1.0}}], "events[0]: driver_id must be an int64, got None"),
        ([event("7", 1, 1)], "events[0]: driver_id must be an int64, got '7'"),
        ([event(True, 1, 1)], "events[0]: driver_id must be an int64"),
        ([event(1, 1, 1), event(1, -1, 1)], "events[1]: event_ts_ms must be whole milliseconds since the epoch"),
        ([event(1, 1.5, 1)], "events[0]: event_ts_ms must be whole"),
        ([event(1, 1 << 63, 1)], "events[0]: event_ts_ms must be whole"),
        ([{"entity": 1, "event_ts_ms": 1}], "events[0]: view 'stats': an event's values are an object"),
        ([{"entity": 1, "event_ts_ms": 1, "values": {"trips": 1}}], "events[0]: view 'stats': an event carries every"),
        ([event(1, 1, 1), event(2, 2, "3")], "events[1]: feature 'trips' must be int64, got str '3'"),
        ([event(1, 1, 1, rate=True)], "events[0]: feature 'rate' must be float64, got bool"),
    ],
)
def test_parse_events_refuses_naming_the_event(raw: object, message: str) -> None:
    error = bad_request(STATS, raw)
    assert error.code is ErrorCode.BAD_REQUEST
    assert error.message.startswith(message), error.message


def test_parse_events_refuses_string_ids_that_would_break_keys() -> None:
    error = bad_request(TAGS, [{"entity": "a/b", "event_ts_ms": 1, "values": {"tags": ["x"]}}])
    assert error.message == "events[0]: user_id must be a string of 1 to 256 characters without '/'"


def test_a_push_too_large_is_refused_before_any_event_is_checked() -> None:
    error = bad_request(STATS, [None] * (MAX_PUSH_EVENTS + 1))
    assert error.code is ErrorCode.TOO_LARGE
    assert str(MAX_PUSH_EVENTS) in error.message


def test_parse_events_refuses_fields_of_mixed_key_types_with_a_message() -> None:
    raw: list[dict[Any, Any]] = [{**event(1, 1, 1), b"extra": 1, "other": 2}]
    assert bad_request(STATS, raw).message.startswith("events[0]: unknown field")


# ---------------------------------------------------------------- push_ops


def ops_by_key(view: FeatureView, raw: list[dict[str, Any]]) -> dict[str, Row]:
    ops = push_ops(view, parse_events(view, raw))
    assert all(op.merge for op in ops)
    by_key = {op.key: decode_row(op.value or b"") for op in ops}
    assert len(by_key) == len(ops), "one op per key"
    return by_key


def test_each_event_is_one_log_entry_and_each_entity_one_online_merge() -> None:
    by_key = ops_by_key(STATS, [event(1, 100, 1), event(2, 100, 2)])
    logged = sorted(parse_event_key(k) for k in by_key if k.startswith("__fs/ev/"))
    assert logged == [("stats", "1", 100), ("stats", "2", 100)]
    assert by_key[online_key("stats", "1")] == {"rate": (100, 0.5), "trips": (100, 1)}
    assert by_key[online_key("stats", "2")] == {"rate": (100, 0.5), "trips": (100, 2)}
    assert parse_online_key(online_key("stats", "2")) == ("stats", "2")


def test_duplicated_events_collapse_to_one_write_each() -> None:
    by_key = ops_by_key(STATS, [event(1, 100, 1)] * 3)
    values: dict[str, object] = {"rate": 0.5, "trips": 1}
    row = encoded_event(100, values)
    assert set(by_key) == {event_key("stats", "1", 100, row), online_key("stats", "1")}
    assert by_key[event_key("stats", "1", 100, row)] == {"rate": (100, 0.5), "trips": (100, 1)}


def test_events_of_one_entity_merge_newest_event_time_wins_whatever_the_order() -> None:
    raw = [event(1, 300, 3, None), event(1, 100, 1, 0.1), event(1, 200, 2, 0.2)]
    expected = {"rate": (300, None), "trips": (300, 3)}
    assert ops_by_key(STATS, raw)[online_key("stats", "1")] == expected
    assert ops_by_key(STATS, raw[::-1])[online_key("stats", "1")] == expected
    # Three distinct events: three log entries.
    assert len([k for k in ops_by_key(STATS, raw) if k.startswith("__fs/ev/")]) == 3


def test_two_events_at_one_time_are_two_log_entries_and_the_larger_value_wins_online() -> None:
    by_key = ops_by_key(STATS, [event(1, 100, 5), event(1, 100, 9)])
    assert len([k for k in by_key if k.startswith("__fs/ev/")]) == 2
    assert by_key[online_key("stats", "1")]["trips"] == (100, 9)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.none() | st.integers(-5, 5)), min_size=1))
def test_online_merge_equals_merging_every_event_row(raw: list[tuple[int, int, int | None]]) -> None:
    events = [event(entity, ts, trips) for entity, ts, trips in raw]
    by_key = ops_by_key(STATS, events)
    for entity in {e for e, _, _ in raw}:
        expected: Row = {}
        for e, ts, trips in raw:
            if e == entity:
                expected = merge_rows(expected, {"rate": (ts, 0.5), "trips": (ts, trips)})
        assert by_key[online_key("stats", str(entity))] == expected


# ---------------------------------------------------------------- resolve

NOW = 10_000


def test_resolve_present_missing_and_expired_at_exactly_ts_plus_ttl() -> None:
    rows: list[Row | None] = [
        {"trips": (NOW - 999, 1), "rate": (NOW - 999, 0.5)},  # 999 ms old, ttl 1000: live
        {"trips": (NOW - 1000, 2), "rate": (NOW - 1000, None)},  # exactly ts + ttl: expired
        None,  # never seen
        {"trips": (NOW, None)},  # an explicit missing value, and a feature the row lacks
    ]
    answer = resolve(STATS, [1, 2, 3, 4], ("trips", "rate"), rows, NOW)
    assert answer.values == {"trips": [1, None, None, None], "rate": [0.5, None, None, None]}
    assert answer.status == {
        "trips": [PRESENT, EXPIRED, MISSING, MISSING],
        "rate": [PRESENT, EXPIRED, MISSING, MISSING],
    }
    assert answer.event_ts_ms == {
        "trips": [NOW - 999, NOW - 1000, None, NOW],
        "rate": [NOW - 999, NOW - 1000, None, None],
    }
    assert answer.rows() == [
        {"entity": 1, "trips": 1, "rate": 0.5},
        {"entity": 2, "trips": None, "rate": None},
        {"entity": 3, "trips": None, "rate": None},
        {"entity": 4, "trips": None, "rate": None},
    ]


def test_resolve_with_ttl_zero_never_expires() -> None:
    answer = resolve(TAGS, ["u"], ("tags",), [{"tags": (0, ["a"])}], (1 << 63) - 1)
    assert answer.values == {"tags": [["a"]]}
    assert answer.status == {"tags": [PRESENT]}


def test_resolve_keeps_the_order_and_duplicates_of_the_entities_asked() -> None:
    row: Row = {"trips": (NOW, 7), "rate": (NOW, 1.0)}
    answer = resolve(STATS, [5, 6, 5], ("trips",), [row, None, row], NOW)
    assert answer.entities == [5, 6, 5]
    assert answer.features == ("trips",)
    assert answer.values == {"trips": [7, None, 7]}
    assert answer.to_json()["values"] == {"trips": [7, None, 7]}


def test_requested_features_default_to_all_and_refuse_unknown_ones() -> None:
    assert requested_features(STATS, None) == ("rate", "trips")
    assert requested_features(STATS, ["trips"]) == ("trips",)
    with pytest.raises(ValueError, match="view 'stats' has no feature 'speed'"):
        requested_features(STATS, ["trips", "speed"])


# ---------------------------------------------------------------- the registry


def test_registry_encode_decode_round_trip() -> None:
    registry = Registry(3, DEFINITIONS, 1_700_000_000_000)
    data = registry.encode()
    assert decode(data) == registry
    assert json.loads(data) == registry.to_json()
    assert version_key(3) == "__fs/registry/v/000000000003"


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"version": 1}',
        b'{"version": 0, "applied_at_ms": 1, "definitions": {}}',
        b'{"version": "1", "applied_at_ms": 1, "definitions": {}}',
        b'{"version": 1, "applied_at_ms": 1, "definitions": {"views": {"v": {}}}}',
    ],
)
def test_a_damaged_registry_is_an_internal_error_naming_the_key(data: bytes) -> None:
    with pytest.raises(KvError) as info:
        decode(data)
    assert info.value.code is ErrorCode.INTERNAL
    assert info.value.message.startswith("the feature registry (__fs/registry) is damaged: ")


def test_newest_of_siblings_is_the_highest_version() -> None:
    older = Registry(1, Definitions({"driver": DRIVER}), 5)
    newer = Registry(2, DEFINITIONS, 3)
    assert newest((older.encode(), newer.encode())) == newer
    assert newest((newer.encode(), older.encode())) == newer
    assert newest(()) is EMPTY
    assert EMPTY.version == 0 and not EMPTY.definitions.views


def test_registry_cache_decodes_once_per_distinct_value() -> None:
    cache = RegistryCache()
    first = Registry(1, DEFINITIONS, 1).encode()
    second = Registry(2, DEFINITIONS, 2).encode()
    held = cache.of((first,))
    assert held.version == 1
    assert cache.of((bytes(first),)) is held  # equal bytes: the same decoded registry
    assert cache.of((second,)).version == 2
    assert cache.of((first,)) is not held  # decoded again once the key changed back
    assert cache.of(()) is EMPTY
