"""The local supervisor's bookkeeping: free ports, the state file, stale and reused pids, config reuse.

Real node processes are exercised end to end in tests/e2e; here a stand-in process whose command line
carries the node marker plays a running node, so the supervisor's pid checks and signals are real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.cluster import (
    CONFIG_NAME,
    NODE_MODULE,
    STATE_NAME,
    ClusterError,
    ClusterState,
    LocalCluster,
    NodeRecord,
    node_process_alive,
    pick_free_ports,
    port_is_free,
)
from kvstore.config import ClusterConfig, ConfigError


@pytest.fixture
def fake_node() -> Iterator[subprocess.Popen[bytes]]:
    """A process that looks like a node to the supervisor (its command line names the node module)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", NODE_MODULE])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_state(directory: Path, *records: NodeRecord) -> None:
    ClusterState(records).save(directory / STATE_NAME)


# ---------------------------------------------------------------- ports


def test_pick_free_ports_gives_distinct_bindable_ports() -> None:
    ports = pick_free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p < 65536 for p in ports)
    assert all(port_is_free("127.0.0.1", p) for p in ports)


def test_port_in_use_is_not_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free("127.0.0.1", listener.getsockname()[1])


# ---------------------------------------------------------------- state file


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    state = ClusterState((NodeRecord("n2", 222, "127.0.0.1", 7002), NodeRecord("n1", 111, "127.0.0.1", 7001)))
    state.save(tmp_path / STATE_NAME)
    loaded = ClusterState.load(tmp_path / STATE_NAME)
    assert loaded is not None
    assert loaded == state
    assert loaded.record("n2") == NodeRecord("n2", 222, "127.0.0.1", 7002)
    assert loaded.record("n2").url == "http://127.0.0.1:7002"  # type: ignore[union-attr]
    assert json.loads((tmp_path / STATE_NAME).read_text())["version"] == 1


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert ClusterState.load(tmp_path / STATE_NAME) is None


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"version": 99, "nodes": {}}', '{"version": 1, "nodes": {"n1": {"pid": "x"}}}'],
)
def test_corrupt_state_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_NAME).write_text(content)
    with pytest.raises(ClusterError, match=STATE_NAME):
        ClusterState.load(tmp_path / STATE_NAME)


def test_with_record_replaces_the_node_entry_in_place_or_appends() -> None:
    state = ClusterState((NodeRecord("n1", 1, "127.0.0.1", 7001), NodeRecord("n2", 2, "127.0.0.1", 7002)))
    updated = state.with_record(NodeRecord("n1", 3, "127.0.0.1", 7001))
    assert [(r.node_id, r.pid) for r in updated.nodes] == [("n1", 3), ("n2", 2)]
    grown = updated.with_record(NodeRecord("n10", 4, "127.0.0.1", 7010))
    assert [r.node_id for r in grown.nodes] == ["n1", "n2", "n10"]


# ---------------------------------------------------------------- pids


def test_process_alive_only_for_live_node_processes(fake_node: subprocess.Popen[bytes]) -> None:
    assert node_process_alive(fake_node.pid)
    assert not node_process_alive(dead_pid())


def test_reused_pid_is_not_a_node() -> None:
    # The test runner itself is alive, but its command line is not a node's.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not node_process_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_zombie_is_not_alive(fake_node: subprocess.Popen[bytes]) -> None:
    fake_node.kill()
    # Wait for the exit without reaping it: the pid stays as a zombie until wait().
    os.waitid(os.P_PID, fake_node.pid, os.WEXITED | os.WNOWAIT)
    assert Path(f"/proc/{fake_node.pid}").exists()
    assert not node_process_alive(fake_node.pid)


# ---------------------------------------------------------------- create / open


def test_create_writes_a_config_with_free_ports_and_local_data(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", nodes=4, fsync="batch", engine="memory")
    config = ClusterConfig.load(tmp_path / "c" / CONFIG_NAME)
    assert config == cluster.config
    assert config.node_ids == ("n1", "n2", "n3", "n4")
    assert len({n.port for n in config.nodes}) == 4
    assert {n.host for n in config.nodes} == {"127.0.0.1"}
    assert config.storage.fsync == "batch"
    assert config.storage.engine == "memory"
    assert config.storage.data_dir == str((tmp_path / "c" / "data").resolve())
    assert cluster.urls() == [f"http://127.0.0.1:{n.port}" for n in config.nodes]


def test_create_defaults_to_three_durable_nodes(tmp_path: Path) -> None:
    config = LocalCluster.create(tmp_path).config
    assert (len(config.nodes), config.storage.engine, config.storage.fsync) == (3, "sqlite", "always")


def test_create_again_reuses_the_config_and_its_free_ports(tmp_path: Path) -> None:
    first = LocalCluster.create(tmp_path, nodes=2)
    again = LocalCluster.create(tmp_path)
    assert again.config == first.config


def test_create_again_moves_a_node_whose_port_was_taken(tmp_path: Path) -> None:
    first = LocalCluster.create(tmp_path, nodes=2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first.config.nodes[0].port))
        squatter.listen()
        again = LocalCluster.create(tmp_path)
    assert again.config.node_ids == first.config.node_ids
    assert again.config.nodes[0].port != first.config.nodes[0].port
    assert again.config.storage == first.config.storage


def test_create_refuses_options_that_contradict_the_existing_cluster(tmp_path: Path) -> None:
    LocalCluster.create(tmp_path, nodes=3)
    with pytest.raises(ClusterError, match="--nodes 3"):
        LocalCluster.create(tmp_path, nodes=5)


@pytest.mark.parametrize(("option", "kwargs"), [("--engine", {"engine": "rocks"}), ("--fsync", {"fsync": "maybe"})])
def test_create_rejects_unknown_choices(tmp_path: Path, option: str, kwargs: dict[str, str]) -> None:
    with pytest.raises(ClusterError, match=option):
        LocalCluster.create(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_open_without_a_cluster_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="kvstore cluster up"):
        LocalCluster.open(tmp_path)


# ---------------------------------------------------------------- stale and live state


def test_stale_state_shows_dead_nodes_and_down_clears_it(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=2)
    n1 = cluster.config.nodes[0]
    write_state(tmp_path, NodeRecord("n1", dead_pid(), n1.host, n1.port))
    statuses = LocalCluster.open(tmp_path).status()
    assert [(s.node_id, s.alive, s.healthy, s.key_count) for s in statuses] == [
        ("n1", False, False, None),
        ("n2", False, False, None),
    ]
    assert LocalCluster.open(tmp_path).down() == []
    assert not (tmp_path / STATE_NAME).exists()
    assert (tmp_path / CONFIG_NAME).exists()


def test_kill_of_a_dead_node_is_an_error(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=2)
    write_state(tmp_path, NodeRecord("n1", dead_pid(), "127.0.0.1", cluster.config.nodes[0].port))
    with pytest.raises(ClusterError, match="n1 is not running"):
        cluster.kill("n1")


def test_unknown_node_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=2)
    with pytest.raises(ConfigError, match="n1, n2"):
        cluster.kill("n9")


def test_live_cluster_refuses_a_second_up(tmp_path: Path, fake_node: subprocess.Popen[bytes]) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=1)
    write_state(tmp_path, NodeRecord("n1", fake_node.pid, "127.0.0.1", cluster.config.nodes[0].port))
    with pytest.raises(ClusterError, match="already running"):
        LocalCluster.create(tmp_path)
    with pytest.raises(ClusterError, match="already running"):
        cluster.up()


def test_kill_and_down_signal_the_recorded_process(tmp_path: Path, fake_node: subprocess.Popen[bytes]) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=1)
    write_state(tmp_path, NodeRecord("n1", fake_node.pid, "127.0.0.1", cluster.config.nodes[0].port))
    assert cluster.alive("n1")
    assert [s.alive for s in cluster.status()] == [True]
    assert cluster.down(grace_s=5.0) == ["n1"]
    assert fake_node.wait(timeout=10) == -15  # SIGTERM
    assert not (tmp_path / STATE_NAME).exists()


def test_down_purge_removes_the_directory(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", nodes=1)
    (tmp_path / "c" / "n1.log").write_text("log")
    cluster.down(purge=True)
    assert not (tmp_path / "c").exists()


def test_base_port_gives_consecutive_ports(tmp_path: Path) -> None:
    # A base whose next two ports are free too (the OS's pick says nothing about its neighbours).
    base = next(
        b for b in (pick_free_ports(1)[0] for _ in range(100)) if all(port_is_free("127.0.0.1", b + i) for i in (1, 2))
    )
    cluster = LocalCluster.create(tmp_path, nodes=3, base_port=base)
    assert [n.port for n in cluster.config.nodes] == [base, base + 1, base + 2]


def test_base_port_in_use_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ClusterError, match=f"{port}.* in use"):
            LocalCluster.create(tmp_path, nodes=1, base_port=port)


def test_each_new_cluster_gets_its_own_peer_secret(tmp_path: Path) -> None:
    one = LocalCluster.create(tmp_path / "one").config.secret
    two = LocalCluster.create(tmp_path / "two").config.secret
    assert one != two
    assert len(one) == 32
