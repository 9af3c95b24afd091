"""The shipped scenario files, for the chaos tests: where they are, loading one, and a failure's replay line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from chaos.run_real import run_on_real_cluster
from chaos.run_sim import RunResult, replay_command
from chaos.scenario import Scenario, load

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# Scenarios that name replication settings in a [replication] table (writes, reads).
REPLICATION_SETTINGS_SCENARIOS = (
    "register-leader-async.toml",
    "register-leader-unsafe-reads.toml",
    "register-leader-lease.toml",
)


def load_shipped(name: str) -> Scenario:
    """The scenario ``scenarios/<name>``."""
    return load(SCENARIOS / name)


def replay(name: str, seed: int) -> str:
    return f"seed={seed}; replay: {replay_command(str(SCENARIOS / name), seed)}"


def run_real_joins_and_leaves(name: str, duration_ms: int, quiet_ms: int, interval_ms: int) -> RunResult:
    """Scenario ``name`` on a real cluster with only the nemesis's join and leave orders (seed 2): the history is
    valid and both kinds of order were given. The caller checks what its mode adds."""
    scenario = load_shipped(name)
    scenario = replace(scenario, duration_ms=duration_ms, quiet_ms=quiet_ms,
                       nemesis=replace(scenario.nemesis, faults=("join", "leave"), interval_ms=interval_ms))
    result = run_on_real_cluster(scenario, seed=2)
    assert result.driver == "real"
    verdicts = {k: v.get("valid") for k, v in result.checkers.items()}
    assert result.valid is True, verdicts
    ordered = [p.detail for p in result.periods if "ordered at" in p.detail]
    assert any(d.startswith("active ") for d in ordered) and any(d.startswith("leaving ") for d in ordered), ordered
    return result
