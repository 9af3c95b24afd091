"""The ``[replication]`` table: its values, its bounds, and that it needs leader mode."""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.config import ClusterConfig, ConfigError, ReplicationConfig


def _config(mode: str = "leader", **replication: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "cluster": {"mode": mode},
        "nodes": {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"},
    }
    if replication:
        data["replication"] = replication
    return data


def test_defaults_are_sync_writes_and_read_index_reads() -> None:
    config = ClusterConfig.from_dict(_config())
    assert config.replication == ReplicationConfig("sync", "read-index", 100)


def test_leader_mode_takes_every_setting_and_round_trips_through_toml() -> None:
    config = ClusterConfig.from_dict(_config(writes="semi-sync", reads="lease", lease_drift_ms=250))
    assert config.replication == ReplicationConfig("semi-sync", "lease", 250)
    assert ClusterConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"writes": "quorum"}, "replication.writes: 'quorum' is not one of ('sync', 'semi-sync', 'async')"),
        ({"reads": "fast"}, "replication.reads: 'fast' is not one of ('read-index', 'lease', 'unsafe', 'stale')"),
        ({"lease_drift_ms": 1000}, "replication.lease_drift_ms (1000) must be positive and below "
         "timeouts.election_timeout_ms (1000)"),
        ({"lease_drift_ms": 0}, "replication.lease_drift_ms (0) must be positive"),
        ({"lease_drift_ms": "100"}, "replication.lease_drift_ms: expected int, got '100'"),
        ({"quorum": 2}, "replication.quorum: unknown setting (known: lease_drift_ms, reads, writes)"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterConfig.from_dict(_config(**table))
    assert message in str(caught.value)


def test_single_mode_refuses_anything_but_the_defaults() -> None:
    assert ClusterConfig.from_dict(_config("single", writes="sync", reads="read-index")).replication == (
        ReplicationConfig()
    )
    with pytest.raises(ConfigError, match=r"\[replication\] settings need leader mode"):
        ClusterConfig.from_dict(_config("single", reads="stale"))
    # A single-mode config written by to_dict (defaults included) loads again.
    single = ClusterConfig.from_dict(_config("single"))
    assert ClusterConfig.from_dict(single.to_dict()) == single


@pytest.mark.parametrize(
    ("reads", "consistency", "mode"),
    [
        ("read-index", "", "read-index"),
        ("stale", "", "stale"),
        ("lease", "linearizable", "lease"),
        ("read-index", "linearizable", "read-index"),
        ("unsafe", "linearizable", "read-index"),
        ("stale", "linearizable", "read-index"),
        ("read-index", "unsafe", "unsafe"),
    ],
)
def test_read_mode_resolves_the_cluster_default_and_linearizable(reads: str, consistency: str, mode: str) -> None:
    assert ReplicationConfig(reads=reads).read_mode(consistency) == mode


def test_write_mode_resolves_the_cluster_default() -> None:
    assert ReplicationConfig(writes="async").write_mode("") == "async"
    assert ReplicationConfig(writes="async").write_mode("sync") == "sync"
