"""The shipped scenario files, for the chaos tests: where they are, and loading one that may need a setting
this build does not have yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.run_sim import replay_command
from chaos.scenario import Scenario, ScenarioError, load

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# Scenarios that need the [replication] scenario table (the replication settings: writes, reads).
NEEDS_REPLICATION_SETTINGS = ("register-leader-async.toml", "register-leader-unsafe-reads.toml",
                              "register-leader-lease.toml")


def load_or_skip(name: str) -> Scenario:
    """The scenario ``scenarios/<name>``; skips the test if its [replication] table is refused, as a build
    without the replication settings does (any other error fails the test)."""
    try:
        return load(SCENARIOS / name)
    except ScenarioError as exc:
        if name in NEEDS_REPLICATION_SETTINGS and "unknown setting(s) replication" in str(exc):
            pytest.skip(f"{name} needs the [replication] scenario table, which this build refuses: {exc}")
        raise


def replay(name: str, seed: int) -> str:
    return f"seed={seed}; replay: {replay_command(str(SCENARIOS / name), seed)}"
