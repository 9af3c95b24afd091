"""Feature definitions: entities and feature views, declared in a TOML file or a Python module.

An *entity* names what features describe (a driver, a user) and its join key: the column that holds its id in
pushed events, offline sources and training entity rows. A *feature view* groups typed features of one entity
that arrive together (an event carries every feature of its view), with a TTL (a value older than it, by event
time, is served as missing, online and in training data) and optionally an offline source (Parquet or CSV).

TOML::

    [entities.driver]
    join_key = "driver_id"        # the id column
    value_type = "int64"          # "int64" (default) or "string"

    [views.driver_stats]
    entity = "driver"
    ttl_s = 86400                 # or ttl_ms; 0 (the default): values never expire
    features = { conv_rate = "float64", acc_rate = "float64", trips = "int64" }
    source = { path = "driver_stats.parquet", timestamp_column = "event_timestamp" }

Python: a module that defines ``Entity`` and ``FeatureView`` objects at top level (``load`` collects them).

``Definitions.to_json``/``from_json`` are the canonical form the cluster's registry keeps (``registry.py``).
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.errors import ErrorCode, KvError

FEATURE_TYPES = ("int64", "float64", "string", "bool", "bytes", "int64_list", "float64_list", "string_list")
ENTITY_TYPES = ("int64", "string")
# Names become parts of keys and column names: letters, digits, "_" and "-", starting with a letter.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,62}\Z")
# Columns the training output adds beside the features.
RESERVED_COLUMNS = ("event_timestamp",)
MAX_FEATURES = 512
MAX_STRING_BYTES = 64 * 1024
MAX_LIST_ITEMS = 4096
MAX_ENTITY_CHARS = 256
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class DefinitionError(KvError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


@dataclass(frozen=True)
class Entity:
    name: str
    join_key: str
    value_type: str = "int64"
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "an entity's name")
        _check_name(self.join_key, f"entity {self.name!r}'s join_key")
        if self.value_type not in ENTITY_TYPES:
            raise DefinitionError(f"entity {self.name!r}: value_type {self.value_type!r} is not one of {ENTITY_TYPES}")

    def key_of(self, value: object) -> str:
        """The entity id ``value`` as the string keys hold; DefinitionError if it is not of the entity's type."""
        if self.value_type == "int64":
            if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
                raise DefinitionError(f"{self.join_key} must be an int64, got {value!r:.60}")
            return str(value)
        if type(value) is not str or not value or len(value) > MAX_ENTITY_CHARS or "/" in value:
            raise DefinitionError(f"{self.join_key} must be a string of 1 to {MAX_ENTITY_CHARS} characters without '/'")
        return value

    def value_of(self, key: str) -> int | str:
        return int(key) if self.value_type == "int64" else key


@dataclass(frozen=True)
class Source:
    """An offline source: a Parquet or CSV file (or a directory of Parquet files) of events, one row each, with
    the join key, the event time and the features as columns."""

    path: str
    timestamp_column: str = "event_timestamp"

    @property
    def format(self) -> str:
        return "csv" if self.path.lower().endswith(".csv") else "parquet"


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: Entity
    features: Mapping[str, str]
    ttl_ms: int = 0
    source: Source | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "a feature view's name")
        if not isinstance(self.entity, Entity):
            raise DefinitionError(f"view {self.name!r}: entity must be an Entity")
        if not self.features or len(self.features) > MAX_FEATURES:
            raise DefinitionError(f"view {self.name!r}: 1 to {MAX_FEATURES} features")
        for name, kind in self.features.items():
            _check_name(name, f"view {self.name!r}'s feature name")
            if name == self.entity.join_key or name in RESERVED_COLUMNS:
                raise DefinitionError(f"view {self.name!r}: feature {name!r} would clash with a column of that name")
            if kind not in FEATURE_TYPES:
                raise DefinitionError(
                    f"view {self.name!r}: feature {name!r} has type {kind!r}, not one of {FEATURE_TYPES}"
                )
        if type(self.ttl_ms) is not int or not 0 <= self.ttl_ms <= _INT64_MAX:
            message = f"ttl_ms must be a whole number of milliseconds, 0 to {_INT64_MAX}"
            raise DefinitionError(f"view {self.name!r}: {message}")
        # A plain dict, sorted, so equal views compare (and encode) equal.
        object.__setattr__(self, "features", dict(sorted(self.features.items())))

    def check_values(self, values: object) -> dict[str, Any]:
        """``values`` (feature name -> value) checked against the view's types: every feature present (None is an
        explicit missing value), nothing else. DefinitionError names the first problem."""
        if not isinstance(values, dict):
            raise DefinitionError(f"view {self.name!r}: an event's values are an object of feature: value")
        # Sorted by repr: a msgpack body's keys may mix str and bytes, which do not compare.
        unknown = sorted(set(values) - set(self.features), key=repr)
        if unknown:
            raise DefinitionError(f"view {self.name!r} has no feature {unknown[0]!r:.80}")
        checked: dict[str, Any] = {}
        for name, kind in self.features.items():
            if name not in values:
                raise DefinitionError(f"view {self.name!r}: an event carries every feature; {name!r} is missing")
            checked[name] = check_value(kind, values[name], name)
        return checked

    def expired(self, event_ts_ms: int, now_ms: int) -> bool:
        return self.ttl_ms > 0 and now_ms >= event_ts_ms + self.ttl_ms


def check_value(kind: str, value: object, name: str) -> Any:
    """``value`` as feature type ``kind`` holds it (an int is accepted as a float64); DefinitionError if not."""
    if value is None:
        return None
    if kind.endswith("_list"):
        if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
            raise DefinitionError(f"feature {name!r} is a {kind} of at most {MAX_LIST_ITEMS} items")
        scalar = kind[: -len("_list")]
        return [_check_scalar(scalar, item, name) for item in value]
    return _check_scalar(kind, value, name)


def _check_scalar(kind: str, value: object, name: str) -> Any:
    if kind == "int64" and type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return value
    if kind == "float64" and type(value) is float:
        return value
    if kind == "float64" and type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        # Bounded like an int64: float() of a huge int raises OverflowError, which is no message for a client.
        return float(value)
    if kind == "string" and type(value) is str and len(value) <= MAX_STRING_BYTES:
        return value
    if kind == "bool" and type(value) is bool:
        return value
    if kind == "bytes" and type(value) is bytes and len(value) <= MAX_STRING_BYTES:
        return value
    raise DefinitionError(f"feature {name!r} must be {kind}, got {type(value).__name__} {value!r:.40}")


@dataclass(frozen=True)
class Definitions:
    entities: Mapping[str, Entity] = field(default_factory=dict)
    views: Mapping[str, FeatureView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, table in (("entity", self.entities), ("view", self.views)):
            for name, item in table.items():
                if name != item.name:
                    raise DefinitionError(f"{what} {item.name!r} is listed under another name, {name!r:.80}")
        for view in self.views.values():
            known = self.entities.get(view.entity.name)
            if known is None:
                raise DefinitionError(f"view {view.name!r}: entity {view.entity.name!r} is not defined")
            if known != view.entity:
                raise DefinitionError(f"view {view.name!r}: entity {view.entity.name!r} differs from its definition")
        object.__setattr__(self, "entities", dict(sorted(self.entities.items())))
        object.__setattr__(self, "views", dict(sorted(self.views.items())))

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            known = ", ".join(self.views) or "none"
            raise KvError(ErrorCode.NOT_FOUND, f"no feature view {name!r:.80} (views: {known:.200})") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "entities": {
                e.name: {"join_key": e.join_key, "value_type": e.value_type, "description": e.description}
                for e in self.entities.values()
            },
            "views": {
                v.name: {
                    "entity": v.entity.name,
                    "features": dict(v.features),
                    "ttl_ms": v.ttl_ms,
                    "description": v.description,
                    **(
                        {"source": {"path": v.source.path, "timestamp_column": v.source.timestamp_column}}
                        if v.source is not None
                        else {}
                    ),
                }
                for v in self.views.values()
            },
        }

    @staticmethod
    def from_json(doc: object) -> Definitions:
        """Definitions from their JSON form (the registry's, or a TOML file's tables); DefinitionError if wrong."""
        if not isinstance(doc, dict):
            raise DefinitionError("definitions are an object with 'entities' and 'views'")
        unknown = sorted(set(doc) - {"entities", "views"})
        if unknown:
            raise DefinitionError(f"unknown definitions table {unknown[0]!r:.80}: expected entities and views")
        entities: dict[str, Entity] = {}
        for name, spec in _table(doc.get("entities", {}), "entities").items():
            spec = _fields(spec, f"entities.{name}", {"join_key", "value_type", "description"}, {"join_key"})
            spec["description"] = _text(spec.get("description", ""), f"entities.{name}")
            entities[name] = Entity(name, **spec)
        views: dict[str, FeatureView] = {}
        for name, spec in _table(doc.get("views", {}), "views").items():
            allowed = {"entity", "features", "ttl_ms", "ttl_s", "source", "description"}
            spec = _fields(spec, f"views.{name}", allowed, {"entity", "features"})
            entity = entities.get(spec["entity"]) if isinstance(spec["entity"], str) else None
            if entity is None:
                raise DefinitionError(f"views.{name}: entity {spec['entity']!r:.80} is not defined")
            ttl_ms = spec.get("ttl_ms", 0)
            if "ttl_s" in spec:
                if "ttl_ms" in spec:
                    raise DefinitionError(f"views.{name}: give ttl_ms or ttl_s, not both")
                ttl_s = spec["ttl_s"]
                if type(ttl_s) not in (int, float) or not 0 <= ttl_s < 1e15:
                    raise DefinitionError(f"views.{name}: ttl_s must be a number of seconds >= 0")
                ttl_ms = math.ceil(ttl_s * 1000)
            source = None
            if "source" in spec:
                raw = _fields(spec["source"], f"views.{name}.source", {"path", "timestamp_column"}, {"path"})
                if not all(isinstance(v, str) and v for v in raw.values()):
                    raise DefinitionError(f"views.{name}.source: path and timestamp_column are strings")
                source = Source(**raw)
            features = _table(spec["features"], f"views.{name}.features")
            views[name] = FeatureView(
                name, entity, features, ttl_ms, source, _text(spec.get("description", ""), f"views.{name}")
            )
        return Definitions(entities, views)


def load(path: str | Path) -> Definitions:
    """Definitions from a ``.toml`` file, or from a Python module's top-level ``Entity`` and ``FeatureView``s."""
    path = Path(path)
    if path.suffix == ".py":
        return _load_module(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise DefinitionError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{path}: {exc}") from None
    definitions = Definitions.from_json(doc)
    return _relative_sources(definitions, path.parent)


def _load_module(path: Path) -> Definitions:
    spec = importlib.util.spec_from_file_location(f"kvstore_features_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionError as exc:
        raise DefinitionError(f"{path}: {exc.message}") from None
    except Exception as exc:
        # The module's own error (a typo, a failed import), said as a definitions error with its file.
        raise DefinitionError(f"{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(spec.name, None)
    objects = list(vars(module).values())
    views = _by_name([v for v in objects if isinstance(v, FeatureView)], "feature view", path)
    entities = _by_name([e for e in objects if isinstance(e, Entity)], "entity", path)
    for view in views.values():
        entities.setdefault(view.entity.name, view.entity)
    return _relative_sources(Definitions(entities, views), path.parent)


def _by_name(items: list[Any], what: str, path: Path) -> dict[str, Any]:
    """``items`` by name; two different definitions of one name are refused rather than one silently kept."""
    named: dict[str, Any] = {}
    for item in items:
        held = named.setdefault(item.name, item)
        if held != item:
            raise DefinitionError(f"{path}: two different {what}s are named {item.name!r}")
    return named


def _relative_sources(definitions: Definitions, base: Path) -> Definitions:
    """A source path relative to the definitions file is taken from the file's directory."""
    views = {}
    for name, view in definitions.views.items():
        source = view.source
        if source is not None and not Path(source.path).is_absolute():
            source = Source(str(base / source.path), source.timestamp_column)
        views[name] = FeatureView(view.name, view.entity, view.features, view.ttl_ms, source, view.description)
    return Definitions(definitions.entities, views)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{what} must be 1 to 63 letters, digits, '_' or '-', starting with a letter, got {name!r:.80}"
        )


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DefinitionError(f"{where}: expected a table")
    return value


def _fields(value: object, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    table = _table(value, where)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DefinitionError(f"{where}: unknown field {unknown[0]!r:.80} (expected {', '.join(sorted(allowed))})")
    missing = sorted(required - set(table))
    if missing:
        raise DefinitionError(f"{where}: missing {missing[0]!r}")
    return dict(table)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise DefinitionError(f"{where}: description is a string of at most 4096 characters")
    return value
