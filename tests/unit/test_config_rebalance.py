"""``[cluster] rebalance``: on by default, off kept through TOML, anything but a bool refused."""

from __future__ import annotations

import pytest

from kvstore.config import ClusterConfig, ConfigError, local_cluster


def test_the_rebalancer_is_on_by_default_and_the_default_is_not_written() -> None:
    config = local_cluster(2)
    assert config.rebalance is True
    assert "rebalance" not in config.to_dict()["cluster"]


def test_rebalance_off_round_trips_through_toml() -> None:
    config = local_cluster(2, rebalance=False)
    data = config.to_dict()
    assert data["cluster"]["rebalance"] is False
    assert ClusterConfig.from_dict(data) == config


def test_a_rebalance_that_is_not_a_bool_is_refused_naming_the_setting() -> None:
    data = local_cluster(2).to_dict()
    data["cluster"]["rebalance"] = "no"
    with pytest.raises(ConfigError, match=r"cluster\.rebalance: expected bool"):
        ClusterConfig.from_dict(data)
