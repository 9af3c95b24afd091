"""`kvstore demo`: a real local cluster, a concurrent workload, a crash in the middle, and a verdict.

The demo is a list of steps (``STEPS``) run in order against one ``DemoContext`` (the cluster, a client
and the ledger of acknowledged writes); each step prints what it does and returns a ``StepResult``, and
the demo passes when every step passes. A new check (a chaos scenario with a checker's verdict) is one
more step.

The ledger is what makes the verification exact: each key is written by exactly one worker, one write
at a time, so "the last acknowledged value" of a key is well defined. A write that fails with a definite
error did not happen; one that fails with an indefinite error (a timeout) may have, at any time after it
was sent, so its value stays acceptable for that key.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kvstore.client import AsyncClient
from kvstore.cluster import LocalCluster
from kvstore.errors import ErrorCode, KvError


@dataclass(frozen=True)
class DemoSettings:
    nodes: int = 3
    keys: int = 400
    workers: int = 16
    # Ops started in each phase: healthy, victim down (plus those started while it restarts), recovered.
    phase_ops: int = 1500
    # Share of operations that are reads; the rest are writes.
    read_share: float = 0.4
    victim: str = "n2"
    seed: int = 1
    client_timeout_s: float = 5.0
    # Verification reads in flight at once, per node.
    verify_concurrency: int = 32


# ---------------------------------------------------------------- the ledger of acknowledged writes


@dataclass
class KeyLedger:
    # None: never acknowledged (the key may be absent).
    acked: bytes | None = None
    # Values of writes whose outcome is unknown (indefinite errors). Such a write may take effect at any
    # time after it was sent, even after a later acknowledged write, so its value stays possible.
    maybe: list[bytes] = field(default_factory=list)

    def allowed(self) -> list[bytes | None]:
        return [self.acked, *self.maybe]


class Ledger:
    def __init__(self) -> None:
        self._keys: dict[str, KeyLedger] = {}
        self.acked_writes = 0
        self.uncertain_writes = 0

    def acknowledged(self, key: str, value: bytes) -> None:
        self._keys.setdefault(key, KeyLedger()).acked = value
        self.acked_writes += 1

    def uncertain(self, key: str, value: bytes) -> None:
        self._keys.setdefault(key, KeyLedger()).maybe.append(value)
        self.uncertain_writes += 1

    def allows(self, key: str, value: bytes | None) -> bool:
        return value in self.entry(key).allowed()

    def entry(self, key: str) -> KeyLedger:
        return self._keys.get(key, KeyLedger())

    def written_keys(self) -> list[str]:
        return sorted(k for k, e in self._keys.items() if e.acked is not None)


# ---------------------------------------------------------------- statistics


@dataclass
class PhaseStats:
    name: str
    ops: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # Reads that returned a value the ledger does not allow: a consistency violation.
    wrong_reads: int = 0
    started_s: float = 0.0
    ended_s: float = 0.0

    @property
    def ops_per_s(self) -> float:
        elapsed_s = self.ended_s - self.started_s
        return self.ops / elapsed_s if elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class StepResult:
    name: str
    passed: bool
    summary: str


@dataclass
class DemoContext:
    settings: DemoSettings
    cluster: LocalCluster
    client: AsyncClient
    ledger: Ledger
    out: TextIO
    started_s: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started_s:5.1f}s] {message}", file=self.out, flush=True)

    @property
    def key_names(self) -> list[str]:
        return [f"demo/{i:05d}" for i in range(self.settings.keys)]


Step = Callable[[DemoContext], Awaitable[StepResult]]


# ---------------------------------------------------------------- step 1: workload with a crash


class _Workload:
    """Workers drawing ops from one counter; an op counts in the phase in which it finished.

    The victim is killed after ``phase_ops`` ops and restarted after twice that; ops go on while it
    restarts, and ``phase_ops`` more run once it is back. ``max_ops`` bounds the whole run regardless.
    """

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self.phase_ops = ctx.settings.phase_ops
        self.started = 0
        self.stop_at = 10 * self.phase_ops
        self.phases = [PhaseStats("healthy", started_s=time.monotonic())]
        self.kill_due = asyncio.Event()
        self.restart_due = asyncio.Event()

    @property
    def phase(self) -> PhaseStats:
        return self.phases[-1]

    def begin_phase(self, name: str) -> None:
        now = time.monotonic()
        self.phase.ended_s = now
        self.phases.append(PhaseStats(name, started_s=now))

    def take(self) -> bool:
        if self.started >= self.stop_at:
            return False
        self.started += 1
        if self.started == self.phase_ops:
            self.kill_due.set()
        if self.started == 2 * self.phase_ops:
            self.restart_due.set()
        return True

    async def worker(self, index: int) -> None:
        settings = self.ctx.settings
        keys = self.ctx.key_names[index :: settings.workers]
        rng = random.Random(settings.seed * 1000 + index)
        written = 0
        while self.take():
            key = rng.choice(keys)
            if rng.random() < settings.read_share:
                await self._read(key)
            else:
                written += 1
                await self._write(key, f"{key}=w{index}.{written}".encode())
        self.phase.ended_s = time.monotonic()

    async def _read(self, key: str) -> None:
        try:
            value = await read_value(self.ctx.client, key)
        except KvError as exc:
            self._failed(exc)
            return
        self._succeeded()
        if not self.ctx.ledger.allows(key, value):
            self.phase.wrong_reads += 1

    async def _write(self, key: str, value: bytes) -> None:
        try:
            await self.ctx.client.put(key, value)
        except KvError as exc:
            self._failed(exc)
            if not exc.definite:
                self.ctx.ledger.uncertain(key, value)
            return
        self._succeeded()
        self.ctx.ledger.acknowledged(key, value)

    def _succeeded(self) -> None:
        self.phase.ops += 1
        self.phase.ok += 1

    def _failed(self, error: KvError) -> None:
        self.phase.ops += 1
        self.phase.errors[error.code.value] += 1

    async def crash_and_recover(self) -> None:
        """Kill the victim once its share of ops has started, restart it later; both run off the loop."""
        ctx, victim = self.ctx, self.ctx.settings.victim
        await self.kill_due.wait()
        # The phase turns first, so requests cut off by the kill count as failures of the down phase.
        self.begin_phase(f"{victim} down")
        await asyncio.to_thread(ctx.cluster.kill, victim)
        ctx.say(f"killed {victim} with SIGKILL; requests for its keys now fail until it is back")
        await self.restart_due.wait()
        ctx.say(f"restarting {victim} on the same port with the same data")
        await asyncio.to_thread(ctx.cluster.restart, victim)
        self.begin_phase("recovered")
        self.stop_at = min(self.stop_at, self.started + self.phase_ops)
        ctx.say(f"{victim} is back and healthy")


async def workload_with_crash(ctx: DemoContext) -> StepResult:
    s = ctx.settings
    ctx.say(f"workload: {s.workers} async workers, {s.keys} keys, {s.read_share:.0%} reads; "
            f"{s.victim} is killed after {s.phase_ops} ops")
    load = _Workload(ctx)
    # The kill and the restart fall due well before the op cap, so the controller always finishes.
    await asyncio.gather(load.crash_and_recover(), *(load.worker(i) for i in range(s.workers)))
    for phase in load.phases:
        ctx.say(_phase_line(phase))
    codes = sorted({code for phase in load.phases for code in phase.errors})
    for code in map(ErrorCode, codes):
        ctx.say(f"  {code.value}: HTTP {code.http_status}, {_MEANING[code.definite]}")
    wrong = sum(p.wrong_reads for p in load.phases)
    summary = (f"{ctx.ledger.acked_writes} writes acknowledged, {ctx.ledger.uncertain_writes} uncertain; "
               f"{wrong} reads returned a value never written")
    return StepResult("workload with a crash", wrong == 0, summary)


_MEANING = {True: "definite: the op did not happen", False: "indefinite: the op may have happened"}


def _phase_line(p: PhaseStats) -> str:
    return f"  {p.name:<10} {p.ops:6d} ops  {p.ok:6d} ok  {p.ops_per_s:7.0f} ops/s  errors: {_counts(p.errors)}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counter.items())) or "none"


# ---------------------------------------------------------------- step 2: verify every acknowledged write


async def verify_acknowledged_writes(ctx: DemoContext) -> StepResult:
    keys = ctx.ledger.written_keys()
    node_ids = ctx.cluster.config.node_ids
    ctx.say(f"verifying: reading all {len(keys)} written keys through each of the {len(node_ids)} nodes "
            "(a node forwards keys it does not own to their owner)")
    exact = from_uncertain = 0
    mismatches: list[str] = []
    failures: Counter[str] = Counter()
    for node_id in node_ids:
        async with AsyncClient([ctx.cluster.url(node_id)], timeout_s=ctx.settings.client_timeout_s) as node_client:
            results = await _read_all(node_client, keys, ctx.settings.verify_concurrency)
        for key, result in zip(keys, results, strict=True):
            entry = ctx.ledger.entry(key)
            if isinstance(result, KvError):
                failures[result.code.value] += 1
            elif result == entry.acked:
                exact += 1
            elif result in entry.maybe:
                from_uncertain += 1
            else:
                mismatches.append(f"{node_id}: {key} = {result!r}, last acknowledged {entry.acked!r}")
    reads = len(keys) * len(node_ids)
    ctx.say(f"  {reads} reads: {exact} returned the last acknowledged value")
    if from_uncertain:
        ctx.say(f"  {from_uncertain} returned the value of a write that timed out (it may have been applied)")
    if failures:
        ctx.say(f"  {sum(failures.values())} reads failed: {_counts(failures)}")
    for line in mismatches[:10]:
        ctx.say(f"  WRONG VALUE {line}")
    passed = reads > 0 and not mismatches and not failures
    summary = f"{exact + from_uncertain}/{reads} reads match the ledger"
    return StepResult("every acknowledged write readable from every node", passed, summary)


async def _read_all(client: AsyncClient, keys: Sequence[str], concurrency: int) -> list[bytes | KvError | None]:
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> bytes | KvError | None:
        async with gate:
            try:
                return await read_value(client, key)
            except KvError as exc:
                return exc

    return await asyncio.gather(*(one(k) for k in keys))


async def read_value(client: AsyncClient, key: str) -> bytes | None:
    """The key's value, or None if it does not exist; other failures raise ``KvError``."""
    found = await client.get(key)
    return None if found is None else found.value


# ---------------------------------------------------------------- running it


STEPS: tuple[Step, ...] = (workload_with_crash, verify_acknowledged_writes)


async def _run_steps(ctx: DemoContext, steps: Sequence[Step]) -> list[StepResult]:
    results = []
    for step in steps:
        results.append(await step(ctx))
    return results


def run_demo(settings: DemoSettings = DemoSettings(), out: TextIO = sys.stdout) -> bool:
    """Run every step on a fresh local cluster in a temporary directory; True if all passed.

    The cluster is always stopped. The directory (logs and data) is removed after a pass and kept, with
    its path printed, after a failure, so the node logs can be read.
    """
    started_s = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="kvstore-demo-"))
    print(f"kvstore demo: a {settings.nodes}-node cluster (sqlite, fsync=always) in {directory}", file=out)
    results: list[StepResult] = []
    try:
        with LocalCluster.create(directory, nodes=settings.nodes, fsync="always", engine="sqlite") as cluster:
            cluster.up()
            results = asyncio.run(_run_with_client(settings, cluster, out, started_s))
            print(f"[{time.monotonic() - started_s:5.1f}s] stopping the cluster", file=out, flush=True)
    finally:
        passed = bool(results) and all(r.passed for r in results)
        if passed:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"node logs and data kept in {directory}", file=out, flush=True)
    print("", file=out)
    for r in results:
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.summary}", file=out)
    print(f"demo {'passed' if passed else 'FAILED'} in {time.monotonic() - started_s:.1f}s", file=out, flush=True)
    return passed


async def _run_with_client(
    settings: DemoSettings, cluster: LocalCluster, out: TextIO, started_s: float
) -> list[StepResult]:
    async with AsyncClient(cluster.urls(), timeout_s=settings.client_timeout_s) as client:
        ctx = DemoContext(settings, cluster, client, Ledger(), out, started_s)
        ctx.say("cluster up: " + ", ".join(f"{n.node_id} {n.url}" for n in cluster.config.nodes))
        return await _run_steps(ctx, STEPS)
