"""SimCluster: every node of a cluster in one thread, under a virtual clock and a virtual network.

One integer seed decides everything: a root ``random.Random(seed)`` hands a child generator to the
network and then to each node in config order (and to each restarted node, in the order restarts
happen). Inputs run one at a time off the event heap, so the same seed and the same calls from the
workload give the same trace, whose hash ``trace_hash()`` compares runs.

Effects are executed as the server driver would: ``Send`` goes to the network, ``Reply`` completes a
client request, timers become heap entries (in the node's own clock, which the fault policy may skew).
A message to a node that is down when it is sent comes back to its sender as ``SendFailed`` once its
copies would have arrived (a refused connection); copies already on their way when a node crashes are
lost silently (a reset connection says nothing about what was delivered).

Syncs follow ``kvstore.flush_policy``, as the server's do: a durable ``Send`` or ``Reply`` waits for a
sync covering its step, which starts at once; one sync covers every write made before it started (group
commit). A sync with fsync (``always``, ``batch``) takes ``fsync_latency_ms`` of virtual time; the
write-out of ``never`` takes none. After every sync the node is stepped ``Synced``. Every
``DISK_WRITEBACK_INTERVAL_MS`` each disk makes what the OS holds durable, as the kernel does. A crash
keeps only the node's disk: a process crash keeps what was written out, a power loss only what is durable.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvstore.config import ClusterConfig
from kvstore.effects import CancelTimer, Effect, FaultPolicy, NoFaults, Reply, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.flush_policy import DISK_WRITEBACK_INTERVAL_MS, FlushSchedule
from kvstore.messages import (
    ClientOp,
    ClientRequest,
    Failure,
    Input,
    Message,
    Result,
    SendFailed,
    Started,
    Synced,
    TimerFired,
)
from kvstore.node import Node
from kvstore.sim.events import EventQueue, SimulationError
from kvstore.sim.host import NodeHost, Outbound
from kvstore.sim.network import Latency, SimNetwork
from kvstore.sim.trace import Trace
from kvstore.storage.base import SyncJob
from kvstore.storage.simulated import CrashKind, SimStorage

ResultCallback = Callable[[int, Result], None]

# "process": the OS keeps what the node wrote out (kill -9); "power": only what was made durable survives.
CRASH_KINDS: tuple[CrashKind, ...] = ("process", "power")

# ---------------------------------------------------------------- heap events


@dataclass(frozen=True)
class _Deliver:
    msg: Message
    wire: bytes


@dataclass(frozen=True)
class _Timer:
    key: str
    generation: int
    # When the timer is due in the node's clock; a skewed clock may need the entry pushed later.
    due_ms: int


@dataclass(frozen=True)
class _ClientCall:
    request_id: int
    op: ClientOp


@dataclass(frozen=True)
class _SyncDone:
    job: SyncJob
    life: int


@dataclass(frozen=True)
class _FlushTick:
    life: int


@dataclass(frozen=True)
class _Refused:
    """A message whose destination was down when it was sent, reported back to its sender."""

    msg: Message
    life: int


@dataclass(frozen=True)
class _Writeback:
    """The kernel's periodic flush of dirty pages, on every disk."""


@dataclass(frozen=True)
class _Action:
    fn: Callable[[], None]


_Event = _Deliver | _Timer | _ClientCall | _SyncDone | _FlushTick | _Refused | _Writeback | _Action


@dataclass(frozen=True)
class _Pending:
    node_id: str
    on_result: ResultCallback | None


@dataclass
class SimStats:
    delivered: int = 0
    # Copies that arrived at a node while it was down.
    lost_to_crash: int = 0
    # Messages sent to a node that was down, reported back as SendFailed.
    send_failed: int = 0
    requests: int = 0
    replies: int = 0
    timers_fired: int = 0
    syncs: int = 0
    writebacks: int = 0
    crashes: int = 0
    restarts: int = 0
    events: int = 0


class SimCluster:
    def __init__(
        self,
        seed: int,
        config: ClusterConfig,
        fault_policy: FaultPolicy | None = None,
        *,
        latency: Latency | None = None,
        link_latency: Mapping[tuple[str, str], Latency] | None = None,
        fsync_latency_ms: int = 1,
        max_events_per_run: int = 5_000_000,
        max_heap_entries: int = 1_000_000,
        max_open_requests: int = 100_000,
        trace_keep_last: int = 200,
    ) -> None:
        if fsync_latency_ms < 0:
            raise ValueError(f"fsync_latency_ms must not be negative, got {fsync_latency_ms}")
        self.seed = seed
        self.config = config
        self.fsync_latency_ms = fsync_latency_ms
        self._flush = FlushSchedule.of(config.storage.fsync, config.storage.batch_interval_ms)
        self._root_rng = random.Random(seed)
        self._faults: FaultPolicy = fault_policy if fault_policy is not None else NoFaults()
        self.network = SimNetwork(self.child_rng(), self._faults, latency, link_latency)
        self.trace = Trace(trace_keep_last)
        self.stats = SimStats()
        self._queue: EventQueue[_Event] = EventQueue(max_heap_entries)
        self._max_events_per_run = max_events_per_run
        self._max_open_requests = max_open_requests
        # Held effects come from open requests, so a multiple of the in-flight limit is a sanity bound.
        max_held = config.limits.max_inflight * 4
        self._hosts = {node_id: NodeHost(node_id, max_held) for node_id in config.node_ids}
        self._pending: dict[int, _Pending] = {}
        self._results: dict[int, Result] = {}
        self._callbacks: deque[tuple[ResultCallback, int, Result]] = deque()
        self._next_request_id = 1
        self._next_timer_generation = 1
        # Message copies on their way, and refusals on their way back to a sender.
        self._in_flight_copies = 0
        self._running = False
        storage = config.storage
        self.trace.record(("cluster", seed, config.node_ids, config.partitions, storage.fsync, fsync_latency_ms))
        self._queue.push(DISK_WRITEBACK_INTERVAL_MS, "", _Writeback())
        for node_id in config.node_ids:
            self._boot(self._hosts[node_id], "start")

    # ------------------------------------------------------------ inspection

    @property
    def now_ms(self) -> int:
        return self._queue.now_ms

    def node_ids(self) -> tuple[str, ...]:
        return self.config.node_ids

    def is_up(self, node_id: str) -> bool:
        return self._host(node_id).up

    def node(self, node_id: str) -> Node:
        return self._host(node_id).live_node()

    def storage(self, node_id: str) -> SimStorage:
        return self._host(node_id).live_storage()

    def node_clock_ms(self, node_id: str) -> int:
        return self.now_ms + self._faults.clock_offset_ms(node_id, self.now_ms)

    def trace_hash(self) -> str:
        return self.trace.hash_hex()

    def child_rng(self) -> random.Random:
        """A generator for one more component (a workload, a nemesis), drawn from the root in call order."""
        return random.Random(self._root_rng.getrandbits(64))

    def idle(self) -> bool:
        """No open request, no message in flight, nothing waiting for a sync."""
        return (
            not self._pending
            and self._in_flight_copies == 0
            and all(h.held_count == 0 and h.sync_job is None for h in self._hosts.values())
        )

    # ------------------------------------------------------------ faults

    def crash(self, node_id: str, kind: CrashKind = "process") -> None:
        """Drop the node and its storage. A "process" crash keeps what the node wrote out to its disk, a
        "power" loss only what was made durable there. Open requests on the node fail."""
        if kind not in CRASH_KINDS:
            raise ValueError(f"crash kind must be one of {', '.join(CRASH_KINDS)}, got {kind!r}")
        host = self._host(node_id)
        if not host.up:
            raise ValueError(f"{node_id} is already down")
        host.crash(kind)
        self.stats.crashes += 1
        self.trace.record(("crash", self.now_ms, node_id, kind))
        # The client's connection breaks: whatever the node did with the request is unknown.
        lost = Failure.of(ErrorCode.TIMEOUT, f"{node_id} crashed before answering; the op may have happened")
        for request_id in [rid for rid, p in self._pending.items() if p.node_id == node_id]:
            self._finish(request_id, lost)
        self._drain_callbacks_outside_run()

    def restart(self, node_id: str) -> None:
        self._boot(self._host(node_id), "restart")
        self.stats.restarts += 1

    # ------------------------------------------------------------ clients and workloads

    def submit(self, node_id: str, op: ClientOp, on_result: ResultCallback | None = None) -> int:
        """Send ``op`` to ``node_id`` now; the result goes to ``on_result`` or to ``result()``."""
        host = self._host(node_id)
        if len(self._pending) + len(self._results) >= self._max_open_requests:
            raise SimulationError(f"over {self._max_open_requests} requests open or unclaimed; use callbacks")
        request_id = self._next_request_id
        self._next_request_id += 1
        self.stats.requests += 1
        self.trace.record(("submit", self.now_ms, node_id, request_id, op))
        self._pending[request_id] = _Pending(node_id, on_result)
        if host.up:
            self._queue.push(self.now_ms, node_id, _ClientCall(request_id, op))
        else:
            self._finish(request_id, Failure.of(ErrorCode.UNAVAILABLE, f"{node_id} is down"))
            self._drain_callbacks_outside_run()
        return request_id

    def result(self, request_id: int) -> Result | None:
        """The result of a request submitted without a callback, once it has arrived (it is then forgotten)."""
        return self._results.pop(request_id, None)

    def schedule(self, at_ms: int, action: Callable[[], None]) -> None:
        """Run ``action`` at ``at_ms`` (true time) from the event loop, in order with everything else."""
        self._queue.push(at_ms, "", _Action(action))

    def request(self, node_id: str, op: ClientOp, limit_ms: int = 60_000) -> Result:
        """Submit ``op`` and run the simulation until its result arrives."""
        request_id = self.submit(node_id, op)
        if request_id not in self._results:
            self._run(self.now_ms + limit_ms, stop=lambda: request_id in self._results)
        result = self._results.pop(request_id, None)
        if result is None:
            raise SimulationError(f"seed={self.seed}: no result for {op!r} on {node_id} within {limit_ms} ms")
        return result

    # ------------------------------------------------------------ running

    def run_until(self, at_ms: int) -> None:
        self._run(at_ms, stop=None)

    def run_for(self, duration_ms: int) -> None:
        self._run(self.now_ms + duration_ms, stop=None)

    def run_until_idle(self, limit_ms: int = 600_000) -> None:
        """Run until ``idle()``; fails if that takes more than ``limit_ms`` of virtual time."""
        self.run_until_true(self.idle, limit_ms, what="idle")

    def run_until_true(self, condition: Callable[[], bool], limit_ms: int, what: str = "done") -> None:
        """Run until ``condition()`` holds (checked between events); fails after ``limit_ms`` of virtual time."""
        self._run(self.now_ms + limit_ms, stop=condition)
        if not condition():
            raise SimulationError(
                f"seed={self.seed}: not {what} after {limit_ms} ms ({len(self._pending)} requests open)"
            )

    def _run(self, until_ms: int, stop: Callable[[], bool] | None) -> None:
        if self._running:
            raise SimulationError("the simulation cannot be run from inside one of its own callbacks")
        self._running = True
        try:
            self._loop(until_ms, stop)
        except Exception as exc:
            tail = "\n  ".join(repr(e)[:300] for e in self.trace.last()[-10:])
            raise SimulationError(f"seed={self.seed} at {self.now_ms} ms: {exc}\nlast events:\n  {tail}") from exc
        finally:
            self._running = False

    def _loop(self, until_ms: int, stop: Callable[[], bool] | None) -> None:
        budget = self._max_events_per_run
        while True:
            self._drain_callbacks()
            if stop is not None and stop():
                return
            next_at_ms = self._queue.next_at_ms()
            if next_at_ms is None or next_at_ms > until_ms:
                break
            if budget == 0:
                raise SimulationError(f"more than {self._max_events_per_run} events in one run")
            budget -= 1
            self.stats.events += 1
            target, event = self._queue.pop()
            self._dispatch(target, event)
        self._queue.advance_to(max(until_ms, self.now_ms))

    def _dispatch(self, target: str, event: _Event) -> None:
        if isinstance(event, _Action):
            event.fn()
            return
        if isinstance(event, _Writeback):
            self._writeback()
            return
        host = self._hosts[target]
        if isinstance(event, _Deliver):
            self._in_flight_copies -= 1
            if not host.up:
                self.stats.lost_to_crash += 1
                self.trace.record(("lost", self.now_ms, target, event.wire))
                return
            self.stats.delivered += 1
            self.trace.record(("deliver", self.now_ms, target, self.node_clock_ms(target), event.wire))
            self._step(host, event.msg)
        elif isinstance(event, _Timer):
            self._on_timer(host, event)
        elif isinstance(event, _ClientCall):
            if event.request_id in self._pending:  # else: it failed when the node crashed
                self.trace.record(("request", self.now_ms, target, self.node_clock_ms(target), event.request_id))
                self._step(host, ClientRequest(event.request_id, event.op))
        elif isinstance(event, _SyncDone):
            if event.life == host.life:  # else: the node crashed while syncing, which lost the job
                self._complete_sync(host, event.job)
        elif isinstance(event, _Refused):
            self._in_flight_copies -= 1
            if event.life == host.life:  # else: the sender crashed since, and its connection with it
                self.stats.send_failed += 1
                self.trace.record(("send-failed", self.now_ms, target, event.msg.dst))
                self._step(host, SendFailed(event.msg))
        elif event.life == host.life:
            self._start_sync(host)
            self._schedule_flush_tick(host)

    # ------------------------------------------------------------ stepping a node

    def _boot(self, host: NodeHost, how: str) -> None:
        if host.up:
            raise ValueError(f"{host.node_id} is already up")
        storage = SimStorage(host.disk)
        host.boot(Node(host.node_id, self.config, storage, self.child_rng()), storage)
        self.trace.record((how, self.now_ms, host.node_id, storage.written_lsn))
        if self._flush.interval_ms is not None:
            self._schedule_flush_tick(host)
        self._step(host, Started())

    def _on_timer(self, host: NodeHost, timer: _Timer) -> None:
        if host.timers.get(timer.key) != timer.generation:
            return  # moved or cancelled since (or the node crashed)
        node_now_ms = self.node_clock_ms(host.node_id)
        if node_now_ms < timer.due_ms:
            # The node's clock was set back since the timer was scheduled: it is not due yet there.
            self._queue.push(self.now_ms + timer.due_ms - node_now_ms, host.node_id, timer)
            return
        del host.timers[timer.key]
        self.stats.timers_fired += 1
        self.trace.record(("timer", self.now_ms, host.node_id, node_now_ms, timer.key))
        self._step(host, TimerFired(timer.key))

    def _step(self, host: NodeHost, inp: Input) -> None:
        effects = host.live_node().step(self.node_clock_ms(host.node_id), inp)
        written_lsn = host.live_storage().written_lsn
        pending_writes = host.pending_writes()
        for effect in effects:
            if isinstance(effect, (Send, Reply)):
                if effect.durable and pending_writes > 0:
                    host.hold(written_lsn, effect)
                else:
                    self._execute(host, effect)
            else:
                self._apply_timer_effect(host, effect)
        if self._flush.sync_now(pending_writes, durable_waiting=host.held_count > 0):
            self._start_sync(host)

    def _apply_timer_effect(self, host: NodeHost, effect: Effect) -> None:
        if isinstance(effect, SetTimer):
            generation = self._next_timer_generation
            self._next_timer_generation += 1
            host.timers[effect.key] = generation
            wait_ms = max(0, effect.at_ms - self.node_clock_ms(host.node_id))
            self._queue.push(self.now_ms + wait_ms, host.node_id, _Timer(effect.key, generation, effect.at_ms))
        elif isinstance(effect, CancelTimer):
            host.timers.pop(effect.key, None)
        else:
            raise SimulationError(f"{host.node_id} returned an unknown effect {effect!r}")

    def _execute(self, host: NodeHost, effect: Outbound) -> None:
        if isinstance(effect, Send):
            self._send(host, effect.msg)
            return
        pending = self._pending.get(effect.request_id)
        if pending is None or pending.node_id != host.node_id:
            raise SimulationError(f"{host.node_id} replied to request {effect.request_id}, not open there")
        self._finish(effect.request_id, effect.result)

    def _send(self, host: NodeHost, msg: Message) -> None:
        if msg.src != host.node_id or msg.dst not in self._hosts:
            raise SimulationError(f"{host.node_id} sent a message from {msg.src!r} to {msg.dst!r}")
        sent = self.network.transmit(self.now_ms, msg)
        self.trace.record(("send", self.now_ms, msg.src, msg.dst, sent.arrivals_ms))
        if not self._hosts[msg.dst].up:
            # Nothing listens there: each copy is refused when it would have arrived, and the sender
            # learns it once the last one is (the server's transport reports only when no copy can land).
            # A message the fault policy dropped is never reported, as on a real network.
            if sent.arrivals_ms:
                self._queue.push(max(sent.arrivals_ms), msg.src, _Refused(sent.msg, host.life))
                self._in_flight_copies += 1
            return
        for arrival_ms in sent.arrivals_ms:
            self._queue.push(arrival_ms, msg.dst, _Deliver(sent.msg, sent.wire))
        self._in_flight_copies += len(sent.arrivals_ms)

    # ------------------------------------------------------------ syncing

    def _start_sync(self, host: NodeHost) -> None:
        if host.sync_job is not None:
            return
        job = host.live_storage().prepare_sync(fsync=self._flush.fsync)
        if job is None:
            return
        host.sync_job = job
        # A write-out to the OS (fsync = "never") costs no device time.
        latency_ms = self.fsync_latency_ms if self._flush.fsync else 0
        self._queue.push(self.now_ms + latency_ms, host.node_id, _SyncDone(job, host.life))

    def _complete_sync(self, host: NodeHost, job: SyncJob) -> None:
        job.run()
        storage = host.live_storage()
        storage.complete_sync(job)
        host.sync_job = None
        self.stats.syncs += 1
        self.trace.record(("synced", self.now_ms, host.node_id, job.up_to_lsn))
        for effect in host.releasable():
            self._execute(host, effect)
        self._step(host, Synced(storage.synced_lsn))
        # Durable effects of steps taken while this sync ran wait for the next one (group commit).
        if self._flush.sync_now(host.pending_writes(), durable_waiting=host.held_count > 0):
            self._start_sync(host)

    def _schedule_flush_tick(self, host: NodeHost) -> None:
        assert self._flush.interval_ms is not None
        self._queue.push(self.now_ms + self._flush.interval_ms, host.node_id, _FlushTick(host.life))

    def _writeback(self) -> None:
        for node_id in self.config.node_ids:
            self._hosts[node_id].disk.writeback()
        self.stats.writebacks += 1
        self.trace.record(("writeback", self.now_ms))
        self._queue.push(self.now_ms + DISK_WRITEBACK_INTERVAL_MS, "", _Writeback())

    # ------------------------------------------------------------ results

    def _finish(self, request_id: int, result: Result) -> None:
        pending = self._pending.pop(request_id)
        self.stats.replies += 1
        self.trace.record(("reply", self.now_ms, pending.node_id, request_id, result))
        if pending.on_result is None:
            self._results[request_id] = result
        else:
            self._callbacks.append((pending.on_result, request_id, result))

    def _drain_callbacks(self) -> None:
        # Callbacks run between events, never inside a step, so they may submit or crash freely.
        while self._callbacks:
            callback, request_id, result = self._callbacks.popleft()
            callback(request_id, result)

    def _drain_callbacks_outside_run(self) -> None:
        if not self._running:
            self._drain_callbacks()

    def _host(self, node_id: str) -> NodeHost:
        host = self._hosts.get(node_id)
        if host is None:
            raise ValueError(f"no node {node_id!r} in the simulated cluster (nodes: {', '.join(self._hosts)})")
        return host
