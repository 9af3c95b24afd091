"""Online serving: the latest values of a view's features for a list of entities, TTL enforced on read.

Shared by the cluster's route (``POST /features/online``) and the in-process hot path (``FeatureClient``), so the
two answer alike. A feature's cell is *present* (its newest event's value), *missing* (no event for the entity, or
the newest carried no value) or *expired* (the newest event is at least the view's TTL old: its value is not
served). The answer is columnar, one list per feature in the order of the entities asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvstore.features.definitions import FeatureView
from replication.event_time import Row

PRESENT = "present"
MISSING = "missing"
EXPIRED = "expired"


@dataclass
class OnlineFeatures:
    view: str
    entities: list[Any]
    features: tuple[str, ...]
    # Per feature, per entity: the value (None unless present), its status and its event time (None: no event).
    values: dict[str, list[Any]]
    status: dict[str, list[str]]
    event_ts_ms: dict[str, list[int | None]]
    registry_version: int = 0
    # Where the answer came from ("local": the in-process replica; "cluster") and how stale that was at most.
    source: str = "cluster"
    staleness_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per entity: the join key and each feature's value."""
        return [
            {"entity": entity, **{name: self.values[name][i] for name in self.features}}
            for i, entity in enumerate(self.entities)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "entities": self.entities,
            "features": list(self.features),
            "values": self.values,
            "status": self.status,
            "event_ts_ms": self.event_ts_ms,
            "registry_version": self.registry_version,
            "source": self.source,
            "staleness_ms": self.staleness_ms,
        }


def requested_features(view: FeatureView, features: Sequence[str] | None) -> tuple[str, ...]:
    """``features`` checked against the view (None: all of them, in the view's order); ValueError for others."""
    if features is None:
        return tuple(view.features)
    unknown = [name for name in features if name not in view.features]
    if unknown:
        raise ValueError(f"view {view.name!r} has no feature {unknown[0]!r:.80}")
    if len(set(features)) != len(features):
        # The answer has one column per feature: a name asked twice would list two columns and hold one.
        raise ValueError("features names a feature twice")
    return tuple(features)


def resolve(
    view: FeatureView, entities: list[Any], features: tuple[str, ...], rows: Sequence[Row | None], now_ms: int
) -> OnlineFeatures:
    """The answer for ``entities`` whose online rows are ``rows`` (None: none stored), judged at ``now_ms``."""
    ttl_ms = view.ttl_ms
    oldest_live_ms = now_ms - ttl_ms if ttl_ms > 0 else None
    values: dict[str, list[Any]] = {}
    status: dict[str, list[str]] = {}
    times: dict[str, list[int | None]] = {}
    for name in features:
        column: list[Any] = []
        states: list[str] = []
        stamps: list[int | None] = []
        for row in rows:
            cell = None if row is None else row.get(name)
            if cell is None:
                column.append(None)
                states.append(MISSING)
                stamps.append(None)
                continue
            ts, value = cell
            stamps.append(ts)
            # Expired once now >= ts + ttl, i.e. ts <= now - ttl.
            if oldest_live_ms is not None and ts <= oldest_live_ms:
                column.append(None)
                states.append(EXPIRED)
            elif value is None:
                column.append(None)
                states.append(MISSING)
            else:
                column.append(value)
                states.append(PRESENT)
        values[name] = column
        status[name] = states
        times[name] = stamps
    return OnlineFeatures(view.name, entities, features, values, status, times)
