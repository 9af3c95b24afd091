"""The crash half of `kvstore demo`: a real local cluster, a concurrent workload, a crash in the middle, a verdict.

The demo is a list of steps (``STEPS``) run in order against one ``DemoContext`` (the cluster, a client
and the history being recorded); each step prints what it does and returns a ``StepResult``, and the
demo passes when every step passes.

Every op goes into a Jepsen-style history, as the chaos runners record it: a write that fails with a
definite error is ``fail`` (it did not happen), one that fails with an indefinite error (a timeout) is
``info`` (it may have, at any time after it was sent) and its worker goes on as a new process. After the
workload, every written key is read through each node, and the chaos checkers judge the whole history:
the lost-write checker (no acknowledged write may be missing from a later read) and the linearizability
checker (no read may return a value no write could have left there).
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

from chaos.checkers import linearizable, lost_writes
from chaos.run_sim import Recorder
from chaos.workloads import PlannedOp
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


# ---------------------------------------------------------------- statistics


@dataclass
class PhaseStats:
    name: str
    ops: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
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
    out: TextIO
    started_s: float = field(default_factory=time.monotonic)
    recorder: Recorder = field(default_factory=Recorder)
    # The next unused process id of the history (workers take 0 .. workers - 1 first).
    next_process: int = 0

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started_s:5.1f}s] {message}", file=self.out, flush=True)

    def new_process(self) -> int:
        self.next_process += 1
        return self.next_process - 1

    async def record(self, process: int, op: PlannedOp, client: AsyncClient) -> KvError | None:
        """Run one read or write through ``client`` into the history; the error it failed with, if any."""
        assert op.key is not None
        self.recorder.invoke(process, op, self._ms())
        try:
            if op.f == "read":
                found = await client.get(op.key)
                value = None if found is None else found.value.decode()
            else:
                await client.put(op.key, op.value.encode())
                value = op.value
        except KvError as exc:
            self.recorder.complete(process, op, ("fail" if exc.definite else "info", None, exc.code.value), self._ms())
            return exc
        self.recorder.complete(process, op, ("ok", value, None), self._ms())
        return None

    def _ms(self) -> int:
        return round((time.monotonic() - self.started_s) * 1000)

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
        process = index
        written = 0
        while self.take():
            key = rng.choice(keys)
            if rng.random() < settings.read_share:
                op = PlannedOp("read", key, None)
            else:
                written += 1
                op = PlannedOp("write", key, f"{key}=w{index}.{written}")
            error = await self.ctx.record(process, op, self.ctx.client)
            self.phase.ops += 1
            if error is None:
                self.phase.ok += 1
                continue
            self.phase.errors[error.code.value] += 1
            if not error.definite:
                process = self.ctx.new_process()  # the op may still be running: this worker goes on as another
        self.phase.ended_s = time.monotonic()

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
    ctx.next_process = s.workers
    load = _Workload(ctx)
    # The kill and the restart fall due well before the op cap, so the controller always finishes.
    await asyncio.gather(load.crash_and_recover(), *(load.worker(i) for i in range(s.workers)))
    for phase in load.phases:
        ctx.say(_phase_line(phase))
    codes = sorted({code for phase in load.phases for code in phase.errors})
    for code in map(ErrorCode, codes):
        ctx.say(f"  {code.value}: HTTP {code.http_status}, {_MEANING[code.definite]}")
    writes = Counter(op.type for op in ctx.recorder.history("demo").ops() if op.f == "write")
    summary = f"{writes['ok']} writes acknowledged, {writes['info']} uncertain, {writes['fail']} failed"
    return StepResult("workload with a crash", writes["ok"] > 0, summary)


_MEANING = {True: "definite: the op did not happen", False: "indefinite: the op may have happened"}


def _phase_line(p: PhaseStats) -> str:
    return f"  {p.name:<10} {p.ops:6d} ops  {p.ok:6d} ok  {p.ops_per_s:7.0f} ops/s  errors: {_counts(p.errors)}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counter.items())) or "none"


# ---------------------------------------------------------------- step 2: read every written key through each node


async def verify_acknowledged_writes(ctx: DemoContext) -> StepResult:
    keys = sorted({op.key for op in ctx.recorder.history("demo").ops() if op.f == "write" and op.type == "ok"})
    node_ids = ctx.cluster.config.node_ids
    ctx.say(f"verifying: reading all {len(keys)} written keys through each of the {len(node_ids)} nodes "
            "(a node forwards keys it does not own to their owner)")
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(ctx.settings.verify_concurrency)

    async def read(node_client: AsyncClient, key: str) -> None:
        async with gate:
            error = await ctx.record(ctx.new_process(), PlannedOp("read", key, None), node_client)
        if error is not None:
            failures[error.code.value] += 1

    for node_id in node_ids:
        async with AsyncClient(
            [ctx.cluster.url(node_id)], route_by_map=False, timeout_s=ctx.settings.client_timeout_s
        ) as node_client:
            await asyncio.gather(*(read(node_client, key) for key in keys))
    reads = len(keys) * len(node_ids)
    if failures:
        ctx.say(f"  {sum(failures.values())} reads failed: {_counts(failures)}")
    result = lost_writes.check(ctx.recorder.history("demo"))
    ctx.say(f"  lost-write checker: {len(result.lost)} of {result.acknowledged} acknowledged writes lost")
    for lost in result.lost[:10]:
        when = "" if lost.read is None else f" at {lost.read.invoke.time} ms"
        ctx.say(f"  LOST {lost.key} = {lost.write.invoke.value!r}: a read{when} returned {lost.read_value!r}")
    passed = reads > 0 and not failures and result.valid
    summary = f"{reads - sum(failures.values())}/{reads} reads answered, {len(result.lost)} acknowledged writes lost"
    return StepResult("every acknowledged write readable from every node", passed, summary)


# ---------------------------------------------------------------- step 3: the whole history, linearizable


async def linearizable_history(ctx: DemoContext) -> StepResult:
    history = ctx.recorder.history("demo")
    result = linearizable.check(history, time_limit_s=60.0)
    verdict = "valid" if result.valid is True else result.valid
    summary = f"{len(history.ops())} ops over {result.keys_checked} keys: {verdict}"
    if result.valid is not True:
        ctx.say(f"  linearizability checker: {result.to_json()}")
    return StepResult("the whole history is linearizable", result.valid is True, summary)


# ---------------------------------------------------------------- running it


STEPS: tuple[Step, ...] = (workload_with_crash, verify_acknowledged_writes, linearizable_history)


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
        ctx = DemoContext(settings, cluster, client, out, started_s)
        ctx.say("cluster up: " + ", ".join(f"{n.node_id} {n.url}" for n in cluster.config.nodes))
        return await _run_steps(ctx, STEPS)
