"""Node CPU time per HTTP request, this checkout against an earlier revision, measured in the same run.

Throughput on a shared 2-core machine swings by 10-20% between runs, which hides a change of a few
percent on the hot path. The CPU time a node process spends per request (user + system, read from
``/proc/<pid>/stat`` around a load phase) is steadier, so this benchmark reports it: a one-node cluster
(``memory`` engine, so no fsync) from this checkout and one from ``--base`` (checked out into a temporary
git worktree) are driven alternately with ``wrk`` (50 keep-alive connections, GET and PUT of 100-byte
values over 1000 keys), and the ratio head/base of the medians is the figure. The base is the reference.

    python bench/cpu_per_request.py --base REV [--rounds 4] [--duration 5] [--quick] [--json]

Needs ``wrk`` (Debian package ``wrk``) and git. Exits 1 when a node cannot start or wrk fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ("get", "put")
KEYS = 1000
VALUE_BYTES = 100
CONNECTIONS = 50
START_GUARD_S = 30.0
_KEY = f'"/kv/k" .. math.random(0, {KEYS - 1})'
_LUA = {
    "get": f'request = function() return wrk.format("GET", {_KEY}) end',
    "put": f'request = function() return wrk.format("PUT", {_KEY}, nil, string.rep("x", {VALUE_BYTES})) end',
}


@dataclass(frozen=True)
class Sample:
    cpu_us_per_request: float
    requests_per_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, script: Path, seconds: int) -> tuple[int, float]:
    command = ["wrk", "-c", str(CONNECTIONS), "-t", "2", "-d", str(seconds), "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rate is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} failed or saw errors:\n{out}")
    return int(requests.group(1)), float(rate.group(1))


def measure(tree: Path, op: str, work_dir: Path, seconds: int) -> Sample:
    """Start a one-node cluster from ``tree``, preload it, and measure ``op`` for ``seconds``."""
    port = _free_port()
    data_dir = work_dir / f"node-{port}"
    data_dir.mkdir()
    config = data_dir / "cluster.toml"
    config.write_text(
        f'[cluster]\nsecret = "bench"\npartitions = 16\n[nodes]\nn1 = "127.0.0.1:{port}"\n'
        f'[storage]\nengine = "memory"\ndata_dir = "{data_dir}"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "kvstore.server.main", "--config", str(config), "--node", "n1"]
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_GUARD_S
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the node from {tree} did not start") from None
                time.sleep(0.05)
        _wrk(url, work_dir / "put.lua", 2)  # preload every key, and warm up
        before_s = _cpu_s(process.pid)
        requests, rate = _wrk(url, work_dir / f"{op}.lua", seconds)
        return Sample((_cpu_s(process.pid) - before_s) / requests * 1e6, rate)
    finally:
        process.terminate()
        process.wait(timeout=10)


def run(base: str, rounds: int, seconds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kvstore-cpu-") as tmp:
        work_dir = Path(tmp)
        base_tree = work_dir / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), base], check=True)
        try:
            for op, script in _LUA.items():
                (work_dir / f"{op}.lua").write_text(script)
            trees = {"head": ROOT, "base": base_tree}
            samples: dict[tuple[str, str], list[Sample]] = {(t, op): [] for t in trees for op in OPS}
            for round_index in range(rounds):
                for op in OPS:
                    # Alternate who goes first, so drift in the machine's load hits both alike.
                    order = ("base", "head") if round_index % 2 == 0 else ("head", "base")
                    for name in order:
                        samples[(name, op)].append(measure(trees[name], op, work_dir, seconds))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
            shutil.rmtree(base_tree, ignore_errors=True)
    results: dict[str, object] = {}
    for op in OPS:
        head = statistics.median(s.cpu_us_per_request for s in samples[("head", op)])
        base_us = statistics.median(s.cpu_us_per_request for s in samples[("base", op)])
        results[op] = {
            "head_cpu_us_per_request": round(head, 1),
            "base_cpu_us_per_request": round(base_us, 1),
            "head_over_base": round(head / base_us, 3),
            "head_per_round": [round(s.cpu_us_per_request, 1) for s in samples[("head", op)]],
            "base_per_round": [round(s.cpu_us_per_request, 1) for s in samples[("base", op)]],
            "head_requests_per_s": round(statistics.median(s.requests_per_s for s in samples[("head", op)])),
            "base_requests_per_s": round(statistics.median(s.requests_per_s for s in samples[("base", op)])),
        }
    return {"bench": "cpu_per_request", "base": base, "rounds": rounds, "duration_s": seconds, "ops": results}


def render(report: dict[str, object]) -> str:
    lines = [
        f"node CPU per request, this checkout (head) against {report['base']} (base); memory engine, wrk "
        f"{CONNECTIONS} connections, {report['duration_s']} s per measurement, median of {report['rounds']} rounds",
        "",
        "op    head us/req  base us/req  head/base  head req/s  base req/s  per round head | base",
    ]
    ops = report["ops"]
    assert isinstance(ops, dict)
    for op, r in ops.items():
        lines.append(
            f"{op.upper():4}  {r['head_cpu_us_per_request']:11.1f}  {r['base_cpu_us_per_request']:11.1f}"
            f"  {r['head_over_base']:8.3f}x  {r['head_requests_per_s']:10}  {r['base_requests_per_s']:10}"
            f"  {r['head_per_round']} | {r['base_per_round']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5, help="whole seconds measured per node and op")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 2 s")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/cpu_per_request.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 1
    rounds, seconds = (1, 2) if args.quick else (args.rounds, args.duration)
    try:
        report = run(args.base, rounds, seconds)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench/cpu_per_request.py: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(render(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
