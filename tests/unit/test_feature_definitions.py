"""Feature definitions (``kvstore/features/definitions.py``): loading TOML and Python modules, every refusal with a
message that names the problem, the registry's JSON form, and the per-type checks of pushed values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import (
    FEATURE_TYPES,
    MAX_LIST_ITEMS,
    MAX_STRING_BYTES,
    DefinitionError,
    Definitions,
    Entity,
    FeatureView,
    Source,
    check_value,
    load,
)

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

DRIVER = Entity("driver", "driver_id")
STATS = FeatureView("driver_stats", DRIVER, {"trips": "int64", "conv_rate": "float64"}, ttl_ms=60_000)

TOML = """
[entities.driver]
join_key = "driver_id"

[entities.user]
join_key = "user_id"
value_type = "string"
description = "a rider"

[views.driver_stats]
entity = "driver"
ttl_s = 86400
features = { conv_rate = "float64", trips = "int64" }
source = { path = "driver_stats.parquet" }

[views.user_tags]
entity = "user"
ttl_ms = 1500
features = { tags = "string_list", vip = "bool" }
source = { path = "/data/tags.csv", timestamp_column = "ts" }
"""

MODULE = """
from kvstore.features.definitions import Entity, FeatureView, Source

driver = Entity("driver", "driver_id")
stats = FeatureView("driver_stats", driver, {"trips": "int64"}, ttl_ms=5000, source=Source("stats.parquet"))
# A view whose entity is not bound at top level: its entity is collected with it.
tags = FeatureView("tags", Entity("user", "user_id", "string"), {"tags": "string_list"})
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(DefinitionError) as info:
        call(*args, **kwargs)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value.message


def views_doc(**view: Any) -> dict[str, Any]:
    """A definitions document with entity ``driver`` and one view ``v`` built from ``view``."""
    spec = {"entity": "driver", "features": {"trips": "int64"}, **view}
    return {"entities": {"driver": {"join_key": "driver_id"}}, "views": {"v": spec}}


# ---------------------------------------------------------------- loading


def test_toml_file_loads_entities_views_ttl_and_sources_relative_to_the_file(tmp_path: Path) -> None:
    definitions = load(write(tmp_path, "features.toml", TOML))

    assert definitions.entities == {
        "driver": Entity("driver", "driver_id"),
        "user": Entity("user", "user_id", "string", "a rider"),
    }
    stats = definitions.view("driver_stats")
    assert stats.entity == Entity("driver", "driver_id")
    assert stats.features == {"conv_rate": "float64", "trips": "int64"}
    assert stats.ttl_ms == 86_400_000
    assert stats.source == Source(str(tmp_path / "driver_stats.parquet"))
    assert stats.source.format == "parquet"
    tags = definitions.view("user_tags")
    assert tags.ttl_ms == 1500
    assert tags.source == Source("/data/tags.csv", "ts")
    assert tags.source.format == "csv"


def test_python_module_collects_top_level_entities_and_views(tmp_path: Path) -> None:
    definitions = load(write(tmp_path, "features.py", MODULE))

    assert set(definitions.entities) == {"driver", "user"}
    assert definitions.entities["user"] == Entity("user", "user_id", "string")
    assert set(definitions.views) == {"driver_stats", "tags"}
    stats = definitions.view("driver_stats")
    assert stats.ttl_ms == 5000
    assert stats.source == Source(str(tmp_path / "stats.parquet"))


def test_python_module_errors_are_definition_errors_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.py", "import no_such_module_here\n")
    message = refusal(load, path)
    assert str(path) in message and "ModuleNotFoundError" in message

    bad_type = write(tmp_path, "bad_type.py", MODULE.replace('"int64"', '"int32"'))
    assert refusal(load, bad_type).startswith(f"{bad_type}: view 'driver_stats': feature 'trips' has type 'int32'")


def test_python_module_with_two_different_views_of_one_name_is_refused(tmp_path: Path) -> None:
    text = MODULE + 'other = FeatureView("tags", driver, {"x": "bool"})\n'
    message = refusal(load, write(tmp_path, "twice.py", text))
    assert "two different feature views are named 'tags'" in message


def test_unreadable_or_malformed_toml_says_which_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    assert f"cannot read {missing}" in refusal(load, missing)
    broken = write(tmp_path, "broken.toml", "[views.x\n")
    assert str(broken) in refusal(load, broken)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([], "definitions are an object"),
        ({"entities": {}, "tables": {}}, "unknown definitions table 'tables'"),
        ({"entities": []}, "entities: expected a table"),
        ({"entities": {"driver": {}}}, "entities.driver: missing 'join_key'"),
        ({"entities": {"driver": {"join_key": "id", "kind": "x"}}}, "entities.driver: unknown field 'kind'"),
        ({"entities": {"1driver": {"join_key": "id"}}}, "an entity's name must be 1 to 63 letters"),
        ({"entities": {"driver": {"join_key": "driver id"}}}, "entity 'driver''s join_key must be"),
        ({"entities": {"driver": {"join_key": "id", "value_type": "float64"}}}, "value_type 'float64' is not one of"),
        ({"entities": {"driver": {"join_key": "id", "description": 3}}}, "entities.driver: description is a string"),
        (views_doc(entity="rider"), "views.v: entity 'rider' is not defined"),
        (views_doc(entity=["driver"]), "views.v: entity ['driver'] is not defined"),
        (views_doc(features={"trips": "int32"}), "feature 'trips' has type 'int32', not one of"),
        (views_doc(features={}), "view 'v': 1 to 512 features"),
        (views_doc(features=[]), "views.v.features: expected a table"),
        (views_doc(features={"driver_id": "int64"}), "feature 'driver_id' would clash with a column"),
        (views_doc(features={"event_timestamp": "int64"}), "feature 'event_timestamp' would clash"),
        (views_doc(features={"a/b": "int64"}), "view 'v''s feature name must be 1 to 63 letters"),
        (views_doc(ttl_ms=5, ttl_s=5), "views.v: give ttl_ms or ttl_s, not both"),
        (views_doc(ttl_ms=-1), "ttl_ms must be a whole number of milliseconds"),
        (views_doc(ttl_ms=1.5), "ttl_ms must be a whole number of milliseconds"),
        (views_doc(ttl_ms=True), "ttl_ms must be a whole number of milliseconds"),
        (views_doc(ttl_ms=INT64_MAX + 1), "ttl_ms must be a whole number of milliseconds"),
        (views_doc(ttl_s=-1), "views.v: ttl_s must be a number of seconds >= 0"),
        (views_doc(ttl_s="1d"), "views.v: ttl_s must be a number of seconds >= 0"),
        (views_doc(ttl_s=math.nan), "views.v: ttl_s must be a number of seconds >= 0"),
        (views_doc(source="x.parquet"), "views.v.source: expected a table"),
        (views_doc(source={}), "views.v.source: missing 'path'"),
        (views_doc(source={"path": ""}), "views.v.source: path and timestamp_column are strings"),
        (views_doc(source={"path": "x", "timestamp_column": 3}), "path and timestamp_column are strings"),
        (views_doc(source={"path": "x", "format": "csv"}), "views.v.source: unknown field 'format'"),
        (views_doc(description=7), "views.v: description is a string"),
        (views_doc(owner="me"), "views.v: unknown field 'owner'"),
        (views_doc(entity=None, features=None) | {"views": {"v": {}}}, "views.v: missing 'entity'"),
    ],
)
def test_from_json_refuses_with_a_message_naming_the_problem(doc: Any, expected: str) -> None:
    assert expected in refusal(Definitions.from_json, doc)


def test_ttl_s_becomes_whole_milliseconds_rounded_up() -> None:
    definitions = Definitions.from_json(views_doc(ttl_s=1.0005))
    assert definitions.view("v").ttl_ms == 1001


def test_python_constructors_refuse_inconsistent_definitions() -> None:
    other_driver = Entity("driver", "id")
    message = refusal(Definitions, {"driver": DRIVER}, {"s": FeatureView("s", other_driver, {"x": "int64"})})
    assert message == "view 's': entity 'driver' differs from its definition"
    assert "entity 'driver' is not defined" in refusal(Definitions, {}, {"driver_stats": STATS})
    assert "listed under another name, 'stats'" in refusal(Definitions, {"driver": DRIVER}, {"stats": STATS})
    assert "entity must be an Entity" in refusal(FeatureView, "v", "driver", {"x": "int64"})


def test_an_unknown_view_is_not_found_and_the_known_ones_are_listed() -> None:
    definitions = Definitions({"driver": DRIVER}, {"driver_stats": STATS})
    with pytest.raises(KvError) as info:
        definitions.view("drivers")
    assert info.value.code is ErrorCode.NOT_FOUND
    assert info.value.message == "no feature view 'drivers' (views: driver_stats)"


# ---------------------------------------------------------------- the registry's JSON form

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
# Join keys and feature names from disjoint alphabets' first letters, so that a feature never clashes with a column.
join_keys = st.from_regex(r"k[a-z0-9_]{0,8}", fullmatch=True)
feature_names = st.from_regex(r"f[a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def definitions_strategy(draw: st.DrawFn) -> Definitions:
    entities = {
        name: Entity(name, draw(join_keys), draw(st.sampled_from(["int64", "string"])), draw(st.text(max_size=20)))
        for name in draw(st.sets(names, max_size=3))
    }
    views: dict[str, FeatureView] = {}
    if entities:
        for name in draw(st.sets(names, max_size=4)):
            entity = entities[draw(st.sampled_from(sorted(entities)))]
            chosen = draw(st.sets(feature_names, min_size=1, max_size=5))
            features = {f: draw(st.sampled_from(FEATURE_TYPES)) for f in chosen}
            source = draw(st.none() | st.builds(Source, st.sampled_from(["/d/a.parquet", "/d/b.csv"]), names))
            ttl_ms = draw(st.integers(0, INT64_MAX))
            views[name] = FeatureView(name, entity, features, ttl_ms, source, draw(st.text(max_size=20)))
    return Definitions(entities, views)


@given(definitions_strategy())
def test_to_json_from_json_round_trip(definitions: Definitions) -> None:
    doc = definitions.to_json()
    assert Definitions.from_json(doc) == definitions
    assert Definitions.from_json(doc).to_json() == doc


def test_toml_and_json_forms_agree(tmp_path: Path) -> None:
    definitions = load(write(tmp_path, "features.toml", TOML))
    assert Definitions.from_json(definitions.to_json()) == definitions
    # Features are kept sorted, so the order they were declared in does not change the definitions.
    assert list(definitions.view("user_tags").features) == ["tags", "vip"]


# ---------------------------------------------------------------- values per type


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("int64", 0, 0),
        ("int64", INT64_MAX, INT64_MAX),
        ("int64", INT64_MIN, INT64_MIN),
        ("float64", 1.5, 1.5),
        ("float64", 3, 3.0),
        ("float64", -(2**53), -(2.0**53)),
        ("string", "é", "é"),
        ("string", "x" * MAX_STRING_BYTES, "x" * MAX_STRING_BYTES),
        ("bool", True, True),
        ("bool", False, False),
        ("bytes", b"\x00\xff", b"\x00\xff"),
        ("int64_list", [1, -2], [1, -2]),
        ("float64_list", [1, 2.5], [1.0, 2.5]),
        ("string_list", [], []),
        ("string_list", ["a", "b"], ["a", "b"]),
        ("int64_list", [0] * MAX_LIST_ITEMS, [0] * MAX_LIST_ITEMS),
    ],
)
def test_check_value_accepts_and_normalises(kind: str, value: object, expected: object) -> None:
    checked = check_value(kind, value, "f")
    assert checked == expected
    assert type(checked) is type(expected)
    if isinstance(checked, list) and checked:
        assert type(checked[0]) is type(expected[0])  # type: ignore[index]


@pytest.mark.parametrize("kind", FEATURE_TYPES)
def test_none_is_an_explicit_missing_value_of_every_type(kind: str) -> None:
    assert check_value(kind, None, "f") is None


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("int64", INT64_MAX + 1),
        ("int64", INT64_MIN - 1),
        ("int64", True),  # a bool is not an int here
        ("int64", 1.0),
        ("int64", "1"),
        ("float64", True),
        ("float64", "1.5"),
        ("float64", 10**400),  # float() of it would overflow
        ("float64", INT64_MAX + 1),
        ("string", b"x"),
        ("string", "x" * (MAX_STRING_BYTES + 1)),
        ("bool", 1),
        ("bool", "true"),
        ("bytes", "x"),
        ("bytes", bytearray(b"x")),
        ("int64_list", 1),
        ("int64_list", (1, 2)),
        ("int64_list", [1, None]),
        ("int64_list", [1, True]),
        ("float64_list", [1.0, "2"]),
        ("string_list", [["nested"]]),
        ("int64_list", [0] * (MAX_LIST_ITEMS + 1)),
    ],
)
def test_check_value_refuses_with_the_feature_named(kind: str, value: object) -> None:
    message = refusal(check_value, kind, value, "trips")
    assert "feature 'trips'" in message and kind.removesuffix("_list") in message


def test_check_values_wants_every_feature_and_nothing_else() -> None:
    assert STATS.check_values({"trips": 3, "conv_rate": 1}) == {"conv_rate": 1.0, "trips": 3}
    assert STATS.check_values({"trips": None, "conv_rate": None}) == {"conv_rate": None, "trips": None}
    assert refusal(STATS.check_values, {"trips": 3}) == (
        "view 'driver_stats': an event carries every feature; 'conv_rate' is missing"
    )
    assert refusal(STATS.check_values, {"trips": 3, "conv_rate": 1.0, "speed": 2}) == (
        "view 'driver_stats' has no feature 'speed'"
    )
    assert "values are an object" in refusal(STATS.check_values, [3, 1.0])
    # Keys that do not compare with each other (a msgpack body's str and bytes) still get a message.
    assert "has no feature" in refusal(STATS.check_values, {"trips": 3, "conv_rate": 1.0, b"x": 1, 2: 2})


def test_expired_at_exactly_event_time_plus_ttl() -> None:
    assert not STATS.expired(1_000, 60_999)
    assert STATS.expired(1_000, 61_000)
    forever = FeatureView("f", DRIVER, {"x": "int64"})
    assert not forever.expired(0, INT64_MAX)


# ---------------------------------------------------------------- entity ids


def test_key_of_int64_and_string_entities() -> None:
    assert DRIVER.key_of(1001) == "1001"
    assert DRIVER.key_of(-5) == "-5"
    assert DRIVER.value_of(DRIVER.key_of(INT64_MIN)) == INT64_MIN
    bad: object
    for bad in (True, "1001", 1.0, INT64_MAX + 1, None):
        assert refusal(DRIVER.key_of, bad).startswith("driver_id must be an int64")
    user = Entity("user", "user_id", "string")
    assert user.key_of("u-1") == "u-1"
    assert user.value_of("u-1") == "u-1"
    for bad in ("", "a/b", "x" * 257, 7, b"u"):
        assert "user_id must be a string of 1 to 256 characters without '/'" in refusal(user.key_of, bad)
