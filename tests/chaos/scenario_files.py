"""The shipped scenario files, for the chaos tests: where they are, loading one, and a failure's replay line."""

from __future__ import annotations

from pathlib import Path

from chaos.run_sim import replay_command
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
