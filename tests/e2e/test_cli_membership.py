"""`kvstore cluster add-node` and `remove-node` as a user runs them: real node processes on free ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvstore.client import Client
from kvstore.cluster import (
    STATE_NAME,
    ClusterState,
    LocalCluster,
    cluster_view,
    node_process_alive,
)
from kvstore.config import ClusterConfig

from .support import kvstore, text

KEYS = 30


def roster_of(view: dict[str, Any]) -> dict[str, str]:
    return {entry["node"]: entry["state"] for entry in view["partition_map"]["roster"]}


def views_of(directory: Path) -> dict[str, dict[str, Any]]:
    views = {}
    for node in LocalCluster.open(directory).config.nodes:
        view = cluster_view(node.url)
        assert view is not None, f"{node.node_id} does not answer GET /cluster"
        views[node.node_id] = view
    return views


def test_add_node_then_remove_node_moves_the_data_and_keeps_it_readable(cluster_dir: Path) -> None:
    d = str(cluster_dir)
    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "3")
    assert up.returncode == 0, text(up)
    config = ClusterConfig.load(cluster_dir / "cluster.toml")
    with Client(LocalCluster.open(cluster_dir).urls(), timeout_s=5.0) as client:
        for i in range(KEYS):
            client.put(f"key{i}", f"value {i}")

    added = kvstore("cluster", "add-node", "--dir", d)
    assert added.returncode == 0, text(added)
    lines = added.stdout.decode().splitlines()
    assert lines[0].startswith("n4  http://127.0.0.1:"), text(added)
    assert lines[1].startswith("n4 joined; partitions owned: n1 "), text(added)

    # cluster.toml: n4 in [nodes], the founders named so that the first layout stays as it was.
    grown = ClusterConfig.load(cluster_dir / "cluster.toml")
    assert grown.node_ids == ("n1", "n2", "n3", "n4")
    assert grown.initial_nodes == ("n1", "n2", "n3")
    assert grown.nodes[:3] == config.nodes
    n4 = ClusterState.load(cluster_dir / STATE_NAME).record("n4")  # type: ignore[union-attr]
    assert n4 is not None and node_process_alive(n4.pid) and lines[0].split()[1] == n4.url

    # Every node's view: n4 active and owning partitions, the same epoch everywhere, balanced.
    views = views_of(cluster_dir)
    assert set(views) == {"n1", "n2", "n3", "n4"}
    for node_id, view in views.items():
        assert roster_of(view) == dict.fromkeys(("n1", "n2", "n3", "n4"), "active"), node_id
        owners = [replicas[0] for replicas in view["partition_map"]["replicas"]]
        assert owners.count("n4") >= 1, node_id
        assert view["balanced"] is True, node_id
    assert len({view["epoch"] for view in views.values()}) == 1

    status = kvstore("cluster", "status", "--dir", d)
    assert status.returncode == 0, text(status)
    assert "4/4 nodes healthy" in status.stdout.decode()
    rows = {line.split()[0]: line.split() for line in status.stdout.decode().splitlines()[1:5]}
    assert [rows[n][5] for n in ("n1", "n2", "n3", "n4")] == ["active"] * 4
    assert sum(int(rows[n][6]) for n in rows) == config.partitions
    assert sum(int(rows[n][7]) for n in rows) == KEYS

    old_n1 = ClusterState.load(cluster_dir / STATE_NAME).record("n1")  # type: ignore[union-attr]
    assert old_n1 is not None
    removed = kvstore("cluster", "remove-node", "n1", "--dir", d)
    assert removed.returncode == 0, text(removed)
    assert removed.stdout.decode().startswith("n1 drained and stopped; partitions owned: n2 "), text(removed)
    assert not node_process_alive(old_n1.pid)
    state = ClusterState.load(cluster_dir / STATE_NAME)
    assert state is not None and [r.node_id for r in state.nodes] == ["n2", "n3", "n4"]
    shrunk = ClusterConfig.load(cluster_dir / "cluster.toml")
    assert shrunk.node_ids == ("n2", "n3", "n4")
    assert shrunk.initial_nodes == ("n1", "n2", "n3")  # founders as they were, n1 included

    views = views_of(cluster_dir)
    for node_id, view in views.items():
        assert roster_of(view)["n1"] == "removed", node_id
        assert all("n1" not in replicas for replicas in view["partition_map"]["replicas"]), node_id
        assert view["balanced"] is True, node_id
    assert len({view["epoch"] for view in views.values()}) == 1

    # Every key readable, through the command line and through each remaining node.
    got = kvstore("get", "key7", "--dir", d)
    assert (got.returncode, got.stdout) == (0, b"value 7"), text(got)
    for node in shrunk.nodes:
        with Client([node.url], timeout_s=5.0, route_by_map=False) as client:
            values = [client.get(f"key{i}") for i in range(KEYS)]
        assert [v.value if v else None for v in values] == [f"value {i}".encode() for i in range(KEYS)], node.node_id

    status = kvstore("cluster", "status", "--dir", d)
    assert status.returncode == 0, text(status)
    assert "3/3 nodes healthy" in status.stdout.decode()
    assert "n1 " not in status.stdout.decode()

    down = kvstore("cluster", "down", "--dir", d)
    assert down.returncode == 0, text(down)
    assert "stopped: n2, n3, n4" in down.stdout.decode()


def test_membership_commands_refuse_bad_requests(cluster_dir: Path, tmp_path: Path) -> None:
    d = str(cluster_dir)
    nowhere = kvstore("cluster", "add-node", "--dir", str(tmp_path / "none"))
    assert nowhere.returncode == 1
    assert "no cluster in" in nowhere.stderr.decode()

    for bad in (["remove-node"], ["add-node", "--timeout", "0"], ["add-node", "--timeout", "soon"],
                ["remove-node", "n1", "n2"]):
        result = kvstore("cluster", *bad, "--dir", d)
        assert result.returncode == 2, (bad, text(result))
        assert "usage:" in result.stderr.decode(), bad

    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "2")
    assert up.returncode == 0, text(up)
    before = (cluster_dir / "cluster.toml").read_text()

    unknown = kvstore("cluster", "remove-node", "n9", "--dir", d)
    assert unknown.returncode == 2
    assert unknown.stderr.decode() == "kvstore: error: no node 'n9' in the cluster (nodes: n1, n2)\n"

    # A node that cannot answer /health before the deadline is stopped and taken out of the config again.
    hurried = kvstore("cluster", "add-node", "--timeout", "0.001", "--dir", d)
    assert hurried.returncode == 1, text(hurried)
    assert "n3 did not answer /health" in hurried.stderr.decode()
    assert (cluster_dir / "cluster.toml").read_text() == before
    state = ClusterState.load(cluster_dir / STATE_NAME)
    assert state is not None and [r.node_id for r in state.nodes] == ["n1", "n2"]

    assert kvstore("cluster", "kill", "n2", "--dir", d).returncode == 0
    dead = kvstore("cluster", "remove-node", "n2", "--dir", d)
    assert dead.returncode == 2
    assert "node n2 is not running" in dead.stderr.decode()

    assert kvstore("cluster", "down", "--dir", d).returncode == 0
    stopped = kvstore("cluster", "add-node", "--dir", d)
    assert stopped.returncode == 2
    assert "is running to admit a new one" in stopped.stderr.decode()
    assert (cluster_dir / "cluster.toml").read_text() == before


def test_the_last_active_member_is_not_removed(cluster_dir: Path) -> None:
    d = str(cluster_dir)
    assert kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "1", "--engine", "memory").returncode == 0
    last = kvstore("cluster", "remove-node", "n1", "--dir", d)
    assert last.returncode == 2
    assert "n1 is the last active member" in last.stderr.decode()
    state = ClusterState.load(cluster_dir / STATE_NAME)
    assert state is not None and node_process_alive(state.nodes[0].pid)


def test_no_node_joins_or_drains_under_fsync_never(cluster_dir: Path) -> None:
    d = str(cluster_dir)
    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "2", "--engine", "memory", "--fsync", "never")
    assert up.returncode == 0, text(up)
    for action in (["add-node"], ["remove-node", "n2"]):
        refused = kvstore("cluster", *action, "--dir", d)
        assert refused.returncode == 2, text(refused)
        assert 'fsync "never"' in refused.stderr.decode()
    assert ClusterConfig.load(cluster_dir / "cluster.toml").node_ids == ("n1", "n2")
