"""Project-wide pytest settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" (exit 5) must fail the run, never pass silently.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def find_shared_histories() -> Path | None:
    """``shared/histories`` beside the repository (or above it), or where $KVSTORE_SHARED_HISTORIES says."""
    override = os.environ.get("KVSTORE_SHARED_HISTORIES")
    if override:
        return Path(override)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "histories"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def shared_histories() -> Path:
    """The public histories with known verdicts. Missing is a failure, never a silent skip."""
    found = find_shared_histories()
    if found is None or not (found / "knossos" / "expected.tsv").is_file():
        pytest.fail("shared/histories not found beside the repository; set KVSTORE_SHARED_HISTORIES to its path")
    return found
