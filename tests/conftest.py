"""Project-wide pytest settings."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvstore.config import ClusterConfig


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" (exit 5) must fail the run, never pass silently.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


HISTORIES_DIR = Path(__file__).resolve().parent / "data" / "histories"


@pytest.fixture
def public_histories() -> Path:
    """The public Knossos and Elle histories with known verdicts, kept in the repository (tests/data)."""
    if not (HISTORIES_DIR / "knossos" / "expected.tsv").is_file():
        pytest.fail(f"{HISTORIES_DIR} is incomplete: the repository checkout is missing its test data")
    return HISTORIES_DIR


# Bounds on a node that hangs, never measures of speed.
NODE_START_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 10.0


@dataclass
class NodeProcess:
    """One node of ``config`` running as ``python -m kvstore.server.main`` (the others are not started)."""

    config: ClusterConfig
    node_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return self.config.node(self.node_id).url

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=NODE_STOP_TIMEOUT_S)



@pytest.fixture(scope="module")
def node_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[ClusterConfig, str], NodeProcess]]:
    """Start nodes as separate processes, so a node that crashes shows as a dead process, not a dead pytest.

    ``node_process(config, node_id)`` returns once the node answers ``GET /health``; every node started
    is stopped when the module ends.
    """
    started: list[NodeProcess] = []

    def start(config: ClusterConfig, node_id: str) -> NodeProcess:
        directory = tmp_path_factory.mktemp(f"node-{node_id}")
        config_path = directory / "cluster.toml"
        config.save(config_path)
        log_path = directory / "node.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", node_id],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        node = NodeProcess(config, node_id, process, log_path)
        started.append(node)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while not _answers_health(node.url):
            if not node.alive() or time.monotonic() > deadline:
                node.stop()
                pytest.fail(f"node {node_id} did not start (exit {process.returncode}):\n{node.log_tail()}")
            time.sleep(0.05)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()


def _answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
