"""`kvstore demo` and `kvstore sim` end to end, as a user runs them."""

from __future__ import annotations

import re
from pathlib import Path

from .support import kvstore, text


def test_demo_passes_and_prints_its_summary(tmp_path: Path) -> None:
    result = kvstore("demo", cwd=tmp_path)
    out = result.stdout.decode()
    assert result.returncode == 0, text(result)
    assert "killed n2 with SIGKILL" in out
    assert "n2 is back and healthy" in out
    # While n2 is down, requests for its keys fail with a definite error.
    down_line = next(line for line in out.splitlines() if "n2 down" in line and "ops/s" in line)
    assert "unavailable" in down_line
    assert "PASS  workload with a crash" in out
    assert "PASS  every acknowledged write readable from every node" in out
    assert "lost-write checker: 0 of " in out
    assert "PASS  the whole history is linearizable" in out
    assert "FAIL" not in out
    assert any(line.startswith("demo passed in ") for line in out.splitlines())
    # The chaos half: the checkers pass the durable run and catch the one that loses writes.
    assert "PASS  simulator, fsync=always: expect VALID" in out
    never = next(line for line in out.splitlines() if "fsync=never" in line and line.startswith("PASS"))
    assert "linearizable=False" in never and "acknowledged writes lost" in never
    assert "PASS  real cluster, fsync=always: expect VALID" in out
    for run in ("demo-register-always-sim", "demo-register-never-sim", "demo-register-always-real"):
        folder = tmp_path / "reports" / "demo" / run
        assert {p.name for p in folder.iterdir()} == {"history.jsonl", "result.json", "report.html"}


def trace_hash(output: str) -> str:
    last = output.rstrip().splitlines()[-1]
    match = re.fullmatch(r"trace-hash: ([0-9a-f]+)", last)
    assert match, last
    return match.group(1)


def test_sim_with_the_same_seed_prints_the_same_trace_hash() -> None:
    first = kvstore("sim", "--seed", "1", "--nodes", "3", "--ops", "200")
    second = kvstore("sim", "--seed", "1", "--nodes", "3", "--ops", "200")
    assert first.returncode == 0, text(first)
    assert second.returncode == 0, text(second)
    assert trace_hash(first.stdout.decode()) == trace_hash(second.stdout.decode())
    assert first.stdout == second.stdout


def test_sim_with_another_seed_runs_differently() -> None:
    one = kvstore("sim", "--seed", "1", "--nodes", "3", "--ops", "200")
    two = kvstore("sim", "--seed", "2", "--nodes", "3", "--ops", "200")
    assert trace_hash(one.stdout.decode()) != trace_hash(two.stdout.decode())
