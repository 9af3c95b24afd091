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

Operator orders come off the heap like everything else: ``move`` gives ``MovePartition`` to the partition's
server, ``join`` and ``leave`` give ``SetMember`` to the lowest active member that is up in ``view()`` (every
live node's map merged); each is a trace event, and so is a refusal (``order-refused``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from heapq import heappop
from typing import TypeVar

from kvstore.codec import fields
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
    MovePartition,
    Result,
    SendFailed,
    SetMember,
    Started,
    Synced,
    TimerFired,
)
from kvstore.node import Node
from kvstore.sim.events import EventQueue, SimulationError
from kvstore.sim.host import NodeHost, Outbound
from kvstore.sim.network import Latency, SimNetwork, Transmission
from kvstore.sim.trace import Trace
from kvstore.storage.base import SyncJob
from kvstore.storage.simulated import CrashKind, SimStorage
from partitioning.partition_map import ACTIVE, LEAVING, PartitionMap

ResultCallback = Callable[[int, Result], None]
_A = TypeVar("_A")
_B = TypeVar("_B")

# "process": the OS keeps what the node wrote out (kill -9); "power": only what was made durable survives.
CRASH_KINDS: tuple[CrashKind, ...] = ("process", "power")

# ---------------------------------------------------------------- heap events
#
# Each event on the heap is a bound handler and two arguments (kvstore/sim/events.py): a message copy
# arriving (``_on_deliver(host, transmission)``), a node timer (``_on_timer(host, (key, generation,
# due_ms))``), a client request reaching its node (``_on_client_call(host, request_id)``), a sync done
# (``_on_sync_done(host, job)``), a flush tick (``_on_flush_tick(host, life)``), a refused message back at
# its sender (``_on_refused(host, (msg, life))``), the disks' writeback, and a scheduled action.


class _Pending:
    """An open client request: the node it went to, who wants the result, and the op."""

    __slots__ = ("node_id", "on_result", "op")

    def __init__(self, node_id: str, on_result: ResultCallback | None, op: ClientOp) -> None:
        self.node_id = node_id
        self.on_result = on_result
        self.op = op


def _run_action(action: Callable[[], None], _unused: object) -> None:
    action()


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
        self._flush = FlushSchedule.of(
            config.storage.fsync, config.storage.batch_interval_ms, records_from_log=config.mode == "leader"
        )
        self._root_rng = random.Random(seed)
        self._faults: FaultPolicy = fault_policy if fault_policy is not None else NoFaults()
        self.network = SimNetwork(self.child_rng(), self._faults, latency, link_latency)
        self.trace = Trace(trace_keep_last)
        self._record = self.trace.record
        self.stats = SimStats()
        self._queue = EventQueue(max_heap_entries)
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
        self._clock_offset_ms = self._faults.clock_offset_ms
        self._queue.push(DISK_WRITEBACK_INTERVAL_MS, self._on_writeback)
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
        now_ms = self._queue.now_ms
        return now_ms + self._clock_offset_ms(node_id, now_ms)

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
        self._record(("crash", self._queue.now_ms, node_id, kind))
        # The client's connection breaks: whatever the node did with the request is unknown.
        lost = Failure.of(ErrorCode.TIMEOUT, f"{node_id} crashed before answering; the op may have happened")
        for request_id in [rid for rid, p in self._pending.items() if p.node_id == node_id]:
            self._finish(request_id, lost)
        self._drain_callbacks_outside_run()

    def restart(self, node_id: str) -> None:
        self._boot(self._host(node_id), "restart")
        self.stats.restarts += 1

    def move(self, partition: int, target: str) -> str:
        """Give ``MovePartition(partition, target)`` to the live node that serves ``partition`` now (by its own
        map); what was done, in words for a report."""
        self._host(target)
        for node_id in sorted(self._hosts):
            host = self._hosts[node_id]
            if host.up and host.node is not None and partition in host.node.replicas:
                if node_id == target:
                    return f"partition {partition} is on {target} already"
                self._record(("move", self._queue.now_ms, node_id, partition, target))
                self._queue.push(self._queue.now_ms, self._on_input, host, MovePartition(partition, target))
                return f"move partition {partition} from {node_id} to {target}"
        return f"partition {partition}: no live node serves it to move"

    def view(self) -> PartitionMap | None:
        """What the live nodes know together: every live node's partition map merged (a merge keeps, per
        partition and per roster entry, the newer one, so the order does not matter); None if all are down."""
        merged: PartitionMap | None = None
        for node_id in sorted(self._hosts):
            node = self._hosts[node_id].node
            if node is not None:
                merged = node.partition_map if merged is None else merged.merge(node.partition_map)
        return merged

    def join(self, node_id: str) -> str:
        """Admit ``node_id`` (a node of the config) at its config address: ``SetMember(node_id, "active",
        "host:port")`` to the lowest active member that is up, by ``view()`` (else to a leaving member that
        is up). What was done, in words; never raises for want of a live member."""
        address = self.config.address_text(self._host(node_id).node_id)
        return self._order_member(SetMember(node_id, ACTIVE, address), node_id)

    def leave(self, node_id: str) -> str:
        """Drain ``node_id``: ``SetMember(node_id, "leaving")`` to the lowest active member that is up (by
        ``view()``; the leaving node itself may be the one). What was done, in words."""
        self._host(node_id)
        return self._order_member(SetMember(node_id, LEAVING), node_id)

    def _order_member(self, order: SetMember, node_id: str) -> str:
        what = f"{order.state} {node_id}" + (f" at {order.address}" if order.address else "")
        view = self.view()
        if view is None:
            return f"{what}: no live node to give the order to"
        # The active members first (by id), then the leaving ones: a member that is up, whichever.
        members = (*view.active, *(n for n in view.members if n not in view.active))
        up = [n for n in members if n in self._hosts and self._hosts[n].up]
        if not up:
            return f"{what}: no live member to give the order to"
        to = up[0]
        self._record(("member", self._queue.now_ms, to, node_id, order.state, order.address))
        self._queue.push(self._queue.now_ms, self._on_order, self._hosts[to], order)
        return f"{what} (ordered at {to})"

    # ------------------------------------------------------------ clients and workloads

    def submit(self, node_id: str, op: ClientOp, on_result: ResultCallback | None = None) -> int:
        """Send ``op`` to ``node_id`` now; the result goes to ``on_result`` or to ``result()``."""
        host = self._host(node_id)
        if len(self._pending) + len(self._results) >= self._max_open_requests:
            raise SimulationError(f"over {self._max_open_requests} requests open or unclaimed; use callbacks")
        request_id = self._next_request_id
        self._next_request_id += 1
        self.stats.requests += 1
        # The op's and the result's fields (codec.fields), not the objects: the trace then packs no ext value
        # for them: 0.7 us less per op (the two events).
        self._record(("submit", self._queue.now_ms, node_id, request_id, fields(op)))
        self._pending[request_id] = _Pending(node_id, on_result, op)
        if host.up:
            self._queue.push(self._queue.now_ms, self._on_client_call, host, request_id)
        else:
            self._finish(request_id, Failure.of(ErrorCode.UNAVAILABLE, f"{node_id} is down"))
            self._drain_callbacks_outside_run()
        return request_id

    def result(self, request_id: int) -> Result | None:
        """The result of a request submitted without a callback, once it has arrived (it is then forgotten)."""
        return self._results.pop(request_id, None)

    def schedule(self, at_ms: int, action: Callable[[], None]) -> None:
        """Run ``action`` at ``at_ms`` (true time) from the event loop, in order with everything else."""
        self._queue.push(at_ms, _run_action, action)

    def call_at(self, at_ms: int, handler: Callable[[_A, _B], None], a: _A, b: _B) -> None:
        """``schedule`` for a driver's per-op events: ``handler(a, b)`` runs straight off the heap, with no
        closure to build and no wrapper to call in between."""
        self._queue.push(at_ms, handler, a, b)

    def request(self, node_id: str, op: ClientOp, limit_ms: int = 60_000) -> Result:
        """Submit ``op`` and run the simulation until its result arrives."""
        request_id = self.submit(node_id, op)
        if request_id not in self._results:
            self._run(self._queue.now_ms + limit_ms, stop=lambda: request_id in self._results)
        result = self._results.pop(request_id, None)
        if result is None:
            raise SimulationError(f"seed={self.seed}: no result for {op!r} on {node_id} within {limit_ms} ms")
        return result

    # ------------------------------------------------------------ running

    def run_until(self, at_ms: int) -> None:
        self._run(at_ms, stop=None)

    def run_for(self, duration_ms: int) -> None:
        self._run(self._queue.now_ms + duration_ms, stop=None)

    def run_until_idle(self, limit_ms: int = 600_000) -> None:
        """Run until ``idle()``; fails if that takes more than ``limit_ms`` of virtual time."""
        self.run_until_true(self.idle, limit_ms, what="idle")

    def run_until_true(self, condition: Callable[[], bool], limit_ms: int, what: str = "done") -> None:
        """Run until ``condition()`` holds (checked between events); fails after ``limit_ms`` of virtual time."""
        self._run(self._queue.now_ms + limit_ms, stop=condition)
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
            now_ms = self._queue.now_ms
            raise SimulationError(f"seed={self.seed} at {now_ms} ms: {exc}\nlast events:\n  {tail}") from exc
        finally:
            self._running = False

    def _loop(self, until_ms: int, stop: Callable[[], bool] | None) -> None:
        # The hot loop: the heap popped here, not through EventQueue.pop, and the clock set in place.
        queue = self._queue
        heap = queue.heap
        callbacks = self._callbacks
        budget = self._max_events_per_run
        ran = 0
        try:
            while True:
                if callbacks:
                    self._drain_callbacks()
                if stop is not None and stop():
                    return
                if not heap or heap[0][0] > until_ms:
                    break
                if ran == budget:
                    raise SimulationError(f"more than {self._max_events_per_run} events in one run")
                ran += 1
                at_ms, _, handler, a, b = heappop(heap)
                queue.now_ms = at_ms
                handler(a, b)
        finally:
            self.stats.events += ran
        queue.advance_to(max(until_ms, queue.now_ms))

    # ------------------------------------------------------------ events

    def _on_deliver(self, host: NodeHost, sent: Transmission) -> None:
        self._in_flight_copies -= 1
        now_ms = self._queue.now_ms
        if host.node is None:
            self.stats.lost_to_crash += 1
            self._record(("lost", now_ms, host.node_id, sent.wire))
            return
        self.stats.delivered += 1
        clock_ms = now_ms + self._clock_offset_ms(host.node_id, now_ms)
        self._record(("deliver", now_ms, host.node_id, clock_ms, sent.wire))
        self._step(host, sent.msg, clock_ms)

    def _on_client_call(self, host: NodeHost, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return  # it failed when the node crashed
        now_ms = self._queue.now_ms
        clock_ms = now_ms + self._clock_offset_ms(host.node_id, now_ms)
        self._record(("request", now_ms, host.node_id, clock_ms, request_id))
        self._step(host, ClientRequest(request_id, pending.op), clock_ms)

    def _on_input(self, host: NodeHost, inp: Input) -> None:
        if host.up:
            self._step(host, inp, self.node_clock_ms(host.node_id))

    def _on_order(self, host: NodeHost, order: SetMember) -> None:
        """An operator's membership order reaching its node; a refusal goes into the trace."""
        if not host.up:
            self._record(("order-lost", self._queue.now_ms, host.node_id, order.node_id, order.state))
            return
        self._step(host, order, self.node_clock_ms(host.node_id))
        refusal = host.live_node().order_refusal
        if refusal is not None:
            self._record(("order-refused", self._queue.now_ms, host.node_id, order.node_id, refusal))

    def _on_sync_done(self, host: NodeHost, job: SyncJob) -> None:
        # A crash drops the host's job, and a restart starts a new one: an older job was lost with its life.
        if host.sync_job is job:
            self._complete_sync(host, job)

    def _on_refused(self, host: NodeHost, refused: tuple[Message, int]) -> None:
        self._in_flight_copies -= 1
        msg, life = refused
        if life == host.life:  # else: the sender crashed since, and its connection with it
            self.stats.send_failed += 1
            now_ms = self._queue.now_ms
            self._record(("send-failed", now_ms, host.node_id, msg.dst))
            self._step(host, SendFailed(msg), now_ms + self._clock_offset_ms(host.node_id, now_ms))

    def _on_flush_tick(self, host: NodeHost, life: int) -> None:
        if life == host.life:
            self._start_sync(host)
            self._schedule_flush_tick(host)

    def _on_timer(self, host: NodeHost, timer: tuple[str, int, int]) -> None:
        key, generation, due_ms = timer
        if host.timers.get(key) != generation:
            return  # moved or cancelled since (or the node crashed)
        now_ms = self._queue.now_ms
        node_now_ms = now_ms + self._clock_offset_ms(host.node_id, now_ms)
        if node_now_ms < due_ms:
            # The node's clock was set back since the timer was scheduled: it is not due yet there.
            self._queue.push(now_ms + due_ms - node_now_ms, self._on_timer, host, timer)
            return
        del host.timers[key]
        self.stats.timers_fired += 1
        self._record(("timer", now_ms, host.node_id, node_now_ms, key))
        self._step(host, TimerFired(key), node_now_ms)

    def _on_writeback(self, _a: None, _b: None) -> None:
        self._writeback()

    # ------------------------------------------------------------ stepping a node

    def _boot(self, host: NodeHost, how: str) -> None:
        if host.up:
            raise ValueError(f"{host.node_id} is already up")
        storage = SimStorage(host.disk)
        host.boot(Node(host.node_id, self.config, storage, self.child_rng()), storage)
        self._record((how, self._queue.now_ms, host.node_id, storage.written_lsn))
        if self._flush.interval_ms is not None:
            self._schedule_flush_tick(host)
        self._step(host, Started(), self.node_clock_ms(host.node_id))

    def _step(self, host: NodeHost, inp: Input, clock_ms: int) -> None:
        """Step ``host``'s node with ``inp`` at ``clock_ms`` (its clock now) and carry out the effects."""
        node, storage = host.node, host.storage
        if node is None or storage is None:
            raise SimulationError(f"{host.node_id} is down")
        effects = node.step(clock_ms, inp)
        written_lsn = storage.written_lsn
        pending_writes = written_lsn - storage.synced_lsn
        for effect in effects:
            if isinstance(effect, Send):
                if effect.durable and pending_writes > 0:
                    host.hold(written_lsn, effect)
                else:
                    self._send(host, effect.msg)
            elif isinstance(effect, Reply):
                if effect.durable and pending_writes > 0:
                    host.hold(written_lsn, effect)
                else:
                    self._reply(host, effect)
            else:
                self._apply_timer_effect(host, effect, clock_ms)
        if pending_writes > 0 and self._flush.sync_now(pending_writes, host.held_count > 0, host.log_pending()):
            self._start_sync(host)

    def _apply_timer_effect(self, host: NodeHost, effect: Effect, clock_ms: int) -> None:
        if isinstance(effect, SetTimer):
            generation = self._next_timer_generation
            self._next_timer_generation += 1
            host.timers[effect.key] = generation
            wait_ms = max(0, effect.at_ms - clock_ms)
            self._queue.push(self._queue.now_ms + wait_ms, self._on_timer, host, (effect.key, generation, effect.at_ms))
        elif isinstance(effect, CancelTimer):
            host.timers.pop(effect.key, None)
        else:
            raise SimulationError(f"{host.node_id} returned an unknown effect {effect!r}")

    def _execute(self, host: NodeHost, effect: Outbound) -> None:
        if isinstance(effect, Send):
            self._send(host, effect.msg)
        else:
            self._reply(host, effect)

    def _reply(self, host: NodeHost, effect: Reply) -> None:
        pending = self._pending.get(effect.request_id)
        if pending is None or pending.node_id != host.node_id:
            raise SimulationError(f"{host.node_id} replied to request {effect.request_id}, not open there")
        self._finish(effect.request_id, effect.result)

    def _send(self, host: NodeHost, msg: Message) -> None:
        dst = self._hosts.get(msg.dst)
        if msg.src != host.node_id or dst is None:
            raise SimulationError(f"{host.node_id} sent a message from {msg.src!r} to {msg.dst!r}")
        now_ms = self._queue.now_ms
        sent = self.network.transmit(now_ms, msg)
        self._record(("send", now_ms, msg.src, msg.dst, sent.arrivals_ms))
        if dst.node is None:
            # Nothing listens there: each copy is refused when it would have arrived, and the sender
            # learns it once the last one is (the server's transport reports only when no copy can land).
            # A message the fault policy dropped is never reported, as on a real network.
            if sent.arrivals_ms:
                self._queue.push(max(sent.arrivals_ms), self._on_refused, host, (sent.msg, host.life))
                self._in_flight_copies += 1
            return
        push, on_deliver = self._queue.push, self._on_deliver
        for arrival_ms in sent.arrivals_ms:
            push(arrival_ms, on_deliver, dst, sent)
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
        self._queue.push(self._queue.now_ms + latency_ms, self._on_sync_done, host, job)

    def _complete_sync(self, host: NodeHost, job: SyncJob) -> None:
        job.run()
        storage = host.live_storage()
        storage.complete_sync(job)
        host.sync_job = None
        self.stats.syncs += 1
        self._record(("synced", self._queue.now_ms, host.node_id, job.up_to_lsn))
        for effect in host.releasable():
            self._execute(host, effect)
        self._step(host, Synced(storage.synced_lsn), self.node_clock_ms(host.node_id))
        # Durable effects of steps taken while this sync ran wait for the next one (group commit).
        if self._flush.sync_now(host.pending_writes(), host.held_count > 0, host.log_pending()):
            self._start_sync(host)

    def _schedule_flush_tick(self, host: NodeHost) -> None:
        assert self._flush.interval_ms is not None
        self._queue.push(self._queue.now_ms + self._flush.interval_ms, self._on_flush_tick, host, host.life)

    def _writeback(self) -> None:
        for node_id in self.config.node_ids:
            self._hosts[node_id].disk.writeback()
        self.stats.writebacks += 1
        self._record(("writeback", self._queue.now_ms))
        self._queue.push(self._queue.now_ms + DISK_WRITEBACK_INTERVAL_MS, self._on_writeback)

    # ------------------------------------------------------------ results

    def _finish(self, request_id: int, result: Result) -> None:
        pending = self._pending.pop(request_id)
        self.stats.replies += 1
        self._record(("reply", self._queue.now_ms, pending.node_id, request_id, fields(result)))
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
