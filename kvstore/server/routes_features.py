"""The feature store's routes (``kvstore/features``): registry, push, online reads, watermarks.

- ``GET /features/registry`` (``?version=N`` for an older one) and ``PUT /features/registry`` (a JSON body: the
  definitions, ``{"entities": {...}, "views": {...}}``; answers ``{"version", "changed"}``);
- ``POST /features/push`` (JSON or msgpack ``{"view", "events": [{"entity", "event_ts_ms", "values"}...]}``, with
  ``?replication=`` or ``?w=`` as for a write): each event is merged into the retained event log and the entity's
  online row (``kvstore/features/ingest.py``). ``200 {"events", "writes"}`` once every write is acknowledged;
  otherwise the error of the first that was not, with ``"unacknowledged"``: how many writes were not. A push is
  idempotent: send it again;
- ``POST /features/online`` (``{"view", "entities": [...], "features": [...]?, "consistency"?, "r"?}``, JSON or
  msgpack both ways): the latest values (``kvstore/features/serving.py``), TTL enforced at this node's clock;
- ``GET /features/watermarks/{view}``, ``PUT`` with ``{"watermark_ms"}``: the materialization watermark, an
  event-time row, so it only ever moves forward whatever order writes arrive in.

Every request reads the registry key as it is served, so a change of the definitions holds from the next request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from typing import Any

from kvstore.config import ClusterConfig
from kvstore.errors import ErrorCode, KvError
from kvstore.features import registry as registry_codec
from kvstore.features.definitions import Definitions, FeatureView
from kvstore.features.ingest import parse_events, push_ops
from kvstore.features.keys import REGISTRY_KEY, online_key, watermark_key
from kvstore.features.registry import Registry, RegistryCache, version_key
from kvstore.features.serving import requested_features, resolve
from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    Failure,
    Found,
    FoundSiblings,
    GetOp,
    PutOp,
    Result,
    Stored,
    Written,
)
from kvstore.server.http_codec import (
    check_fields,
    encoded_response,
    failure_error,
    json_response,
    query_params,
    read_document,
    refuse_query,
    wants_msgpack,
    wire_limit_bytes,
)
from kvstore.server.http_message import Request, Response
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.validation import check_op, parse_whole_number
from replication.event_time import Row, decode_row, decode_stored_row, encode_row

# Bodies: a push of MAX_PUSH_EVENTS events of a few hundred bytes each, and room for definitions.
MAX_PUSH_BODY_BYTES = 32 * 1024 * 1024
MAX_REGISTRY_BODY_BYTES = 4 * 1024 * 1024
MAX_ONLINE_ENTITIES = 10_000
# The stored rows one online read may gather (each row may hold up to a few MiB): an answer stays bounded.
MAX_ONLINE_ANSWER_BYTES = 64 * 1024 * 1024
# Registry versions are 12 digits in their keys (``registry.version_key``).
MAX_REGISTRY_VERSION = 10**12 - 1
WATERMARK_CELL = "watermark"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FeatureRoutes:
    def __init__(self, pump: Pump, config: ClusterConfig) -> None:
        self._pump = pump
        self._leaderless = config.mode == "leaderless"
        self._config = config
        self._limits = config.limits
        self._batch_keys = config.limits.max_batch_keys
        self._cache = RegistryCache()

    def register(self, router: Router) -> None:
        router.add("GET", "/features/registry", self.get_registry)
        documents = wire_limit_bytes(MAX_REGISTRY_BODY_BYTES)
        router.add("PUT", "/features/registry", self.put_registry, max_body_bytes=documents)
        router.add("POST", "/features/push", self.push, max_body_bytes=wire_limit_bytes(MAX_PUSH_BODY_BYTES))
        router.add("POST", "/features/online", self.online, max_body_bytes=documents)
        router.add("GET", "/features/watermarks/{view}", self.get_watermark)
        router.add("PUT", "/features/watermarks/{view}", self.put_watermark)

    # ------------------------------------------------------------ registry

    async def get_registry(self, request: Request, _path: str) -> Response:
        params = query_params(request, ("version",)) if request.query_string else {}
        if "version" in params:
            # ASCII digits only: str.isdigit and int() also take other scripts' digits ("\u0663" is 3).
            version = parse_whole_number(params["version"], "version")
            if not 1 <= version <= MAX_REGISTRY_VERSION:
                raise KvError(ErrorCode.BAD_REQUEST, f"version must be 1 to {MAX_REGISTRY_VERSION}")
            values, _context = await self._read(version_key(version))
            if values:
                registry = registry_codec.newest(values)
            else:
                registry = await self._registry()
                if registry.version != version:
                    raise KvError(ErrorCode.NOT_FOUND, f"no registry version {version}")
        else:
            registry = await self._registry()
        return encoded_response(registry.to_json(), wants_msgpack(request))

    async def put_registry(self, request: Request, _path: str) -> Response:
        refuse_query(request)
        doc, _ = read_document(request, MAX_REGISTRY_BODY_BYTES)
        definitions = registry_codec.storable(Definitions.from_json(doc))
        values, context = await self._read(REGISTRY_KEY)
        current = self._cache.of(values)
        if current.version and current.definitions == definitions:
            return encoded_response({"version": current.version, "changed": False}, wants_msgpack(request))
        applied = Registry(current.version + 1, definitions, now_ms())
        encoded = applied.encode()
        if self._leaderless:
            self._written(await self._pump.execute(PutOp(REGISTRY_KEY, encoded, context=context)))
        else:
            expected = values[0] if values else None
            result = await self._pump.execute(CasOp(REGISTRY_KEY, expected, encoded))
            if isinstance(result, Failure) and result.code == ErrorCode.PRECONDITION_FAILED.value:
                raise KvError(ErrorCode.PRECONDITION_FAILED, "the registry changed while applying: apply again")
            self._written(result)
        # The version's copy once the version is won: written first, a concurrent apply that lost the race for the
        # current key had already overwritten the winner's copy of the same version. Until it is written (or if
        # this node stops first), the current key serves that version (get_registry).
        self._written(await self._pump.execute(PutOp(version_key(applied.version), encoded)))
        return encoded_response({"version": applied.version, "changed": True}, wants_msgpack(request))

    async def _registry(self) -> Registry:
        values, _ = await self._read(REGISTRY_KEY)
        return self._cache.of(values)

    async def _view(self, name: object) -> tuple[Registry, FeatureView]:
        if not isinstance(name, str):
            raise KvError(ErrorCode.BAD_REQUEST, "view must be a string")
        registry = await self._registry()
        return registry, registry.definitions.view(name)

    # ------------------------------------------------------------ push

    async def push(self, request: Request, _path: str) -> Response:
        params = query_params(request, ("replication", "w")) if request.query_string else {}
        doc, _ = read_document(request, MAX_PUSH_BODY_BYTES)
        check_fields(doc, ("view", "events"), (), "a push")
        replication, w = params.get("replication", ""), params.get("w", "")
        # The write settings first: a request the mode refuses is a 400, whatever view it names.
        self._check_write(PutOp(online_key("view", "entity"), encode_row({}), None, replication, w, b"", "", True))
        _, view = await self._view(doc["view"])
        events = parse_events(view, doc["events"])
        ops = push_ops(view, events, replication=replication, w=w)
        # Checked before any is sent: a batch with one bad entry is refused whole while the others are written, so a
        # push refused for an entity id too long for a key would otherwise be half stored.
        for op in ops:
            try:
                self._check_write(op)
            except KvError as exc:
                raise KvError(exc.code, f"a push writes {op.key!r:.120}: {exc.message}") from None
        chunks = [ops[i : i + self._batch_keys] for i in range(0, len(ops), self._batch_keys)]
        answers = await asyncio.gather(*(self._pump.execute(BatchPutOp(tuple(chunk))) for chunk in chunks))
        failures: list[Failure] = []
        for chunk, answer in zip(chunks, answers, strict=True):
            if isinstance(answer, BatchResults):
                failures.extend(r for r in answer.results if isinstance(r, Failure))
            elif isinstance(answer, Failure):
                failures.extend([answer] * len(chunk))
        if failures:
            first = failure_error(failures[0])
            message = (
                f"{len(failures)} of {len(ops)} writes of the push were not acknowledged ({first.message}); "
                "a push is idempotent: send it again"
            )
            error = KvError(first.code, message)
            body = {**error.to_json(), "unacknowledged": len(failures), "writes": len(ops)}
            # Errors are JSON, as on every route.
            return json_response(body, error.code.http_status)
        return encoded_response({"events": len(events), "writes": len(ops)}, wants_msgpack(request))

    # ------------------------------------------------------------ online reads

    async def online(self, request: Request, _path: str) -> Response:
        refuse_query(request)
        doc, _ = read_document(request, MAX_REGISTRY_BODY_BYTES)
        check_fields(doc, ("view", "entities"), ("features", "consistency", "r"), "an online read")
        registry, view = await self._view(doc["view"])
        entities = doc["entities"]
        if not isinstance(entities, list) or len(entities) > MAX_ONLINE_ENTITIES:
            raise KvError(ErrorCode.BAD_REQUEST, f"entities must be a list of at most {MAX_ONLINE_ENTITIES} ids")
        keys = [online_key(view.name, view.entity.key_of(entity)) for entity in entities]
        names = doc.get("features")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise KvError(ErrorCode.BAD_REQUEST, "features must be a list of feature names")
        try:
            features = requested_features(view, names)
        except ValueError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from None
        consistency, r = doc.get("consistency", ""), doc.get("r", "")
        if not isinstance(consistency, str) or not isinstance(r, str):
            raise KvError(ErrorCode.BAD_REQUEST, "consistency and r are strings")
        rows = await self._rows(keys, consistency, r)
        answer = resolve(view, entities, features, rows, now_ms())
        answer.registry_version = registry.version
        as_msgpack = wants_msgpack(request)
        if as_msgpack:
            return encoded_response(answer.to_json(), True)
        doc = answer.to_json()
        doc["values"] = {name: [_json_value(v) for v in column] for name, column in answer.values.items()}
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        return Response(body=body, headers={"Content-Type": "application/json"})

    async def _rows(self, keys: list[str], consistency: str, r: str) -> list[Row | None]:
        if not keys:
            return []
        if consistency or r:
            results = await asyncio.gather(*(self._pump.execute(GetOp(key, consistency, r=r)) for key in keys))
        else:
            chunks = [keys[i : i + self._batch_keys] for i in range(0, len(keys), self._batch_keys)]
            answers = await asyncio.gather(*(self._pump.execute(BatchGetOp(tuple(chunk))) for chunk in chunks))
            results = []
            for answer in answers:
                if isinstance(answer, Failure):
                    raise failure_error(answer)
                assert isinstance(answer, BatchResults)
                results.extend(answer.results)
        rows: list[Row | None] = []
        total_bytes = 0
        for key, result in zip(keys, results, strict=True):
            values = _values_of(key, result)
            if values:
                total_bytes += len(values[0])
                if total_bytes > MAX_ONLINE_ANSWER_BYTES:
                    message = f"the rows asked for hold over {MAX_ONLINE_ANSWER_BYTES} bytes: ask for fewer entities"
                    raise KvError(ErrorCode.TOO_LARGE, message)
            rows.append(_decoded(key, values[0]) if values else None)
        return rows

    # ------------------------------------------------------------ watermarks

    async def get_watermark(self, request: Request, view: str) -> Response:
        refuse_query(request)
        await self._view(view)
        return encoded_response({"view": view, "watermark_ms": await self._watermark(view)}, wants_msgpack(request))

    async def put_watermark(self, request: Request, view: str) -> Response:
        refuse_query(request)
        doc, _ = read_document(request, 4096)
        check_fields(doc, ("watermark_ms",), (), "a watermark")
        watermark = doc["watermark_ms"]
        if type(watermark) is not int or not 0 <= watermark < 1 << 63:
            raise KvError(ErrorCode.BAD_REQUEST, "watermark_ms must be whole milliseconds since the epoch")
        await self._view(view)
        row = encode_row({WATERMARK_CELL: (watermark, watermark)})
        self._written(await self._pump.execute(PutOp(watermark_key(view), row, merge=True)))
        current = await self._watermark(view)
        return encoded_response({"view": view, "watermark_ms": watermark if current is None else current},
                                wants_msgpack(request))

    async def _watermark(self, view: str) -> int | None:
        """The view's watermark: the time of its watermark row's one cell (None: none written yet)."""
        values, _ = await self._read(watermark_key(view))
        if not values:
            return None
        ts: int = decode_row(values[0])[WATERMARK_CELL][0]
        return ts

    # ------------------------------------------------------------ plumbing

    async def _read(self, key: str) -> tuple[tuple[bytes, ...], bytes]:
        """The key's values (several: leaderless siblings) and its causal context (leaderless mode)."""
        result = await self._pump.execute(GetOp(key))
        if isinstance(result, FoundSiblings):
            return result.values, result.context
        values = _values_of(key, result)
        return values, b""

    def _check_write(self, op: PutOp) -> None:
        config = self._config
        check_op(op, self._limits, config.mode, config.replication.reads, config.replication_factor)

    @staticmethod
    def _written(result: Result) -> None:
        if isinstance(result, Failure):
            raise failure_error(result)
        if not isinstance(result, Written | Stored):
            raise KvError(ErrorCode.INTERNAL, f"a write answered {type(result).__name__}")


def _values_of(key: str, result: object) -> tuple[bytes, ...]:
    if isinstance(result, Found):
        return (result.value,)
    if isinstance(result, FoundSiblings):
        return result.values
    if isinstance(result, Failure):
        if result.code == ErrorCode.NOT_FOUND.value:
            return ()
        raise failure_error(result)
    raise KvError(ErrorCode.INTERNAL, f"a read of {key!r} answered {type(result).__name__}")


def _decoded(key: str, value: bytes) -> Row:
    try:
        return decode_stored_row(value)
    except ValueError as exc:
        raise KvError(ErrorCode.INTERNAL, f"{key!r} does not hold an event-time row: {exc}") from None


def _json_value(value: Any) -> Any:
    """A feature value as strict JSON takes it: bytes as ``{"b64": ...}``, a float that is not finite as the string
    ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (JSON has no such numbers; msgpack answers carry them as they are)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value
