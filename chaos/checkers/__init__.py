"""Consistency checkers, and one entry point that runs the ones a scenario names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chaos.history import History

if TYPE_CHECKING:
    from chaos.checkers.features import FeaturesFinal

CHECKER_NAMES: tuple[str, ...] = ("linearizable", "lost-writes", "set", "counter", "convergence", "siblings",
                                  "features-acked", "features-monotonic", "features-recompute")


def combine(verdicts: Sequence[object]) -> bool | str:
    """All valid -> True; any invalid -> False; otherwise (any unknown) -> "unknown"."""
    if any(v is False for v in verdicts):
        return False
    if all(v is True for v in verdicts):
        return True
    return "unknown"


def run_checkers(
    names: Sequence[str],
    history: History,
    *,
    time_limit_s: float = 30.0,
    final_values: Mapping[Any, Any] | None = None,
    final_siblings: Mapping[Any, Mapping[str, Sequence[Any]]] | None = None,
    max_siblings: int | None = None,
    features_final: FeaturesFinal | None = None,
) -> dict[str, dict[str, Any]]:
    """Each named checker's JSON result from a history. Convergence needs every replica's copy, which only a
    chaos run reads (``convergence.check_copies`` in the runners): from a history alone it is unknown. So does
    the siblings checker (``final_siblings``, each replica's sibling values of each key, and the bound
    ``max_siblings``): without them its verdict is unknown. So do the feature store's checks of the final state
    (``features_final``: the view and each replica's rows, ``chaos.checkers.features``)."""
    from chaos.checkers import counter, features, linearizable, lost_writes, sets, siblings

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "linearizable":
            results[name] = linearizable.check(history, time_limit_s).to_json()
        elif name == "lost-writes":
            results[name] = lost_writes.check(history, final_values).to_json()
        elif name == "set":
            results[name] = sets.check(history).to_json()
        elif name == "counter":
            results[name] = counter.check(history).to_json()
        elif name == "convergence":
            results[name] = {"valid": "unknown", "reason": "a history alone holds no replica's copy to compare"}
        elif name == "siblings":
            if final_siblings is None:
                results[name] = {"valid": "unknown", "reason": "no replica's final siblings were given to check"}
            else:
                results[name] = siblings.check(history, final_siblings, max_siblings).to_json()
        elif name in features.CHECKS:
            results[name] = features.check(name, history, features_final)
        else:
            raise ValueError(f"unknown checker {name!r} (known: {', '.join(CHECKER_NAMES)})")
    return results
