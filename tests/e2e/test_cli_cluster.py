"""The `kvstore` command end to end: a real 3-node cluster driven through subprocesses, a crash and a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from kvstore.cluster import STATE_NAME, ClusterState, LocalCluster, node_process_alive, pick_free_ports

from .support import COMMAND_TIMEOUT_S, kvstore, text


def test_cluster_lifecycle_keeps_data_across_a_crash(cluster_dir: Path, tmp_path: Path) -> None:
    d = str(cluster_dir)
    up = kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "3")
    assert up.returncode == 0, text(up)
    assert "cluster up: 3 nodes" in up.stdout.decode()

    # Enough keys that every node owns some: the crash must hit stored data.
    for i in range(12):
        put = kvstore("put", f"key{i}", f"value {i}", "--dir", d)
        assert put.returncode == 0, text(put)
    payload = bytes(range(256))
    (tmp_path / "blob").write_bytes(payload)
    assert kvstore("put", "blob", "--file", str(tmp_path / "blob"), "--dir", d).returncode == 0
    assert kvstore("put", "piped", "-", "--dir", d, stdin=b"from stdin").returncode == 0

    got = kvstore("get", "key3", "--dir", d)
    assert (got.returncode, got.stdout) == (0, b"value 3")

    state = ClusterState.load(cluster_dir / STATE_NAME)
    assert state is not None
    old_n2 = state.record("n2")
    assert old_n2 is not None
    killed = kvstore("cluster", "kill", "n2", "--dir", d)
    assert killed.returncode == 0, text(killed)
    assert not node_process_alive(old_n2.pid)

    status = kvstore("cluster", "status", "--dir", d)
    assert status.returncode == 1  # not every node is healthy
    assert "2/3 nodes healthy" in status.stdout.decode()

    restarted = kvstore("cluster", "restart", "n2", "--dir", d)
    assert restarted.returncode == 0, text(restarted)
    new_n2 = ClusterState.load(cluster_dir / STATE_NAME).record("n2")  # type: ignore[union-attr]
    assert new_n2 is not None and new_n2.port == old_n2.port and new_n2.pid != old_n2.pid

    for i in range(12):
        got = kvstore("get", f"key{i}", "--dir", d)
        assert (got.returncode, got.stdout) == (0, f"value {i}".encode()), text(got)
    assert kvstore("get", "blob", "--dir", d).stdout == payload
    assert kvstore("get", "piped", "--dir", d).stdout == b"from stdin"

    status = kvstore("cluster", "status", "--dir", d)
    assert status.returncode == 0, text(status)
    assert "3/3 nodes healthy" in status.stdout.decode()
    assert sum(int(line.split()[-1]) for line in status.stdout.decode().splitlines()[1:4]) == 14

    down = kvstore("cluster", "down", "--dir", d)
    assert down.returncode == 0, text(down)
    assert "stopped: n1, n2, n3" in down.stdout.decode()
    assert not (cluster_dir / STATE_NAME).exists()
    assert (cluster_dir / "data").is_dir()  # data kept without --purge
    assert not any(node_process_alive(r.pid) for r in state.nodes)


def test_client_commands_report_errors_with_codes(cluster_dir: Path) -> None:
    d = str(cluster_dir)
    assert kvstore("cluster", "up", "--detach", "--dir", d, "--nodes", "2", "--engine", "memory").returncode == 0

    missing = kvstore("get", "nope", "--dir", d)
    assert missing.returncode == 1
    assert missing.stdout == b""
    assert "not_found" in missing.stderr.decode()
    assert len(missing.stderr.decode().strip().splitlines()) == 1

    assert kvstore("put", "a/1", "one", "--dir", d).returncode == 0
    assert kvstore("put", "a/2", "two", "--dir", d).returncode == 0
    assert kvstore("put", "b/1", "three", "--dir", d).returncode == 0
    scan = kvstore("scan", "--prefix", "a/", "--dir", d)
    assert (scan.returncode, scan.stdout.decode()) == (0, "a/1\tone\na/2\ttwo\n")
    ranged = kvstore("scan", "--start", "a/2", "--end", "b/2", "--limit", "1", "--dir", d)
    assert ranged.stdout.decode() == "a/2\ttwo\n"
    assert "more keys" in ranged.stderr.decode()

    deleted = kvstore("delete", "a/1", "--dir", d)
    assert (deleted.returncode, deleted.stdout.decode().strip()) == (0, "ok: a/1 deleted")
    assert kvstore("get", "a/1", "--dir", d).returncode == 1

    too_long = kvstore("put", "k" * 2000, "v", "--dir", d)
    assert too_long.returncode == 2
    assert "bad_key" in too_long.stderr.decode()

    assert kvstore("cluster", "down", "--purge", "--dir", d).returncode == 0
    assert not cluster_dir.exists()


def test_commands_without_a_cluster_say_how_to_start_one(tmp_path: Path) -> None:
    result = kvstore("get", "x", "--dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "kvstore cluster up" in result.stderr.decode()


def test_unreachable_cluster_exits_3() -> None:
    (port,) = pick_free_ports(1)
    result = kvstore("get", "x", "--url", f"http://127.0.0.1:{port}", "--timeout-ms", "500")
    assert result.returncode == 3, text(result)
    assert "unavailable" in result.stderr.decode()


def test_foreground_cluster_stops_its_nodes_on_ctrl_c(cluster_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "cluster", "up", "--dir", str(cluster_dir), "--nodes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for raw in proc.stdout:
            lines.append(raw.decode())
            if raw.startswith(b"press Ctrl-C"):
                break
        assert any(line.startswith("cluster up: 2 nodes") for line in lines)
        state = ClusterState.load(cluster_dir / STATE_NAME)
        assert state is not None and all(node_process_alive(r.pid) for r in state.nodes)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read().decode()
        assert proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
        assert "cluster down (n1, n2)" in rest
        assert not any(node_process_alive(r.pid) for r in state.nodes)
        assert not (cluster_dir / STATE_NAME).exists()
    finally:
        proc.kill()
        proc.wait()


def test_node_command_rejects_a_node_not_in_the_config(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, nodes=1)
    result = kvstore("node", "--config", str(cluster.config_path), "--node", "n7")
    assert result.returncode == 1
    assert "no node 'n7'" in result.stderr.decode()
