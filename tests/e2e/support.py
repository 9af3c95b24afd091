"""Running the `kvstore` command in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Generous: a bound on a hung command, never a measure of speed.
COMMAND_TIMEOUT_S = 120


def kvstore(*args: str, stdin: bytes | None = None, timeout_s: float = COMMAND_TIMEOUT_S,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kvstore", *args], input=stdin, capture_output=True, timeout=timeout_s, check=False,
        cwd=cwd,
    )


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()
