"""Fixtures of the simulator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sim_stub import LIVE, StubNode

from kvstore.sim import cluster as sim_cluster


@pytest.fixture
def stub_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, StubNode]]:
    """Every SimCluster made in the test runs StubNodes; yields the live ones by node id."""
    LIVE.clear()
    monkeypatch.setattr(sim_cluster, "Node", StubNode)
    yield LIVE
    LIVE.clear()
