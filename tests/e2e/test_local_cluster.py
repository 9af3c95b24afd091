"""The LocalCluster Python API with real node processes: the client sees crashes and restarts, and a
cluster that cannot start leaves no process behind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kvstore.client import Client
from kvstore.cluster import (
    STATE_NAME,
    ClusterError,
    ClusterState,
    ClusterUsageError,
    LocalCluster,
    node_process_alive,
    running_cluster,
)
from kvstore.errors import ErrorCode, KvError
from partitioning.hash_partitioner import partition_for_key


def owned_by(client: Client, node_id: str, count: int) -> list[str]:
    """``count`` keys whose partition ``node_id`` owns, per the cluster's own partition map."""
    report = client.cluster()
    owned = next(set(m["partitions"]) for m in report["members"] if m["node_id"] == node_id)
    keys = (f"k{i}" for i in range(10_000))
    return [k for k in keys if partition_for_key(k, report["partitions"]) in owned][:count]


def test_kill_makes_the_owners_keys_unavailable_until_restart(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "c", nodes=3, engine="sqlite", fsync="always") as cluster, Client(
        cluster.urls(), timeout_s=5.0
    ) as client:
        keys = owned_by(client, "n2", 3)
        for key in keys:
            client.put(key, f"v-{key}")
        cluster.kill("n2")
        assert not cluster.alive("n2")
        with pytest.raises(KvError) as error:
            client.get(keys[0])
        # Refused (503) as a rule; a request racing the peer connection's teardown may time out (504).
        assert error.value.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)
        cluster.restart("n2")
        assert cluster.alive("n2")
        assert [client.get(k).value for k in keys] == [f"v-{k}".encode() for k in keys]  # type: ignore[union-attr]
        assert [s.healthy for s in cluster.status()] == [True, True, True]
    assert not (tmp_path / "c" / STATE_NAME).exists()


def test_a_taken_port_fails_up_and_stops_the_nodes_already_started(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.config.nodes[2].port))
        squatter.listen()
        with pytest.raises(ClusterError, match="in use"):
            cluster.up()
    assert not (tmp_path / STATE_NAME).exists()
    assert cluster._children == {}


def test_a_node_that_dies_at_startup_is_reported_with_its_log(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=2)
    # n2's data directory cannot be created: its storage fails to open and the process exits.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "n2").write_text("in the way")
    with pytest.raises(ClusterError, match="n2 exited during startup") as error:
        cluster.up(timeout_s=60)
    assert "n2.log" in str(error.value)
    state = ClusterState.load(tmp_path / STATE_NAME)
    assert state is None
    assert cluster._children == {}


def test_status_after_down_shows_every_node_stopped(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=2, engine="memory") as cluster:
        pids = [r.pid for r in cluster.state().nodes]
    assert [(s.alive, s.healthy) for s in LocalCluster.open(tmp_path).status()] == [(False, False), (False, False)]
    assert not any(node_process_alive(pid) for pid in pids)


def test_add_and_remove_node_never_reuse_an_id_and_refuse_what_cannot_be_done(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "c", nodes=2, engine="sqlite", fsync="always") as cluster, Client(
        cluster.urls(), timeout_s=5.0
    ) as client:
        for i in range(20):
            client.put(f"k{i}", f"v{i}")
        assert cluster.add_node(timeout_s=60) == "n3"
        cluster.remove_node("n3", timeout_s=60)
        assert cluster.config.node_ids == ("n1", "n2")
        assert cluster.config.initial_nodes == ("n1", "n2")
        # n3 stays in the roster as removed (and its data directory stays): the next node is n4.
        assert cluster.add_node(timeout_s=60) == "n4"
        assert [(s.node_id, s.member_state) for s in cluster.status()] == [
            ("n1", "active"), ("n2", "active"), ("n4", "active"),
        ]
        assert sum(s.partitions or 0 for s in cluster.status()) == cluster.config.partitions
        with pytest.raises(ClusterUsageError, match="no node 'n3'"):
            cluster.remove_node("n3")
        cluster.kill("n4")
        with pytest.raises(ClusterUsageError, match="n4 is not running"):
            cluster.remove_node("n4")
        cluster.restart("n4")
        cluster.remove_node("n1", timeout_s=60)
        cluster.remove_node("n2", timeout_s=60)
        with pytest.raises(ClusterUsageError, match="n4 is the last active member"):
            cluster.remove_node("n4")
        # Read through n4, the one node left: the client knows only the URLs it was given, n1 and n2.
        with Client(cluster.urls(), timeout_s=5.0) as survivor:
            values = [survivor.get(f"k{i}") for i in range(20)]
        assert [v.value if v else None for v in values] == [f"v{i}".encode() for i in range(20)]
