"""Scenario files: every shipped one loads; bad ones get an error naming the file and the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from scenario_files import REPLICATION_SETTINGS_SCENARIOS, SCENARIOS, load_shipped

from chaos.run_real import real_cluster_config
from chaos.run_sim import sim_cluster_config
from chaos.scenario import ScenarioError, check_real_cluster, from_dict, load
from kvstore.config import LeaderlessConfig, ReplicationConfig

# Power losses: only the simulator can play them.
SIMULATOR_ONLY = ("register-crash-fsync-never.toml", "register-leader-faults.toml")


SHIPPED = sorted(path.name for path in SCENARIOS.glob("*.toml"))


def test_the_shipped_scenarios_are_there() -> None:
    assert len(SHIPPED) >= 5 and set(REPLICATION_SETTINGS_SCENARIOS) <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_loads(name: str) -> None:
    scenario = load_shipped(name)
    assert scenario.name == name.removesuffix(".toml")
    assert scenario.description


def test_defaults_fill_what_is_left_out() -> None:
    scenario = from_dict({"workload": {"kind": "set"}}, "x.toml")
    assert scenario.name == "x"
    assert scenario.workload.kind == "set" and scenario.workload.concurrency == 5
    assert scenario.cluster.fsync == "always" and scenario.nemesis.faults == ()
    assert scenario.nemesis.crash_kind == "process"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cluster": {"nodez": 3}}, "unknown setting(s) nodez"),
        ({"cluster": {"fsync": "sometimes"}}, "fsync must be one of"),
        ({"workload": {"kind": "queue"}}, "kind must be one of"),
        ({"nemesis": {"faults": ["meteor"]}}, "unknown fault(s) meteor"),
        ({"nemesis": {"drop_probability": 1.5}}, "between 0 and 1"),
        ({"nemesis": {"delay": {"kind": "warp"}}}, "delay kind"),
        ({"checkers": {"names": ["vibes"]}}, "unknown checker(s) vibes"),
        ({"duration_ms": 0}, "duration_ms must be positive"),
        ({"surprise": 1}, "unknown setting(s) surprise"),
        ({"workload": {"concurrency": 0}}, "concurrency"),
        ({"nemesis": {"crash_kind": "meteor"}}, "crash_kind must be one of process, power, mixed, got 'meteor'"),
        ({"cluster": {"partitioner": "alphabet"}}, "partitioner must be one of hash, range"),
        ({"cluster": {"mode": "leader"}, "nemesis": {"faults": ["move"]}}, "move needs single mode"),
        ({"cluster": {"ranges": {"split_keys": 4, "merge_keys": 3}}}, "merge thresholds must be at most half"),
        ({"cluster": {"ranges": {"splitkeys": 4}}}, "ranges: unknown setting(s) splitkeys (known: check_interval_ms"),
    ],
)
def test_bad_scenarios_are_refused_with_the_field_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.toml") as info:
        from_dict(data, "bad.toml")
    assert message in str(info.value)


def test_unreadable_or_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(broken)


def test_a_power_loss_is_a_simulator_only_crash() -> None:
    never = load(SCENARIOS / "register-crash-fsync-never.toml")
    assert never.nemesis.crash_kind == "power"  # so it keeps showing what fsync=never loses
    with pytest.raises(ScenarioError, match=r"never\.toml: \[nemesis\] crash_kind = 'power' needs the simulator"):
        check_real_cluster(never, "never.toml")
    faults = load(SCENARIOS / "register-leader-faults.toml")
    assert faults.nemesis.crash_kind == "mixed"  # process crashes and power losses
    with pytest.raises(ScenarioError, match=r"crash_kind = 'mixed' needs the simulator"):
        check_real_cluster(faults, "faults.toml")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in SIMULATOR_ONLY])
def test_the_other_shipped_scenarios_can_run_on_a_real_cluster(name: str) -> None:
    check_real_cluster(load_shipped(name), name)


def test_the_replication_table_goes_to_both_runs_cluster_configs(tmp_path: Path) -> None:
    table = {"writes": "semi-sync", "reads": "lease", "lease_drift_ms": 50}
    scenario = from_dict({"cluster": {"mode": "leader"}, "replication": table}, "sweep.toml")
    assert scenario.replication == ReplicationConfig("semi-sync", "lease", 50)
    assert sim_cluster_config(scenario).replication == ReplicationConfig("semi-sync", "lease", 50)
    assert real_cluster_config(scenario, tmp_path, "s").replication == ReplicationConfig("semi-sync", "lease", 50)
    assert from_dict({}, "plain.toml").replication == ReplicationConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cluster": {"mode": "leader"}, "replication": {"writes": "quorum"}}, "replication.writes: 'quorum' is not"),
        ({"cluster": {"mode": "leader"}, "replication": {"lease_drift_ms": 1000}}, "must be positive and below"),
        ({"cluster": {"mode": "leader"}, "replication": {"lease_drift_ms": "100"}}, "expected int, got '100'"),
        ({"replication": {"reads": "stale"}}, "[replication] settings need leader mode"),
        ({"replication": {"fast": True}}, "[replication]: unknown setting(s) fast"),
    ],
)
def test_bad_replication_tables_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.toml") as info:
        from_dict(data, "bad.toml")
    assert message in str(info.value)


def test_the_leaderless_table_goes_to_both_runs_cluster_configs(tmp_path: Path) -> None:
    data = {"cluster": {"mode": "leaderless", "nodes": 4}, "workload": {"kind": "siblings"},
            "leaderless": {"r": 1, "w": "all", "sloppy": False, "policies": {"siblings/": "lww"}}}
    scenario = from_dict(data, "ll.toml")
    expected = LeaderlessConfig(r="1", w="all", sloppy=False, policies=(("siblings/", "lww"),))
    assert scenario.leaderless == expected
    assert sim_cluster_config(scenario).leaderless == expected
    assert real_cluster_config(scenario, tmp_path, "s").leaderless == expected
    assert from_dict({}, "plain.toml").leaderless == LeaderlessConfig()


LEADERLESS = {"mode": "leaderless"}
NO_CAS = {"cas_fraction": 0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"leaderless": {"r": 2}}, 'bad.toml: [leaderless] settings need mode = "leaderless"'),
        ({"cluster": LEADERLESS, "leaderless": {"r": 5}}, "leaderless.r:"),
        ({"cluster": LEADERLESS, "leaderless": {"w": [2]}}, "leaderless.w: expected a number or one of"),
        ({"cluster": LEADERLESS, "leaderless": {"policies": {"a/": "fifo"}}}, "'fifo' is not one of"),
        ({"cluster": LEADERLESS, "leaderless": {"max_siblings": 0}}, "leaderless.max_siblings must be positive"),
        ({"cluster": LEADERLESS, "leaderless": {"quick": True}}, "unknown"),
        ({"cluster": LEADERLESS, "leaderless": 3}, "[leaderless] must be a table"),
        ({"cluster": LEADERLESS}, "needs options.cas_fraction = 0 in leaderless mode"),
        ({"cluster": LEADERLESS, "workload": {"kind": "counter"}}, "kind counter is built on CAS"),
        ({"cluster": LEADERLESS, "workload": {"options": NO_CAS}, "nemesis": {"faults": ["move", "join"]}},
         "move, join: leaderless mode has no leaders and fixed replicas"),
        ({"workload": {"options": {"w": 2}}}, 'option w needs mode = "leaderless"'),
        ({"workload": {"kind": "siblings"}}, 'kind siblings needs mode = "leaderless"'),
    ],
)
def test_bad_leaderless_scenarios_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.toml") as info:
        from_dict(data, "bad.toml")
    assert message in str(info.value)


def test_a_printed_leaderless_scenario_loads_back() -> None:
    scenario = load_shipped("leaderless-lww.toml")
    printed = dataclasses.asdict(scenario)
    assert printed["leaderless"]["policies"] == (("siblings/", "lww"),)
    assert from_dict(printed, "printed.toml") == scenario
