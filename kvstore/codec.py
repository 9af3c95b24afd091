"""msgpack encoding of every registered message class, from every package.

A registered dataclass is packed as a msgpack ext value holding ``[type name, field values...]``;
fields are packed recursively, so messages nest freely. Arrays decode as tuples, which is what the
frozen dataclasses hold, so ``decode(encode(m)) == m`` for every registered message: the simulator
checks exactly that by round-tripping each message it carries.

Protocol packages (``replication``, ``partitioning``, ``transactions``) may not import kvstore, so
they do not call ``register`` themselves; ``kvstore.node`` registers their message classes with
``register_all``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from enum import Enum
from typing import Any, TypeVar

import msgpack

_EXT_DATACLASS = 1

_by_name: dict[str, type[Any]] = {}
_fields: dict[type[Any], tuple[str, ...]] = {}

T = TypeVar("T")


class CodecError(ValueError):
    """Bytes that are not a well-formed encoding of a registered message."""


def register(cls: type[T]) -> type[T]:
    """Register a dataclass by its class name; names must be unique across all packages."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    name = cls.__name__
    existing = _by_name.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"message name {name!r} is registered twice ({existing.__module__}, {cls.__module__})")
    _by_name[name] = cls
    _fields[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return cls


def register_all(classes: Iterable[type[Any]]) -> None:
    for cls in classes:
        register(cls)


def registered(name: str) -> type[Any] | None:
    return _by_name.get(name)


def _default(obj: object) -> object:
    cls = type(obj)
    names = _fields.get(cls)
    if names is not None:
        payload = [cls.__name__, *(getattr(obj, n) for n in names)]
        return msgpack.ExtType(_EXT_DATACLASS, msgpack.packb(payload, default=_default, use_bin_type=True))
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        # Sorted so that the encoding (and any hash of it) does not depend on set iteration order.
        return sorted(obj)
    raise TypeError(f"cannot encode {cls.__module__}.{cls.__qualname__}: not a registered message")


def _ext_hook(code: int, data: bytes) -> object:
    if code != _EXT_DATACLASS:
        raise CodecError(f"unknown msgpack ext type {code}")
    payload = msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)
    if not isinstance(payload, tuple) or not payload or not isinstance(payload[0], str):
        raise CodecError("malformed message payload")
    cls = _by_name.get(payload[0])
    if cls is None:
        raise CodecError(f"unknown message type {payload[0]!r}")
    try:
        return cls(*payload[1:])
    except TypeError as exc:
        raise CodecError(f"bad fields for {payload[0]}: {exc}") from exc


def encode(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, default=_default, use_bin_type=True)
    return data


def decode(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"undecodable message: {exc}") from exc
