"""Replicated PUT throughput and latency of a 3-node leader-mode kvstore cluster against a 3-member etcd cluster,
in the same run; and the messages replication costs, per committed write under load and per second at rest.

    python bench/replication_vs_etcd.py --mode leader [--runs 3] [--duration 3] [--quick] [--json]
                                [--replication sync,semi-sync,async] [--fsync always,batch]

Both systems run on 127.0.0.1 free ports with their data in one temporary directory (same filesystem):

- etcd (Debian's ``etcd-server``): three members, which fsync their WAL on every commit, like kvstore's
  ``fsync = "always"``. Driven through its v3 JSON gateway (``POST /v3/kv/put``, base64 key and value), at
  its leader (found with ``/v3/maintenance/status``), so followers never forward. Without an ``etcd`` binary
  the bench says so and measures kvstore alone.
- kvstore: a ``LocalCluster`` in leader mode (3 nodes, 64 partitions, each a Raft group of 3), one cluster per
  ``--fsync`` policy, one after the other. ``PUT /kv/{key}`` goes to the leader of the key's partition (from
  every node's ``GET /cluster``), with ``?replication=<setting>``; ``sync`` is the server's default and is
  sent without the parameter. Before measuring, one PUT per setting checks the server takes it: a refusal
  stops the bench with the server's answer, so no setting is ever measured as another.

One asyncio aiohttp load generator drives both, in this process: ``--clients`` closed-loop clients (1 and 50),
each with its own keep-alive connection, PUTs of ``--value-bytes`` values on keys drawn uniformly from
``--keys``, ``--warmup`` seconds discarded, then ``--duration`` seconds measured: puts/s (acknowledged),
p50 and p99. Each run measures etcd and then every kvstore setting at the same client count back to back; the
report gives medians over ``--runs`` and, for kvstore ``sync`` with ``fsync = "always"``, the median of the
per-run ratios to etcd. Target: those puts/s at least etcd's (ratio >= 1) at a p50 no higher than etcd's.

Messages: every node counts the peer messages it sends, by kind (``kvstore_peer_messages_sent_total``). Per
measurement, the cluster's messages (every kind, heartbeats included) divided by the writes acknowledged.
At rest: after the last measurement of a cluster and ``--rest-settle`` idle seconds, the cluster's messages per
second over ``--rest`` seconds, in total and by kind (whatever kinds the nodes send: ``Heartbeat`` and
``HeartbeatReply`` per partition today, so a coalesced heartbeat shows under its own name), and the ``POST /peer``
requests per second that carried them (a batch per peer whenever its sender finds messages queued).

Exits 1 when a server cannot start, refuses a setting or a load run fails, 0 otherwise (target met or not).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from leader_cluster import (
    BATCHES,
    BenchError,
    LeaderView,
    cluster_peer_traffic,
    difference,
    start_leader_cluster,
    wait_for_leaders,
)
from report_format import filesystem_of, rounded

from kvstore.cluster import ClusterError, pick_free_ports
from replication.replica import REPLICATION_SETTINGS

FSYNC_POLICIES = ("always", "batch")
CLIENT_COUNTS = (1, 50)
ETCD = "etcd"
# The setting the target is about, and the reference's.
TARGET_ROW = ("kvstore", "always", "sync")
KEY_PREFIX = "bench-"
REQUEST_TIMEOUT_S = 5.0
ETCD_START_TIMEOUT_S = 30.0
ETCD_STOP_TIMEOUT_S = 10.0
ETCD_INSTALL_HINT = "apt-get install etcd-server etcd-client"
ERROR_TEXT_CHARS = 300


@dataclass(frozen=True)
class Settings:
    keys: int
    value_bytes: int
    duration_s: float
    warmup_s: float
    rest_s: float
    rest_settle_s: float


@dataclass(frozen=True)
class Sample:
    puts_per_s: float
    p50_ms: float
    p99_ms: float
    # Requests not acknowledged (non-2xx, connection errors, timeouts).
    errors: int
    acknowledged: int
    # kvstore only: the cluster's peer messages in the measured seconds, per acknowledged write.
    messages_per_write: float | None = None


class Target(Protocol):
    """Where one PUT of ``key`` goes and how: ``put`` answers whether it was acknowledged, and why not."""

    async def put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> str | None: ...


async def _answer(response: aiohttp.ClientResponse) -> str | None:
    body = await response.read()
    if 200 <= response.status < 300:
        return None
    return f"HTTP {response.status}: {body[:ERROR_TEXT_CHARS].decode(errors='replace')}"


class KvTarget:
    def __init__(self, view: LeaderView, replication: str) -> None:
        self._view = view
        # The server's default needs no parameter, so sync also measures a server that predates it.
        self._query = "" if replication == "sync" else f"?replication={replication}"

    async def put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> str | None:
        async with session.put(f"{self._view.url_for(key)}/kv/{key}{self._query}", data=value) as response:
            return await _answer(response)


class EtcdTarget:
    def __init__(self, leader_url: str) -> None:
        self._url = f"{leader_url}/v3/kv/put"

    async def put(self, session: aiohttp.ClientSession, key: str, value: bytes) -> str | None:
        doc = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}
        async with session.post(self._url, json=doc) as response:
            return await _answer(response)


# ---------------------------------------------------------------- load


def _percentile_ms(sorted_s: Sequence[float], fraction: float) -> float:
    if not sorted_s:
        return 0.0
    return sorted_s[min(len(sorted_s) - 1, int(fraction * len(sorted_s)))] * 1000


async def _phase(target: Target, clients: int, settings: Settings, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` closed-loop clients for ``seconds``: latencies (s) of acknowledged PUTs, failures, elapsed s."""
    latencies_s: list[float] = []
    failures: list[str] = []
    value = b"v" * settings.value_bytes
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            key = f"{KEY_PREFIX}{rng.randrange(settings.keys):06d}"
            sent = time.perf_counter()
            try:
                error = await target.put(session, key, value)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = repr(exc)
            if error is None:
                latencies_s.append(time.perf_counter() - sent)
            else:
                failures.append(error)

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, random.Random(1000 + i)) for i in range(clients)))
    if failures and not latencies_s:
        raise BenchError(f"every PUT failed; the first: {failures[0]}")
    return latencies_s, len(failures), time.monotonic() - started


def measure(target: Target, clients: int, settings: Settings, urls: dict[str, str] | None) -> Sample:
    """Warm up, then measure; with ``urls`` (kvstore) also the cluster's messages per acknowledged write."""
    asyncio.run(_phase(target, clients, settings, settings.warmup_s))
    before = cluster_peer_traffic(urls) if urls else {}
    latencies_s, errors, elapsed_s = asyncio.run(_phase(target, clients, settings, settings.duration_s))
    per_write = None
    if urls:
        sent = difference(cluster_peer_traffic(urls), before)
        per_write = (sum(sent.values()) - sent.get(BATCHES, 0)) / len(latencies_s)
    latencies_s.sort()
    return Sample(
        puts_per_s=len(latencies_s) / elapsed_s,
        p50_ms=_percentile_ms(latencies_s, 0.50),
        p99_ms=_percentile_ms(latencies_s, 0.99),
        errors=errors,
        acknowledged=len(latencies_s),
        messages_per_write=per_write,
    )


def check_setting(target: Target, replication: str) -> None:
    """One PUT: a server that refuses the setting stops the bench with its answer."""

    async def one() -> str | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
            return await target.put(session, f"{KEY_PREFIX}check", b"v")

    error = asyncio.run(one())
    if error is not None:
        raise BenchError(f"the kvstore cluster refused a PUT with replication={replication}: {error}")


def rest_rate(urls: dict[str, str], settings: Settings) -> dict[str, float]:
    """The cluster's peer messages per second while no client writes: in total, by kind, and the POST /peer
    batches that carried them (``BATCHES``)."""
    time.sleep(settings.rest_settle_s)
    before = cluster_peer_traffic(urls)
    started = time.monotonic()
    time.sleep(settings.rest_s)
    sent = difference(cluster_peer_traffic(urls), before)
    elapsed_s = time.monotonic() - started
    rates = {"total": (sum(sent.values()) - sent.get(BATCHES, 0)) / elapsed_s}
    rates.update({kind: count / elapsed_s for kind, count in sent.items() if count})
    return rates


# ---------------------------------------------------------------- etcd


def _wait_listening(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + ETCD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"etcd exited with status {process.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"etcd did not listen on port {port} within {ETCD_START_TIMEOUT_S:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(ETCD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_etcd(stack: contextlib.ExitStack, etcd: str, work_dir: Path) -> list[str]:
    """Three etcd members on loopback, stopped by ``stack``; their client URLs."""
    ports = pick_free_ports(6)
    client_ports, peer_ports = ports[:3], ports[3:]
    names = [f"e{i + 1}" for i in range(3)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True))
    started = []
    for name, client_port, peer_port in zip(names, client_ports, peer_ports, strict=True):
        command = [etcd, "--name", name, "--data-dir", str(work_dir / f"etcd-{name}")]
        command += ["--listen-client-urls", f"http://127.0.0.1:{client_port}"]
        command += ["--advertise-client-urls", f"http://127.0.0.1:{client_port}"]
        command += ["--listen-peer-urls", f"http://127.0.0.1:{peer_port}"]
        command += ["--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}"]
        command += ["--initial-cluster", initial, "--initial-cluster-state", "new"]
        command += ["--initial-cluster-token", "kvstore-bench", "--logger", "zap", "--log-level", "error"]
        log_path = work_dir / f"etcd-{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stack.callback(_stop, process)
        started.append((process, client_port, log_path))
    for process, client_port, log_path in started:
        _wait_listening(process, client_port, log_path)
    return [f"http://127.0.0.1:{port}" for _, port, _ in started]


def etcd_leader(urls: list[str]) -> str:
    """The client URL of the member that leads (every member's status names the leader's member id)."""

    async def statuses() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
            out = []
            for url in urls:
                async with session.post(f"{url}/v3/maintenance/status", json={}) as response:
                    out.append(await response.json())
            return out

    deadline = time.monotonic() + ETCD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError):
            docs = asyncio.run(statuses())
            for url, doc in zip(urls, docs, strict=True):
                if doc.get("leader") and doc["header"]["member_id"] == doc["leader"]:
                    return url
        time.sleep(0.1)
    raise BenchError(f"the etcd cluster elected no leader within {ETCD_START_TIMEOUT_S:g} s")


# ---------------------------------------------------------------- schedule and report

RowKey = tuple[str, str, str, int]  # (system, fsync, replication, clients); etcd: ("etcd", "always", "-", n)


def measure_all(
    args: argparse.Namespace, settings: Settings, work_dir: Path
) -> tuple[dict[RowKey, list[Sample]], dict[str, Any]]:
    samples: dict[RowKey, list[Sample]] = {}
    rest: dict[str, dict[str, float]] = {}
    progress = not args.json
    etcd_path = shutil.which("etcd")
    with contextlib.ExitStack() as stack:
        etcd: Target | None = None
        if etcd_path is None:
            print(f"etcd not found on PATH ({ETCD_INSTALL_HINT}): the etcd comparison is skipped", file=sys.stderr)
        else:
            etcd = EtcdTarget(etcd_leader(start_etcd(stack, etcd_path, work_dir)))
        for fsync in args.fsync:
            cluster = start_leader_cluster(work_dir / f"kvstore-{fsync}", fsync)
            try:
                urls = {n.node_id: n.url for n in cluster.config.nodes}
                view = wait_for_leaders(urls)
                targets: dict[str, Target] = {r: KvTarget(view, r) for r in args.replication}
                for replication, kv_target in targets.items():
                    check_setting(kv_target, replication)
                for run in range(args.runs):
                    for clients in args.clients:
                        # etcd beside the first cluster only ("always" unless --fsync says otherwise).
                        plan: list[tuple[RowKey, Target, dict[str, str] | None]] = []
                        if etcd is not None and fsync == args.fsync[0]:
                            plan.append(((ETCD, "always", "-", clients), etcd, None))
                        plan += [(("kvstore", fsync, r, clients), t, urls) for r, t in targets.items()]
                        for key, target, scraped in plan:
                            sample = measure(target, clients, settings, scraped)
                            samples.setdefault(key, []).append(sample)
                            if progress:
                                print(f"  run {run + 1}/{args.runs} {_label(key):<34} {_line(sample)}", file=sys.stderr)
                rest[fsync] = rest_rate(urls, settings)
                if progress:
                    print(f"  at rest, fsync={fsync}: {rest[fsync]['total']:.0f} messages/s", file=sys.stderr)
            finally:
                cluster.down(grace_s=5.0)
    return samples, rest


def _label(key: RowKey) -> str:
    system, fsync, replication, clients = key
    if system == ETCD:
        return f"etcd, {clients} client(s)"
    return f"kvstore fsync={fsync} {replication}, {clients} client(s)"


def _line(s: Sample) -> str:
    messages = "" if s.messages_per_write is None else f" msgs/write {s.messages_per_write:.1f}"
    return f"{s.puts_per_s:8.0f} puts/s p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:7.2f} ms errors {s.errors}{messages}"


def summarize(samples: dict[RowKey, list[Sample]]) -> list[dict[str, Any]]:
    rows = []
    for key, runs in samples.items():
        system, fsync, replication, clients = key
        reference = samples.get((ETCD, "always", "-", clients))
        row: dict[str, Any] = {
            "system": system,
            "fsync": fsync,
            "replication": replication,
            "clients": clients,
            "puts_per_s": statistics.median(s.puts_per_s for s in runs),
            "p50_ms": statistics.median(s.p50_ms for s in runs),
            "p99_ms": statistics.median(s.p99_ms for s in runs),
            "errors": sum(s.errors for s in runs),
            "runs_puts_per_s": [round(s.puts_per_s) for s in runs],
            "messages_per_write": None,
            "ratio_to_etcd": None,
            "p50_ratio_to_etcd": None,
        }
        if system != ETCD:
            row["messages_per_write"] = statistics.median(s.messages_per_write or 0.0 for s in runs)
            if reference is not None:
                # Paired by run number: the same run for the first fsync policy's cluster, which etcd ran beside;
                # a later policy's run i is set against etcd's run i, measured a minute or two before it.
                pairs = list(zip(runs, reference, strict=False))
                row["ratio_to_etcd"] = statistics.median(k.puts_per_s / e.puts_per_s for k, e in pairs)
                row["p50_ratio_to_etcd"] = statistics.median(k.p50_ms / e.p50_ms for k, e in pairs if e.p50_ms > 0)
        rows.append(row)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The target, per client count: kvstore sync with fsync always at least etcd's puts/s, at a p50 no higher."""
    out = []
    for row in rows:
        if (row["system"], row["fsync"], row["replication"]) != TARGET_ROW or row["ratio_to_etcd"] is None:
            continue
        met = row["errors"] == 0 and row["ratio_to_etcd"] >= 1.0 and row["p50_ratio_to_etcd"] <= 1.0
        out.append(
            {
                "clients": row["clients"],
                "ratio": row["ratio_to_etcd"],
                "p50_ratio": row["p50_ratio_to_etcd"],
                "met": met,
            }
        )
    return out


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Replicated PUTs: kvstore leader mode (3 nodes, 64 partitions x 3 replicas, sqlite) vs etcd "
        f"{report['etcd_version'] or '(absent: comparison skipped)'} (3 members); python aiohttp closed-loop "
        f"clients, {s['keys']} keys, {s['value_bytes']}-byte values, {s['duration_s']:g} s per measurement after "
        f"{s['warmup_s']:g} s warm-up, median of {report['runs']} run(s) ({report['cpu_count']} CPUs, Python "
        f"{report['python']}, data on {report['data_filesystem']})",
        "",
        f"{'system':<8} {'fsync':<7} {'replication':<11} {'clients':>7} {'puts/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
        f"{'x etcd':>7} {'p50 x':>6} {'msgs/write':>10} {'errors':>6}  puts/s per run",
    ]
    for r in report["results"]:
        ratio = "-" if r["ratio_to_etcd"] is None else f"{r['ratio_to_etcd']:.2f}"
        p50_ratio = "-" if r["p50_ratio_to_etcd"] is None else f"{r['p50_ratio_to_etcd']:.2f}"
        per_write = "-" if r["messages_per_write"] is None else f"{r['messages_per_write']:.1f}"
        lines.append(
            f"{r['system']:<8} {r['fsync']:<7} {r['replication']:<11} {r['clients']:>7} {r['puts_per_s']:>8.0f} "
            f"{r['p50_ms']:>7.2f} {r['p99_ms']:>8.2f} {ratio:>7} {p50_ratio:>6} {per_write:>10} {r['errors']:>6}  "
            + ", ".join(str(x) for x in r["runs_puts_per_s"])
        )
    lines += ["", "peer messages per second at rest (64 partitions, whole cluster):"]
    for fsync, rates in report["at_rest"].items():
        lines.append(
            f"  fsync={fsync}: {rates['total']:.0f} total ("
            + ", ".join(f"{rate:.0f} {kind}" for kind, rate in rates.items() if kind not in ("total", BATCHES))
            + f"), in {rates.get(BATCHES, 0):.0f} POST /peer batches"
        )
    lines.append("")
    if not report["targets"]:
        lines.append("target (sync, fsync=always >= etcd puts/s at p50 <= etcd's): not measured")
    for t in report["targets"]:
        lines.append(
            f"target, {t['clients']} client(s): sync fsync=always {t['ratio']:.2f}x etcd puts/s, p50 "
            f"{t['p50_ratio']:.2f}x etcd's: {'MET' if t['met'] else 'NOT MET'}"
        )
    return "\n".join(lines)


def etcd_version() -> str | None:
    path = shutil.which("etcd")
    if path is None:
        return None
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = done.stdout.splitlines()[0] if done.stdout else ""
    return first.removeprefix("etcd Version: ").strip() or None


def run_bench(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-replication-", dir=args.tmp_dir) as tmp:
        work_dir = Path(tmp)
        data_filesystem = filesystem_of(work_dir)
        samples, rest = measure_all(args, settings, work_dir)
    rows = summarize(samples)
    report: dict[str, Any] = rounded(
        {
            "bench": "replication",
            "mode": args.mode,
            "runs": args.runs,
            "quick": args.quick,
            "settings": asdict(settings),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "etcd_version": etcd_version(),
            "data_filesystem": data_filesystem,
            "results": rows,
            "at_rest": rest,
            "targets": verdicts(rows),
        }
    )
    return report


def _choices(text: str, allowed: tuple[str, ...], option: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        parser.error(f"{option}: choose from {', '.join(allowed)} (comma-separated), not {text!r}")
    return chosen


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("leader",), default="leader", help="replication mode (leader only)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per setting")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded load before each")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 run, 1 s per measurement")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    parser.add_argument("--replication", default=",".join(REPLICATION_SETTINGS), help="settings to measure")
    parser.add_argument("--fsync", default=",".join(FSYNC_POLICIES), help="kvstore fsync policies to measure")
    parser.add_argument("--clients", default=",".join(map(str, CLIENT_COUNTS)), help="concurrent client counts")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rest", type=float, default=3.0, help="seconds the at-rest message rate is measured")
    parser.add_argument("--rest-settle", type=float, default=2.0, help="idle seconds before that")
    parser.add_argument("--tmp-dir", help="where the temporary directory with both systems' data goes")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup, args.rest = 1, 1.0, 0.5, 2.0
    args.replication = _choices(args.replication, REPLICATION_SETTINGS, "--replication", parser)
    args.fsync = _choices(args.fsync, FSYNC_POLICIES, "--fsync", parser)
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients: comma-separated whole numbers, not {args.clients!r}")
    if args.runs < 1 or args.keys < 1 or args.value_bytes < 1 or min(args.clients) < 1:
        parser.error("--runs, --keys, --value-bytes and --clients must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.rest <= 0 or args.rest_settle < 0:
        parser.error("--duration and --rest must be positive, --warmup and --rest-settle not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = Settings(args.keys, args.value_bytes, args.duration, args.warmup, args.rest, args.rest_settle)
    try:
        report = run_bench(args, settings)
    except (BenchError, ClusterError) as exc:
        print(f"replication bench failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
