"""HTTP throughput and latency of one node against a trivial aiohttp + uvloop dict server, in the same run.

Three server processes run side by side on free 127.0.0.1 ports: the trivial server (``bench/trivial_server.py``)
and two one-node clusters (sqlite engine, ``fsync = "batch"`` and ``fsync = "always"``, data in a temporary
directory). Every server is preloaded with all ``--keys`` keys so GETs hit. A separate load generator process
then drives each server with ``--connections`` keep-alive connections: ``GET /kv/<key>`` and
``PUT /kv/<key>`` (``--value-bytes`` values) on keys drawn uniformly from the preloaded set, ``--warmup``
seconds discarded, then ``--duration`` seconds measured. The load generator is ``wrk`` (a Lua script picks
keys and reports exact p50/p99) or, when wrk is missing, a slower Python aiohttp client, and the output says
which was used.

The machine is small and shared, so each run measures the trivial server and both nodes back to back for
each op (the order reversed on every other run, so drift hits both sides alike), and the report gives
medians over ``--runs`` runs. A ratio is the median of the per-run ratios node/trivial of requests/s.
Targets (issue 12): GET at least 0.8x the trivial server (each fsync mode); PUT at least 0.7x with
``fsync = "batch"``, with a p99 at most 3x the trivial server's PUT p99, and at least 0.5x with ``fsync = "always"``.
A measurement with failed requests (non-2xx answers, socket errors, timeouts) does not meet its target.
Exits 1 when a server cannot start or a load run fails, 0 otherwise (targets met or not).

    python bench/http_node.py [--runs 3] [--duration 5] [--quick] [--json] [--loadgen auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import uvloop
from report_format import filesystem_of

from kvstore.cluster import pick_free_ports
from kvstore.config import ClusterConfig, FsyncPolicy, NodeAddress, StorageConfig

OPS = ("GET", "PUT")
FSYNC_MODES: tuple[FsyncPolicy, ...] = ("batch", "always")
TRIVIAL = "trivial"
# Minimum node/trivial ratio of requests/s, by (op, fsync).
TARGETS: dict[tuple[str, FsyncPolicy], float] = {
    ("GET", "batch"): 0.8,
    ("GET", "always"): 0.8,
    ("PUT", "batch"): 0.7,
    ("PUT", "always"): 0.5,
}
# Maximum node/trivial ratio of p99 latency, by (op, fsync).
P99_TARGETS: dict[tuple[str, FsyncPolicy], float] = {("PUT", "batch"): 3.0}
KEY_PREFIX = "bench-"
KEY_DIGITS = 6
VALUE_BYTE = b"v"
SERVER_START_TIMEOUT_S = 20.0
SERVER_STOP_TIMEOUT_S = 10.0
# A load run may take this much longer than its nominal duration (process start, connection set-up).
LOAD_RUN_SLACK_S = 30.0
WRK_REQUEST_TIMEOUT_S = 5
PRELOAD_CONNECTIONS = 50
LOG_TAIL_BYTES = 2000
WRK_INSTALL_HINT = "install it with `sudo apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"


class BenchError(RuntimeError):
    """A server that would not start or a load run that failed; the message says which."""


@dataclass(frozen=True)
class Settings:
    keys: int
    value_bytes: int
    connections: int
    threads: int
    duration_s: int
    warmup_s: int


@dataclass(frozen=True)
class Sample:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    # Requests that failed: non-2xx answers, connect/read/write errors and timeouts.
    errors: int


@dataclass(frozen=True)
class Server:
    name: str  # "trivial" or the node's fsync policy
    url: str

    @property
    def label(self) -> str:
        return self.name if self.name == TRIVIAL else f"node/{self.name}"


def key_name(index: int) -> str:
    return f"{KEY_PREFIX}{index:0{KEY_DIGITS}d}"


# ---------------------------------------------------------------- server processes


def _log_tail(path: Path) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        return fh.read().decode(errors="replace")
    return ""


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log_path: Path, name: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} server exited with status {process.returncode}:\n{_log_tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} server did not listen on port {port} within {SERVER_START_TIMEOUT_S:.0f} s")


def start_server(stack: contextlib.ExitStack, name: str, command: list[str], port: int, work_dir: Path) -> Server:
    """Start a server process that ``stack`` stops (SIGTERM, then SIGKILL) however the bench ends."""
    log_path = work_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack.callback(_stop_process, process)
    _wait_until_listening(process, port, log_path, name)
    return Server(name, f"http://127.0.0.1:{port}")


def start_trivial(stack: contextlib.ExitStack, work_dir: Path) -> Server:
    (port,) = pick_free_ports(1)
    script = Path(__file__).with_name("trivial_server.py")
    return start_server(stack, TRIVIAL, [sys.executable, str(script), "--port", str(port)], port, work_dir)


def start_node(stack: contextlib.ExitStack, fsync: FsyncPolicy, work_dir: Path) -> Server:
    (port,) = pick_free_ports(1)
    storage = StorageConfig(engine="sqlite", fsync=fsync, data_dir=str(work_dir / f"data-{fsync}"))
    config = ClusterConfig(nodes=(NodeAddress("n1", "127.0.0.1", port),), name=f"bench-{fsync}", storage=storage)
    config_path = work_dir / f"node-{fsync}.toml"
    config.save(config_path)
    command = [sys.executable, "-m", "kvstore.server.main", "--config", str(config_path), "--node", "n1"]
    return start_server(stack, fsync, command, port, work_dir)


async def _preload(url: str, settings: Settings) -> None:
    value = VALUE_BYTE * settings.value_bytes
    next_index = iter(range(settings.keys))

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in next_index:
            async with session.put(f"{url}/kv/{key_name(index)}", data=value) as response:
                if response.status != 200:
                    raise BenchError(f"preloading {url}: PUT answered {response.status}: {await response.text()}")

    connector = aiohttp.TCPConnector(limit=PRELOAD_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(PRELOAD_CONNECTIONS)))


def preload(server: Server, settings: Settings) -> None:
    """PUT every key once, so GETs hit."""
    asyncio.run(_preload(server.url, settings))


# ---------------------------------------------------------------- load generators


class LoadGenerator(Protocol):
    name: str

    def measure(self, url: str, op: str) -> Sample: ...


def _run_load_process(command: list[str], nominal_s: int) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=nominal_s + LOAD_RUN_SLACK_S)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load run did not finish in {nominal_s + LOAD_RUN_SLACK_S:.0f} s: {command}") from exc
    if done.returncode != 0:
        raise BenchError(f"load run failed (status {done.returncode}): {command}\n{done.stderr.strip()}")
    return done.stdout


WRK_SCRIPT = """
-- Written by bench/http_node.py: {method} /kv/<key> on {keys} keys, and an exact summary line at the end.
local key_count = {keys}
local body = string.rep("v", {value_bytes})
local threads_started = 0

function setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end

function init(args)
  math.randomseed(1000 + thread_index)
end

function request()
  local path = string.format("/kv/{prefix}%0{digits}d", math.random(0, key_count - 1))
  if "{method}" == "PUT" then
    return wrk.format("PUT", path, nil, body)
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class WrkLoad:
    """``wrk`` with a Lua script per op; its ``done`` hook prints exact counts and percentiles (in µs)."""

    name = "wrk"

    def __init__(self, wrk_path: str, settings: Settings, work_dir: Path) -> None:
        self._wrk_path = wrk_path
        self._settings = settings
        self._scripts: dict[str, Path] = {}
        for op in OPS:
            script = WRK_SCRIPT.format(
                method=op, keys=settings.keys, value_bytes=settings.value_bytes, prefix=KEY_PREFIX, digits=KEY_DIGITS
            )
            self._scripts[op] = work_dir / f"wrk-{op.lower()}.lua"
            self._scripts[op].write_text(script)

    def _run(self, url: str, op: str, seconds: int) -> Sample:
        s = self._settings
        command = [self._wrk_path, "-c", str(s.connections), "-t", str(s.threads), "-d", f"{seconds}s"]
        command += ["--timeout", f"{WRK_REQUEST_TIMEOUT_S}s", "-s", str(self._scripts[op]), url]
        output = _run_load_process(command, seconds)
        for line in output.splitlines():
            if line.startswith("BENCH_RESULT "):
                requests, duration_us, errors, p50_us, p99_us = line.split()[1:]
                return Sample(
                    requests_per_s=int(requests) / (int(duration_us) / 1e6),
                    p50_ms=float(p50_us) / 1000,
                    p99_ms=float(p99_us) / 1000,
                    errors=int(errors),
                )
        raise BenchError(f"wrk printed no summary line:\n{output}")

    def measure(self, url: str, op: str) -> Sample:
        self._run(url, op, self._settings.warmup_s)
        return self._run(url, op, self._settings.duration_s)


class PythonLoad:
    """The fallback: an aiohttp client in a child process of this script (``--child-url``)."""

    name = "python-aiohttp"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def measure(self, url: str, op: str) -> Sample:
        s = self._settings
        command = [sys.executable, __file__, "--child-url", url, "--child-op", op, "--keys", str(s.keys)]
        command += ["--value-bytes", str(s.value_bytes), "--connections", str(s.connections)]
        command += ["--duration", str(s.duration_s), "--warmup", str(s.warmup_s)]
        output = _run_load_process(command, s.warmup_s + s.duration_s)
        return Sample(**json.loads(output))


async def _python_phase(url: str, op: str, settings: Settings, seconds: float) -> tuple[list[float], int, float]:
    """Drive ``url`` for ``seconds``; the latencies (s) of successful requests, the failures and the elapsed s."""
    latencies_s: list[float] = []
    failures = 0
    value = VALUE_BYTE * settings.value_bytes
    started = time.monotonic()
    deadline = started + seconds

    async def worker(session: aiohttp.ClientSession, rng: random.Random) -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            key_url = f"{url}/kv/{key_name(rng.randrange(settings.keys))}"
            sent = time.perf_counter()
            try:
                async with session.request(op, key_url, data=value if op == "PUT" else None) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies_s.append(time.perf_counter() - sent)
            else:
                failures += 1

    connector = aiohttp.TCPConnector(limit=settings.connections)
    timeout = aiohttp.ClientTimeout(total=WRK_REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = (worker(session, random.Random(1000 + i)) for i in range(settings.connections))
        await asyncio.gather(*workers)
    return latencies_s, failures, time.monotonic() - started


def _percentile_ms(sorted_s: Sequence[float], fraction: float) -> float:
    if not sorted_s:
        return 0.0
    return sorted_s[min(len(sorted_s) - 1, int(fraction * len(sorted_s)))] * 1000


async def python_load(url: str, op: str, settings: Settings) -> Sample:
    await _python_phase(url, op, settings, settings.warmup_s)
    latencies_s, failures, elapsed_s = await _python_phase(url, op, settings, settings.duration_s)
    latencies_s.sort()
    return Sample(
        requests_per_s=(len(latencies_s) + failures) / elapsed_s,
        p50_ms=_percentile_ms(latencies_s, 0.50),
        p99_ms=_percentile_ms(latencies_s, 0.99),
        errors=failures,
    )


def choose_load_generator(choice: str, settings: Settings, work_dir: Path) -> LoadGenerator:
    wrk_path = shutil.which("wrk")
    if wrk_path is not None and choice != "python":
        return WrkLoad(wrk_path, settings, work_dir)
    if choice == "wrk":
        raise BenchError(f"wrk is not on PATH; {WRK_INSTALL_HINT}")
    if choice == "auto":
        print(
            f"wrk is not on PATH; {WRK_INSTALL_HINT}. Falling back to the Python aiohttp load generator, which is "
            "slower than wrk and may limit the figures.",
            file=sys.stderr,
        )
    return PythonLoad(settings)


# ---------------------------------------------------------------- schedule and report

SampleKey = tuple[str, str]  # (server name, op)


def measure_all(
    servers: Sequence[Server], load: LoadGenerator, runs: int, progress: bool
) -> dict[SampleKey, list[Sample]]:
    """Every (server, op) once per run; the servers measured back to back, in reverse order on odd runs."""
    samples: dict[SampleKey, list[Sample]] = {(s.name, op): [] for op in OPS for s in servers}
    for run in range(runs):
        order = servers if run % 2 == 0 else list(reversed(servers))
        for op in OPS:
            for server in order:
                sample = load.measure(server.url, op)
                samples[(server.name, op)].append(sample)
                if progress:
                    print(
                        f"  run {run + 1}/{runs} {op} {server.label:<11} {sample.requests_per_s:8.0f} req/s "
                        f"p50 {sample.p50_ms:6.2f} ms p99 {sample.p99_ms:6.2f} ms errors {sample.errors}",
                        file=sys.stderr,
                    )
    return samples


def _median_of(samples: Sequence[Sample], field: Callable[[Sample], float]) -> float:
    return statistics.median(field(s) for s in samples)


def summarize(samples: dict[SampleKey, list[Sample]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Median rows per (server, op) and node/trivial ratios per (op, fsync)."""
    rows = []
    for (name, op), runs in samples.items():
        rows.append(
            {
                "server": "trivial" if name == TRIVIAL else "node",
                "op": op,
                "fsync": None if name == TRIVIAL else name,
                "requests_per_s": round(_median_of(runs, lambda s: s.requests_per_s)),
                "p50_ms": round(_median_of(runs, lambda s: s.p50_ms), 3),
                "p99_ms": round(_median_of(runs, lambda s: s.p99_ms), 3),
                "errors": sum(s.errors for s in runs),
                "runs_requests_per_s": [round(s.requests_per_s) for s in runs],
            }
        )
    ratios = []
    for op in OPS:
        for fsync in FSYNC_MODES:
            node_runs, trivial_runs = samples[(fsync, op)], samples[(TRIVIAL, op)]
            per_run = [n.requests_per_s / t.requests_per_s for n, t in zip(node_runs, trivial_runs, strict=True)]
            ratio = statistics.median(per_run)
            p99_ratio = statistics.median(
                [n.p99_ms / t.p99_ms for n, t in zip(node_runs, trivial_runs, strict=True) if t.p99_ms > 0] or [0.0]
            )
            target = TARGETS.get((op, fsync))
            p99_target = P99_TARGETS.get((op, fsync))
            clean = all(s.errors == 0 for s in node_runs + trivial_runs)
            within = None if target is None else clean and ratio >= target
            if within is not None and p99_target is not None:
                within = within and p99_ratio <= p99_target
            ratios.append(
                {
                    "op": op,
                    "fsync": fsync,
                    "ratio": round(ratio, 3),
                    "runs_ratio": [round(r, 3) for r in per_run],
                    "p99_ratio": round(p99_ratio, 3),
                    "target": target,
                    "p99_target": p99_target,
                    "within_target": within,
                    "errors_free": clean,
                }
            )
    return rows, ratios


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"HTTP node vs trivial aiohttp+uvloop dict server; load generator: {report['load_generator']}, "
        f"{s['connections']} keep-alive connections, {s['keys']} keys, {s['value_bytes']}-byte values, "
        f"{s['duration_s']} s per measurement after {s['warmup_s']} s warm-up, median of {report['runs']} run(s) "
        f"({report['cpu_count']} CPUs, Python {report['python']}, node data in {report['data_dir']} on "
        f"{report['data_filesystem']})",
        "",
        f"{'server':<8} {'op':<4} {'fsync':<7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  req/s per run",
    ]
    for row in report["results"]:
        runs = ", ".join(str(r) for r in row["runs_requests_per_s"])
        lines.append(
            f"{row['server']:<8} {row['op']:<4} {row['fsync'] or '-':<7} {row['requests_per_s']:>8} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>7}  {runs}"
        )
    lines += ["", "node/trivial req/s (median of per-run ratios):"]
    for r in report["ratios"]:
        if r["target"] is None:
            verdict = "no target"
        else:
            wanted = f">= {r['target']}" + (f", p99 <= {r['p99_target']}x" if r["p99_target"] is not None else "")
            verdict = f"target {wanted}: {'PASS' if r['within_target'] else 'FAIL'}"
            if not r["errors_free"]:
                verdict += " (failed requests in the measurements)"
        per_run = ", ".join(f"{x:.2f}" for x in r["runs_ratio"])
        lines.append(
            f"  {r['op']:<4} fsync={r['fsync']:<7} {r['ratio']:.2f}x  p99 {r['p99_ratio']:.2f}x  {verdict}"
            f"   per run: {per_run}"
        )
    lines.append(f"all targets met: {'yes' if report['all_targets_met'] else 'NO'}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    prefix = "kvstore-bench-http-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=args.tmp_dir) as tmp, contextlib.ExitStack() as stack:
        work_dir = Path(tmp)
        data_filesystem = filesystem_of(work_dir)
        load = choose_load_generator(args.loadgen, settings, work_dir)
        servers = [start_trivial(stack, work_dir)] + [start_node(stack, fsync, work_dir) for fsync in FSYNC_MODES]
        for server in servers:
            preload(server, settings)
        samples = measure_all(servers, load, args.runs, progress=not args.json)
    rows, ratios = summarize(samples)
    return {
        "bench": "http_node",
        "load_generator": load.name,
        "runs": args.runs,
        "quick": args.quick,
        "settings": asdict(settings),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "data_dir": str(work_dir.parent),
        "data_filesystem": data_filesystem,
        "results": rows,
        "ratios": ratios,
        "all_targets_met": all(r["within_target"] for r in ratios if r["target"] is not None),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="whole seconds measured per server and op")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds of discarded load before each")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run, 2 s per measurement")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--tmp-dir", help="where the temporary directory with the nodes' data goes (fsync cost depends on its disk)"
    )
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-op", choices=OPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration = 1, 2
    for name in ("runs", "duration", "keys", "value_bytes", "connections", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = Settings(args.keys, args.value_bytes, args.connections, args.threads, args.duration, args.warmup)
    if args.child_url:
        print(json.dumps(asdict(uvloop.run(python_load(args.child_url, args.child_op, settings)))))
        return 0
    try:
        report = run_bench(args, settings)
    except BenchError as exc:
        print(f"http_node bench failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
