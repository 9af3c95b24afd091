"""Feast's own Python environment for ``bench/features.py``, and running Feast's side of the benchmark in it.

Feast pins its own pandas, pyarrow, numpy and web stack; installed beside kvstore it would fight the project's
versions, so it lives in a virtualenv of its own at ``bench/.venvs/feast`` (git ignores it). ``feast_python``
creates it on first use (``pip install`` of ``FEAST_REQUIREMENT``, which brings the DuckDB offline store's
duckdb and ibis), bounded by ``INSTALL_TIMEOUT_S``, and marks it ready with a file naming the requirement it
holds; later runs reuse it as long as the mark names the same requirement. ``run_feast`` runs
``feast_side.py`` there and returns the JSON document it prints last.

Both return the reason beside ``None`` when Feast cannot be had or run, so the benchmark says why it skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".venvs" / "feast"
READY_MARK = VENV_DIR / "kvstore-bench-ready"
# 0.67.0 is the version measured here (Python 3.11): apply, materialize, serve and DuckDB retrieval all work.
FEAST_REQUIREMENT = "feast[duckdb]>=0.67.0,<0.68"
INSTALL_TIMEOUT_S = 15 * 60.0
RUN_TIMEOUT_S = 20 * 60.0
STOP_GRACE_S = 30.0
OUTPUT_TAIL_CHARS = 2_000


def _run_bounded(command: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """``command``'s exit status (None: it ran out of time), stdout and stderr. It runs in a process group of its
    own; past ``timeout_s`` the group gets SIGTERM (feast_side.py then stops its server), and SIGKILL after
    ``STOP_GRACE_S``, which reaches anything it started and left in its group."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            stdout, stderr = process.communicate()
        return None, stdout, stderr
    finally:
        if process.poll() is None:  # interrupted (e.g. Ctrl-C) while it ran
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _tail(text: str) -> str:
    return text.strip()[-OUTPUT_TAIL_CHARS:]


def feast_python(venv_dir: Path = VENV_DIR) -> tuple[Path | None, str]:
    """The Feast venv's python, created and installed if it is not ready yet; or None and the reason."""
    python = venv_dir / "bin" / "python"
    mark = venv_dir / READY_MARK.name
    if python.exists() and mark.exists() and mark.read_text() == FEAST_REQUIREMENT:
        return python, f"reusing {venv_dir}"
    # A venv left half-installed (or for another requirement) is rebuilt from scratch.
    shutil.rmtree(venv_dir, ignore_errors=True)
    status, _, stderr = _run_bounded([sys.executable, "-m", "venv", str(venv_dir)], 120.0)
    if status != 0:
        return None, f"cannot create a venv at {venv_dir}: {_tail(stderr)}"
    print(
        f"installing {FEAST_REQUIREMENT} into {venv_dir} (once; at most {INSTALL_TIMEOUT_S / 60:g} min)",
        file=sys.stderr,
    )
    status, _, stderr = _run_bounded(
        [str(python), "-m", "pip", "install", "--quiet", FEAST_REQUIREMENT], INSTALL_TIMEOUT_S
    )
    if status is None:
        return None, f"pip install {FEAST_REQUIREMENT} took over {INSTALL_TIMEOUT_S:g} s"
    if status != 0:
        return None, f"pip install {FEAST_REQUIREMENT} failed: {_tail(stderr)}"
    mark.write_text(FEAST_REQUIREMENT)
    return python, f"installed {FEAST_REQUIREMENT} in {venv_dir}"


def run_feast(data_dir: Path, quick: bool = False) -> tuple[dict[str, Any] | None, str]:
    """Feast's figures on the dataset in ``data_dir`` (``feast_side.py`` in the Feast venv); or None and why."""
    python, reason = feast_python()
    if python is None:
        return None, reason
    command = [str(python), str(BENCH_DIR / "feast_side.py"), str(data_dir), *(["--quick"] if quick else [])]
    status, stdout, stderr = _run_bounded(command, RUN_TIMEOUT_S)
    if status != 0:
        ended = "ran out of time" if status is None else f"exited with status {status}"
        return None, f"feast_side.py {ended}: {_tail(stderr)}"
    lines = stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        figures = None
    if not isinstance(figures, dict):
        return None, f"feast_side.py printed no JSON figures last: {_tail(stdout)}"
    return figures, reason
