"""Project-wide pytest settings."""

from __future__ import annotations

from pathlib import Path

import pytest


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
