"""Hypothesis draws whole chaos scenarios (fault mix, pace, workload, seed) and runs them in the simulator.

- Single copy with fsync=always must come out valid under any mix of faults, for every workload.
- With fsync=never and crashes, writes do get lost; whenever the lost-writes checker names one, the
  linearizability checker must reject the history too (the checkers agree).
- A scenario and a seed name one run: the same history and the same trace hash every time.

A failure prints the scenario as a TOML file with the seed and the command that replays it.

Scenarios keep ``think_ms >= 1``: with ``think_ms = 0`` a client whose node is down gets ``unavailable``
at once and starts its next op at the same virtual millisecond, for ever (the runner ends only when the
event heap overflows, after about a minute of real time).
"""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

import hypothesis.strategies as st
import tomli_w
from hypothesis import HealthCheck, event, given, settings

from chaos.nemesis import FAULT_KINDS, NemesisConfig
from chaos.run_sim import RunResult, replay_command, run_in_sim
from chaos.scenario import CheckerSpec, ClusterSpec, Scenario, WorkloadSpec, from_dict
from chaos.workloads import WORKLOAD_KINDS
from kvstore.config import FSYNC_POLICIES

# Derandomized and database-less: CI runs the same examples every time.
CI = settings(deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
KEYED_WORKLOADS = ("register", "append")


@st.composite
def scenarios(
    draw: st.DrawFn,
    fsyncs: tuple[str, ...] = ("always",),
    kinds: tuple[str, ...] = WORKLOAD_KINDS,
    required_faults: tuple[str, ...] = (),
) -> Scenario:
    fsync = draw(st.sampled_from(fsyncs))
    optional = [f for f in FAULT_KINDS if f not in required_faults]
    faults = (*required_faults, *draw(st.lists(st.sampled_from(optional), unique=True, max_size=4)))
    kind = draw(st.sampled_from(kinds))
    options: dict[str, Any] = {"keys": draw(st.integers(1, 5))} if kind in KEYED_WORKLOADS else {}
    return Scenario(
        name=f"hypothesis-{kind}-fsync-{fsync}",
        duration_ms=draw(st.integers(2000, 4000)),
        quiet_ms=500,
        seed=draw(st.integers(0, 2**32 - 1)),
        cluster=ClusterSpec(fsync=fsync, request_timeout_ms=draw(st.sampled_from((300, 1000)))),
        workload=WorkloadSpec(
            kind=kind,
            concurrency=draw(st.integers(1, 6)),
            # think_ms=0 can livelock the runner at one virtual instant (see the module docstring).
            think_ms=draw(st.integers(1, 30)),
            client_timeout_ms=1500,
            options=options,
        ),
        nemesis=NemesisConfig(faults=faults, interval_ms=draw(st.integers(100, 1000)),
                              start_after_ms=draw(st.integers(0, 500))),
    )


def scenario_toml(scenario: Scenario) -> str:
    return tomli_w.dumps(_without_none(dataclasses.asdict(scenario)))


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: a setting that is None (its default, as ``[cluster] founders``) is left out."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def replay_text(scenario: Scenario) -> str:
    return (
        f"seed={scenario.seed}; save this as scenario.toml:\n{scenario_toml(scenario)}\n"
        f"replay with: {replay_command('scenario.toml', scenario.seed)}"
    )


def verdicts(result: RunResult) -> dict[str, Any]:
    return {name: checker.get("valid") for name, checker in result.checkers.items()}


@settings(CI, max_examples=60)
@given(scenarios())
def test_single_copy_fsync_always_is_valid_under_any_fault_mix(scenario: Scenario) -> None:
    result = run_in_sim(scenario)
    assert result.valid is True, (
        f"verdicts {verdicts(result)}\n{result.checkers}\nschedule {result.schedule}\n{replay_text(scenario)}"
    )


@settings(CI, max_examples=40)
@given(scenarios(fsyncs=("never",), kinds=("register",), required_faults=("crash",)))
def test_lost_writes_are_never_reported_linearizable(scenario: Scenario) -> None:
    scenario = dataclasses.replace(scenario, checkers=dataclasses.replace(
        scenario.checkers, names=("linearizable", "lost-writes")))
    result = run_in_sim(scenario)
    lost = result.checkers["lost-writes"]
    event(f"lost writes found: {lost['valid'] is False}")
    if lost["valid"] is False:
        assert result.checkers["linearizable"]["valid"] is False and result.valid is False, (
            f"lost writes {lost['lost']} yet verdicts {verdicts(result)}\n{replay_text(scenario)}"
        )


@settings(CI, max_examples=15)
@given(scenarios(fsyncs=FSYNC_POLICIES))
def test_same_scenario_and_seed_give_the_same_run(scenario: Scenario) -> None:
    # A cheap checker: the linearizability search can take its whole time limit on some append histories,
    # and verdicts are not what this property is about.
    scenario = dataclasses.replace(scenario, checkers=CheckerSpec(names=("convergence",)))
    first, second = run_in_sim(scenario), run_in_sim(scenario)
    assert [e.to_json() for e in first.history.events] == [e.to_json() for e in second.history.events], (
        replay_text(scenario)
    )
    assert first.stats["trace_hash"] == second.stats["trace_hash"], replay_text(scenario)
    assert (first.stats, first.checkers) == (second.stats, second.checkers), replay_text(scenario)


@settings(CI, max_examples=30)
@given(scenarios())
def test_printed_scenario_replays_the_same_scenario(scenario: Scenario) -> None:
    assert from_dict(tomllib.loads(scenario_toml(scenario)), "scenario.toml") == scenario
