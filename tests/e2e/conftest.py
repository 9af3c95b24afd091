"""Fixtures for end-to-end tests: whatever a test starts is always stopped."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.cluster import STATE_NAME, ClusterState, LocalCluster, node_process_alive


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for one cluster; whatever nodes its state file names are stopped afterwards."""
    directory = tmp_path / "cluster"
    try:
        yield directory
    finally:
        if (directory / STATE_NAME).exists():
            state = ClusterState.load(directory / STATE_NAME)
            try:
                LocalCluster.open(directory).down(grace_s=5.0)
            finally:
                # Belt and braces: if `down` failed, no recorded node survives the test.
                for rec in state.nodes if state else ():
                    if node_process_alive(rec.pid):
                        os.kill(rec.pid, signal.SIGKILL)
