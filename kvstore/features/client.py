"""``FeatureClient``: the feature store from Python.

    with FeatureClient(["http://127.0.0.1:7001"]) as fs:
        fs.apply(definitions.load("features.toml"))
        fs.push("driver_stats", [{"entity": 1001, "event_ts_ms": 1_700_000_000_000, "values": {...}}])
        fs.serve_locally(["driver_stats"])                     # the in-process hot path
        answer = fs.get_online_features("driver_stats", [1001], ["conv_rate"], max_staleness_ms=500)

``get_online_features`` serves from the in-process replica (``local_replica.py``) when one follows the view and
is fresh enough for ``max_staleness_ms`` (None: any staleness), else from the cluster (``POST /features/online``),
with the read consistency asked for (``consistency`` in leader mode, ``r`` in leaderless mode). The answer says
where it came from and how stale it was at most (as stale as the node its feed reads from, which may lag the
cluster: ``local_replica.py``). The batch layer and training data are in ``batch.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from kvstore.client import Client
from kvstore.errors import ErrorCode, KvError
from kvstore.features import registry as registry_codec
from kvstore.features.definitions import DefinitionError, Definitions, FeatureView
from kvstore.features.ingest import MAX_PUSH_EVENTS, Event
from kvstore.features.local_replica import LocalReplica
from kvstore.features.registry import Registry
from kvstore.features.serving import OnlineFeatures, requested_features, resolve

EventLike = Event | Mapping[str, Any]
# Sends of a batch that failed on the server's side (5xx), with a pause doubling from PUSH_RETRY_S up to
# MAX_PUSH_RETRY_S between: 4.5 s of pauses in all, enough to outlast a leader failover (a follower campaigns after
# 1 to 2 election timeouts, 1 to 2 s by default), during which the partition's writes answer unavailable.
PUSH_ATTEMPTS = 8
PUSH_RETRY_S = 0.1
MAX_PUSH_RETRY_S = 1.0
# The failures that sending again can cure; others (a refusal, an internal error) would answer the same again.
RETRIED_PUSH_ERRORS = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.OVERLOADED, ErrorCode.NOT_LEADER, ErrorCode.WRONG_EPOCH}
)


class FeatureClient:
    def __init__(self, urls: Sequence[str] | str, *, timeout_s: float = 10.0) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.client = Client(self.urls, timeout_s=timeout_s)
        self._local: LocalReplica | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        self.client.close()

    # ------------------------------------------------------------ definitions

    def apply(self, definitions: Definitions) -> dict[str, Any]:
        """Apply ``definitions`` to the cluster: ``{"version", "changed"}``."""
        return self.client.call("PUT", "/features/registry", definitions.to_json())

    def registry(self, version: int | None = None) -> Registry:
        query = None if version is None else {"version": str(version)}
        doc = self.client.call("GET", "/features/registry", query=query, idempotent=True)
        if not doc["version"]:
            return registry_codec.EMPTY
        return Registry(doc["version"], Definitions.from_json(doc["definitions"]), doc["applied_at_ms"])

    def view(self, name: str) -> FeatureView:
        return self.registry().definitions.view(name)

    # ------------------------------------------------------------ ingestion

    def push(
        self,
        view: str,
        events: Iterable[EventLike],
        *,
        replication: str | None = None,
        w: str | None = None,
        batch_size: int = 5000,
    ) -> int:
        """Push ``events`` (``Event`` or ``{"entity", "event_ts_ms", "values"}``) in batches; the number pushed.
        A failed batch raises KvError; pushing it again is safe (a push is idempotent)."""
        if not 1 <= batch_size <= MAX_PUSH_EVENTS:
            raise ValueError(f"batch_size must be 1 to {MAX_PUSH_EVENTS}")
        query = {k: v for k, v in (("replication", replication), ("w", w)) if v is not None}
        pushed = 0
        batch: list[dict[str, Any]] = []
        for event in events:
            batch.append(_event_doc(event))
            if len(batch) == batch_size:
                pushed += self._push_batch(view, batch, query)
                batch = []
        if batch:
            pushed += self._push_batch(view, batch, query)
        return pushed

    def _push_batch(self, view: str, batch: list[dict[str, Any]], query: dict[str, str]) -> int:
        body = {"view": view, "events": batch}
        for attempt in range(PUSH_ATTEMPTS):
            try:
                doc = self.client.call("POST", "/features/push", body, query=query or None, idempotent=True)
                events: int = doc["events"]
                return events
            except KvError as exc:
                # A push is idempotent (its writes are merges), so a transient failure may be sent again: a leader
                # that changed, a node that restarted, a timeout.
                if exc.code not in RETRIED_PUSH_ERRORS or attempt == PUSH_ATTEMPTS - 1:
                    raise
                time.sleep(min(PUSH_RETRY_S * 2**attempt, MAX_PUSH_RETRY_S))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ online serving

    def serve_locally(self, views: Sequence[str], *, wait_s: float = 30.0) -> LocalReplica:
        """Keep an in-process replica of ``views``' online rows (replacing any kept before), and wait up to
        ``wait_s`` for it to catch up once (KvError ``unavailable`` if it does not, ``not_found`` for a view the
        registry lacks; either way no replica is kept)."""
        if self._local is not None:
            self._local.close()
            # Unset first: a replica that fails to start must not leave the closed one serving frozen rows.
            self._local = None
        definitions = self.registry().definitions
        for name in views:
            definitions.view(name)  # KvError not_found naming the views there are
        local = LocalReplica(self.urls, views, self.registry)
        if not local.wait_caught_up(wait_s):
            local.close()
            raise KvError(
                ErrorCode.UNAVAILABLE,
                f"the in-process replica did not catch up within {wait_s} s: {'; '.join(local.errors()[-3:])}",
            )
        self._local = local
        return local

    @property
    def local(self) -> LocalReplica | None:
        return self._local

    def staleness_ms(self) -> float:
        """How stale the in-process replica is at most (infinite without one)."""
        return float("inf") if self._local is None else self._local.staleness_ms()

    def get_online_features(
        self,
        view: str,
        entities: Sequence[Any],
        features: Sequence[str] | None = None,
        *,
        max_staleness_ms: float | None = None,
        consistency: str | None = None,
        r: str | None = None,
    ) -> OnlineFeatures:
        local = self._local
        if local is not None and view in local.views and consistency is None and r is None:
            staleness = local.staleness_ms()
            definition = local.registry.definitions.views.get(view)
            if definition is not None and (max_staleness_ms is None or staleness <= max_staleness_ms):
                return self._local_answer(local, definition, entities, features, staleness)
        return self.online_from_cluster(view, entities, features, consistency=consistency, r=r)

    @staticmethod
    def _local_answer(
        local: LocalReplica,
        view: FeatureView,
        entities: Sequence[Any],
        features: Sequence[str] | None,
        staleness_ms: float,
    ) -> OnlineFeatures:
        try:
            names = requested_features(view, features)
        except ValueError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from None
        rows_of = local.rows[view.name]
        key_of = view.entity.key_of
        try:
            rows = [rows_of.get(key_of(entity)) for entity in entities]
        except DefinitionError:
            # Perhaps NumPy ids (a DataFrame's column): converted only now, to keep the hot path lean.
            entities = [_plain(entity) for entity in entities]
            rows = [rows_of.get(key_of(entity)) for entity in entities]
        answer = resolve(view, list(entities), names, rows, time.time_ns() // 1_000_000)
        for name in names:
            if view.features[name].endswith("_list"):
                # The replica's own lists: a caller that pads or appends to an answer must not change the replica.
                answer.values[name] = [None if value is None else list(value) for value in answer.values[name]]
        answer.registry_version = local.registry.version
        answer.source = "local"
        answer.staleness_ms = staleness_ms
        return answer

    def online_from_cluster(
        self,
        view: str,
        entities: Sequence[Any],
        features: Sequence[str] | None = None,
        *,
        consistency: str | None = None,
        r: str | None = None,
    ) -> OnlineFeatures:
        doc: dict[str, Any] = {"view": view, "entities": [_plain(entity) for entity in entities]}
        if features is not None:
            doc["features"] = list(features)
        if consistency is not None:
            doc["consistency"] = consistency
        if r is not None:
            doc["r"] = r
        answer = self.client.call("POST", "/features/online", doc, idempotent=True)
        return OnlineFeatures(
            answer["view"],
            answer["entities"],
            tuple(answer["features"]),
            answer["values"],
            answer["status"],
            answer["event_ts_ms"],
            answer["registry_version"],
            "cluster",
            0.0,
        )


def _event_doc(event: EventLike) -> dict[str, Any]:
    if isinstance(event, Event):
        return {"entity": event.entity, "event_ts_ms": event.event_ts_ms, "values": event.values}
    doc = {name: _plain(value) for name, value in event.items()}
    values = doc.get("values")
    if isinstance(values, Mapping):
        doc["values"] = {name: _plain(value) for name, value in values.items()}
    return doc


def _plain(value: Any) -> Any:
    """A NumPy scalar or array (what a DataFrame's rows hold) as the Python value it stands for, which the checks
    and msgpack take (``numpy.int64`` is no int, ``numpy.float64`` no exact float); anything else as it is."""
    tolist = getattr(value, "tolist", None)
    if tolist is None or type(value) in (str, bytes, list):
        return value
    return tolist()
