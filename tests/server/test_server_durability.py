"""A real node process with SQLite: under fsync=always every acknowledged write survives kill -9; under
fsync=never what the periodic write-out wrote does too (kill -9 is a process crash: the OS keeps it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from kvstore.config import StorageConfig
from kvstore.flush_policy import NEVER_FLUSH_INTERVAL_MS
from kvstore.server.inprocess import loopback_config

WRITERS = 16
# Kill once this many writes are acknowledged; the writers are still going when the signal lands.
KILL_AFTER_ACKS = 300
# Bounds on a hung process, never a measure of speed.
STARTUP_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def node_process(config_path: Path, node_id: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m kvstore.server.main`` until it prints its listening line; always killed on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", node_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
        assert line.decode().startswith(f"kvstore node {node_id} listening on http://127.0.0.1:"), line
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def write_until_killed(url: str, writer: int, acked: dict[str, bytes], enough: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http:
        for i in range(100_000):
            key, value = f"w{writer}/{i}", f"value {writer}/{i}".encode()
            try:
                async with http.put(f"{url}/kv/{key}", data=value) as response:
                    if response.status != 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                return  # the node died under this write: it was never acknowledged
            acked[key] = value
            if len(acked) >= KILL_AFTER_ACKS:
                enough.set()


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    config = loopback_config(
        1, storage=StorageConfig(engine="sqlite", fsync="always", data_dir=str(tmp_path / "data"))
    )
    config_path = tmp_path / "cluster.toml"
    config.save(config_path)
    url = config.node("n1").url
    acked: dict[str, bytes] = {}

    async with node_process(config_path, "n1") as process:
        enough = asyncio.Event()
        writers = [asyncio.create_task(write_until_killed(url, w, acked, enough)) for w in range(WRITERS)]
        await asyncio.wait_for(enough.wait(), STARTUP_TIMEOUT_S)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await asyncio.gather(*writers)
    assert process.returncode == -signal.SIGKILL
    assert len(acked) >= KILL_AFTER_ACKS

    async with node_process(config_path, "n1"), aiohttp.ClientSession() as http:
        missing = []
        for key, value in sorted(acked.items()):
            async with http.get(f"{url}/kv/{key}") as response:
                if response.status != 200 or await response.read() != value:
                    missing.append(key)
        assert missing == []
        async with http.get(f"{url}/health") as response:
            health = await response.json()
        # LSNs count this life's changes only: recovery wrote nothing, so nothing waits for a sync.
        assert health["synced_lsn"] == health["written_lsn"]



async def test_under_never_the_periodic_write_out_survives_kill_9(tmp_path: Path) -> None:
    config = loopback_config(1, storage=StorageConfig(engine="sqlite", fsync="never", data_dir=str(tmp_path)))
    config_path = tmp_path / "cluster.toml"
    config.save(config_path)
    url = config.node("n1").url
    async with node_process(config_path, "n1") as process, aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.put(f"{url}/kv/k{i}", data=b"v") as response:
                assert response.status == 200
        # Past one write-out interval (with room for a slow machine), then a crash with no chance to sync.
        await asyncio.sleep(3 * NEVER_FLUSH_INTERVAL_MS / 1000)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    async with (
        node_process(config_path, "n1"),
        aiohttp.ClientSession() as http,
        http.get(f"{url}/scan?prefix=k") as response,
    ):
        assert len((await response.json())["items"]) == 20


async def test_sigterm_syncs_before_exiting(tmp_path: Path) -> None:
    # Under fsync=never the writes wait up to a second for their write-out; a graceful stop syncs them first.
    config = loopback_config(1, storage=StorageConfig(engine="sqlite", fsync="never", data_dir=str(tmp_path)))
    config_path = tmp_path / "cluster.toml"
    config.save(config_path)
    url = config.node("n1").url
    async with node_process(config_path, "n1") as process, aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.put(f"{url}/kv/k{i}", data=b"v") as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STARTUP_TIMEOUT_S) == 0
    async with (
        node_process(config_path, "n1"),
        aiohttp.ClientSession() as http,
        http.get(f"{url}/scan?prefix=k") as response,
    ):
        assert len((await response.json())["items"]) == 20


def test_a_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvstore.server.main", "--config", str(tmp_path / "none.toml"), "--node", "n1"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("kvstore node: cannot read config")
    assert "Traceback" not in result.stderr
