"""A node process whose storage is damaged refuses to start: exit status 1, the file and the problem named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.config import ClusterConfig, StorageConfig
from kvstore.server.inprocess import loopback_config
from kvstore.storage.base import Record
from kvstore.storage.factory import storage_path
from kvstore.storage.sqlite import SqliteStorage

# A bound on a node that hangs, never a measure of speed.
EXIT_TIMEOUT_S = 30.0


def _config(tmp_path: Path) -> tuple[ClusterConfig, Path]:
    config = loopback_config(1, storage=StorageConfig(engine="sqlite", fsync="always", data_dir=str(tmp_path / "data")))
    config_path = tmp_path / "cluster.toml"
    config.save(config_path)
    return config, config_path


def _run_node(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", "n1"],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize(
    ("folded", "damaged_row"),
    [
        (True, "table records: key 'key3' in partition 0: checksum mismatch."),
        # Killed, not closed: the writes are still in the journal, not folded into records.
        (False, "table journal: row 3 (key 'key3' in partition 0): checksum mismatch."),
    ],
)
def test_a_node_on_a_damaged_row_refuses_to_start(tmp_path: Path, folded: bool, damaged_row: str) -> None:
    config, config_path = _config(tmp_path)
    path = storage_path(config, "n1")
    storage = SqliteStorage(path)
    for i in range(1, 6):
        storage.write(0, f"key{i}", Record(b"value number %d" % i, i))
        storage.set_applied_index(0, i)
    storage.sync()
    storage.journal.close(fold=folded)
    data = path.read_bytes()
    offset = data.index(b"value number 3")
    path.write_bytes(data[:offset] + b"V" + data[offset + 1 :])  # "Value number 3": a value nobody wrote

    result = _run_node(config_path)
    assert result.returncode == 1
    assert result.stdout == ""  # it never listened
    assert result.stderr.startswith(f"kvstore node n1: {path}: {damaged_row}"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_node_whose_wal_hides_commits_refuses_to_start(tmp_path: Path) -> None:
    config, config_path = _config(tmp_path)
    path = storage_path(config, "n1")
    storage = SqliteStorage(path)
    for i in range(1, 5):
        storage.write(0, f"key{i}", Record(b"v", i))
        storage.sync()
    # Copied while open, as a crash leaves them: the WAL holds one commit per sync.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(path, crashed / path.name)
    wal = Path(f"{path}-wal").read_bytes()
    storage.close()
    shutil.copy(crashed / path.name, path)
    Path(f"{path}-wal").write_bytes(wal[:100] + bytes([wal[100] ^ 0xFF]) + wal[101:])  # inside frame 1's page

    result = _run_node(config_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"kvstore node n1: {path}-wal: frame 1 is damaged (checksum mismatch)")
    assert result.stderr.rstrip().endswith(f"truncate -s 32 {path}-wal")
    assert "Traceback" not in result.stderr
