"""The registry: the definitions applied to a cluster, versioned, kept in the cluster itself.

The current definitions live under ``__fs/registry`` as ``{"version", "definitions", "applied_at_ms"}`` (JSON),
and each version also under ``__fs/registry/v/<version>``, so any version can be read back. Applying definitions
equal to the current ones changes nothing; anything else takes the next version. Every feature route reads the
registry key as it serves a request (``Registry.current`` caches only the decoding, keyed by the stored bytes), so a
change is visible to the very next request: nothing serves definitions from a stale cache.

In leaderless mode two concurrent applies can leave the key with siblings; the registry is then the sibling with the
highest version (the next apply, which writes with the read's context, resolves them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import DefinitionError, Definitions
from kvstore.features.keys import REGISTRY_KEY

REGISTRY_VERSIONS_PREFIX = REGISTRY_KEY + "/v/"


def version_key(version: int) -> str:
    return f"{REGISTRY_VERSIONS_PREFIX}{version:012d}"


@dataclass(frozen=True)
class Registry:
    version: int
    definitions: Definitions
    applied_at_ms: int

    def encode(self) -> bytes:
        doc = {"version": self.version, "definitions": self.definitions.to_json(), "applied_at_ms": self.applied_at_ms}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "definitions": self.definitions.to_json(), "applied_at_ms": self.applied_at_ms}


EMPTY = Registry(0, Definitions(), 0)
_INT64_MAX = (1 << 63) - 1
MAX_DESCRIPTION_CHARS = 4096


def storable(definitions: Definitions) -> Definitions:
    """``definitions``, once checked to be servable in every encoding: a TTL within int64 (msgpack), descriptions
    that are text, and only UTF-8 strings (a JSON "\ud800" escape is a lone surrogate, which msgpack and the
    registry's bytes cannot hold). DefinitionError otherwise."""
    for entity in definitions.entities.values():
        if not isinstance(entity.description, str) or len(entity.description) > MAX_DESCRIPTION_CHARS:
            message = f"entities.{entity.name}: description is a string of at most {MAX_DESCRIPTION_CHARS} characters"
            raise DefinitionError(message)
    for view in definitions.views.values():
        if view.ttl_ms > _INT64_MAX:
            raise DefinitionError(f"views.{view.name}: ttl_ms must be at most {_INT64_MAX}")
    try:
        json.dumps(definitions.to_json(), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise DefinitionError("the definitions hold a string that is not valid UTF-8 (a lone surrogate)") from None
    return definitions


def decode(data: bytes) -> Registry:
    """The registry ``data`` holds; KvError (internal) if it is not one, which only a bug or a damaged key makes."""
    try:
        doc = json.loads(data)
        version, applied_at_ms = doc["version"], doc["applied_at_ms"]
        if type(version) is not int or type(applied_at_ms) is not int or version < 1:
            raise ValueError("version and applied_at_ms must be whole numbers")
        return Registry(version, Definitions.from_json(doc["definitions"]), applied_at_ms)
    except (ValueError, KeyError, TypeError, KvError) as exc:
        message = str(exc.message) if isinstance(exc, KvError) else str(exc)
        raise KvError(ErrorCode.INTERNAL, f"the feature registry ({REGISTRY_KEY}) is damaged: {message}") from None


def newest(values: tuple[bytes, ...]) -> Registry:
    """The registry of the key's values (siblings in leaderless mode): the highest version; EMPTY for none."""
    registries = [decode(value) for value in values]
    return max(registries, key=lambda r: (r.version, r.encode()), default=EMPTY)


class RegistryCache:
    """Decodes the registry key's bytes once per distinct value: each request still reads the key itself."""

    def __init__(self) -> None:
        self._held: tuple[tuple[bytes, ...], Registry] | None = None

    def of(self, values: tuple[bytes, ...]) -> Registry:
        held = self._held
        if held is not None and held[0] == values:
            return held[1]
        registry = newest(values)
        self._held = (values, registry)
        return registry
