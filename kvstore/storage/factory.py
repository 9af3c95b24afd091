"""open_storage: the engine a node's config asks for."""

from __future__ import annotations

from pathlib import Path

from kvstore.config import ClusterConfig, ConfigError
from kvstore.storage.base import Storage
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.sqlite import SqliteStorage


def storage_path(config: ClusterConfig, node_id: str) -> Path:
    """``<data_dir>/<node id>/kv.sqlite3``: each node keeps its own directory."""
    config.node(node_id)  # a clear error for a node that is not a member
    if node_id in (".", "..") or "/" in node_id or "\\" in node_id or "\0" in node_id:
        raise ConfigError(f"node id {node_id!r} cannot name a data directory")
    return Path(config.storage.data_dir) / node_id / "kv.sqlite3"


def open_storage(config: ClusterConfig, node_id: str) -> Storage:
    settings = config.storage
    if settings.engine == "memory":
        config.node(node_id)
        return MemoryStorage()
    return SqliteStorage(storage_path(config, node_id), settings.fsync)
