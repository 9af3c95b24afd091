"""`kvstore check` and `kvstore chaos run` as a user runs them: output, reports and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from .support import kvstore, text

ROOT = Path(__file__).resolve().parents[2]


def test_check_prints_one_object_per_file_and_exits_by_verdict(public_histories: Path) -> None:
    good = str(public_histories / "knossos" / "good" / "memstress3-0.jsonl")
    bad = str(public_histories / "knossos" / "bad" / "rethink-fail-minimal.jsonl")
    result = kvstore("check", "--checker", "linearizable", good)
    assert result.returncode == 0, text(result)
    assert json.loads(result.stdout)["valid"] is True
    result = kvstore("check", good, bad)
    assert result.returncode == 1, text(result)
    first, second = (json.loads(line) for line in result.stdout.decode().splitlines())
    assert (first["file"], first["valid"]) == (good, True)
    assert (second["file"], second["valid"], second["key"]) == (bad, False, "r")
    assert second["failing_ops"] and "time_s" in second


def test_check_names_file_and_line_of_a_malformed_history(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text('{"process": 1, "type": "invoke", "f": "read", "value": null}\n{"process": 1, "type": "ok"\n')
    result = kvstore("check", str(history))
    assert result.returncode == 2
    assert f"{history}:2: not valid JSON" in result.stderr.decode()
    history.write_text('{"process": 1, "type": "ok", "f": "read", "value": 1}\n')
    result = kvstore("check", str(history))
    assert result.returncode == 2
    assert f"{history}:1: ok for process 1 with no open invoke" in result.stderr.decode()
    assert kvstore("check", str(tmp_path / "missing.jsonl")).returncode == 2


def test_check_unknown_when_out_of_time(tmp_path: Path) -> None:
    rows = [{"process": p, "type": "invoke", "f": "write", "key": "x", "value": p} for p in range(40)]
    rows += [{"process": 100 + p, "type": "invoke", "f": "read", "key": "x", "value": None} for p in range(20)]
    rows += [{"process": 100 + p, "type": "ok", "f": "read", "key": "x", "value": 1000 + p} for p in range(20)]
    rows += [{"process": p, "type": "ok", "f": "write", "key": "x", "value": p} for p in range(40)]
    history = tmp_path / "hard.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = kvstore("check", "--time-limit", "0.2", str(history))
    assert result.returncode == 2
    assert json.loads(result.stdout)["valid"] == "unknown"


def test_chaos_run_writes_a_report_and_counts_an_expected_anomaly_as_passing(tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios" / "register-crash-fsync-never.toml")
    result = kvstore("chaos", "run", scenario, "--seed", "3", "--out", str(tmp_path))
    out = result.stdout.decode()
    assert result.returncode == 0, text(result)
    assert "seed 3: INVALID, as expected (lost-writes): " in out and "every seed as expected" in out
    assert "expected lost-writes: shown by 1 of 1 seed(s)" in out
    folder = tmp_path / "register-crash-fsync-never" / "sim-seed-3"
    assert {p.name for p in folder.iterdir()} == {"history.jsonl", "result.json", "report.html"}
    saved = json.loads((folder / "result.json").read_text())
    assert saved["valid"] is False and saved["checkers"]["lost-writes"]["lost_count"] > 0
    assert (saved["expect"], saved["as_expected"]) == ("lost-writes", True)
    assert saved["anomalies"]["lost-writes"] == saved["checkers"]["lost-writes"]["lost_count"]


def test_a_sweep_prints_the_replay_command_of_every_unexpected_seed(tmp_path: Path) -> None:
    # fsync=always loses nothing, so a scenario that expects lost writes from it fails every seed.
    scenario = tmp_path / "expects-loss.toml"
    text_of = (ROOT / "scenarios" / "register-crash.toml").read_text()
    scenario.write_text(text_of.replace('name = "register-crash"', 'name = "expects-loss"')
                        .replace("[checkers]\n", '[checkers]\nexpect = "lost-writes"\n'))
    result = kvstore("chaos", "run", str(scenario), "--seeds", "1..2", "--no-report", "--out", str(tmp_path / "r"))
    out = result.stdout.decode()
    assert result.returncode == 1, text(result)
    assert "seed 1: valid, NOT as expected (lost-writes): no anomaly" in out
    assert "2 valid, 0 invalid, 0 unknown; expected lost-writes: shown by 0 of 2 seed(s)" in out
    summary = out[out.index("expects-loss: 2 seed(s)"):]
    assert "2 seed(s) not as expected:" in summary
    for seed in (1, 2):
        assert f"replay: kvstore chaos run {scenario} --seed {seed}" in summary
    # A report for each seed that went otherwise than expected, even with --no-report.
    assert {p.name for p in (tmp_path / "r" / "expects-loss").iterdir()} == {"sim-seed-1", "sim-seed-2"}


def test_chaos_sweep_of_seeds(tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios" / "register-crash.toml")
    result = kvstore("chaos", "run", scenario, "--seeds", "1..4", "--no-report", "--out", str(tmp_path))
    assert result.returncode == 0, text(result)
    assert "register-crash: 4 seed(s)" in result.stdout.decode() and "4 valid, 0 invalid" in result.stdout.decode()
    assert not tmp_path.joinpath("register-crash").exists()


def test_chaos_run_rejects_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[workload]\nkind = "queue"\n')
    result = kvstore("chaos", "run", str(bad))
    assert result.returncode == 2
    assert "kind must be one of" in result.stderr.decode()
    result = kvstore("chaos", "run", str(bad), "--seeds", "9..1")
    assert result.returncode == 2 and "empty seed range" in result.stderr.decode()


def test_chaos_run_real_uses_the_seed_it_is_given(tmp_path: Path) -> None:
    scenario = tmp_path / "short.toml"
    scenario.write_text(
        'name = "short"\nduration_ms = 1500\nquiet_ms = 200\nseed = 1\n'
        '[cluster]\nnodes = 3\nfsync = "always"\npartitions = 8\n'
        '[workload]\nkind = "register"\nconcurrency = 3\nthink_ms = 10\n'
        '[nemesis]\nfaults = ["crash"]\ninterval_ms = 500\n'
    )
    result = kvstore("chaos", "run", str(scenario), "--real", "--seed", "4", "--out", str(tmp_path / "reports"))
    out = result.stdout.decode()
    assert result.returncode == 0, text(result)
    assert "seed 4: valid" in out and "1 seed(s)" in out and "1 valid, 0 invalid" in out
    saved = json.loads((tmp_path / "reports" / "short" / "real-seed-4" / "result.json").read_text())
    assert (saved["seed"], saved["driver"], saved["valid"]) == (4, "real", True)
