"""The pump: the one place that drives ``Node.step`` in a node process.

Every input (client requests, peer messages, timers, failed sends) goes through ``_step`` on the event
loop thread, so the node sees them one at a time. A client request is stepped inline by the HTTP
handler that received it: when the node answers at once (a local read, or any local op when nothing
waits for an fsync), ``submit`` returns the node's ``Reply`` directly and no future is created. A ``Reply``
carries the result and the partition log position it reflects (what a session token keeps).

Durability (see ``kvstore.effects``): a ``Send`` or ``Reply`` marked ``durable`` is held until
storage is synced up to the ``written_lsn`` of the step that made it, under every fsync policy;
unmarked ones leave at once. A flusher task syncs with ``prepare_sync`` / ``job.run`` / ``complete_sync``
when ``kvstore.flush_policy`` says so (at once when a durable effect waits); writes that arrive while a sync
runs share the next one (group commit). After every sync the node is stepped ``Synced(synced_lsn)``.

Where a job runs: a small one (at most ``inline_sync_events`` writes: a quiet node's commit of a few writes)
runs on the loop thread itself, after one loop turn so that whatever is ready first (peer sends, requests
already read) goes out or joins the job. Handing it to a worker thread cost more than the commit: the thread
must take the interpreter lock to start and again to finish, and its result must wake the loop; profiled at
one client, the two hops took 1 ms at p50 and 8 ms at p90 around a 1 ms commit. A larger job (a busy node's
group commit, a fold of the journal) runs on the one worker thread, so that the loop goes on reading and
stepping the next group's requests while the disk syncs this one (measured: 1.4x the puts/s at 50 clients
against running every job on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from kvstore.config import FsyncPolicy
from kvstore.effects import CancelTimer, Effect, Reply, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.flush_policy import FlushSchedule
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
from kvstore.server.clock import NodeClock
from kvstore.storage.base import SyncJob

log = logging.getLogger(__name__)

# A driver-level deadline for answers, beyond the node's own request timeout: it only fires when the
# node never answers (for example a sync that hangs), and reports an indefinite timeout.
GUARD_TIMEOUT_FACTOR = 2
# Sync jobs of at most this many writes run on the loop thread (see above); larger ones on the worker thread.
INLINE_SYNC_EVENTS = 16


class SteppedNode(Protocol):
    """What the pump needs of a node (``kvstore.node.Node``, or a test's stand-in)."""

    @property
    def node_id(self) -> str: ...

    def step(self, now_ms: int, inp: Input) -> list[Effect]: ...


class SyncedStorage(Protocol):
    """What the pump needs of storage: the durability cursor and the three-phase sync."""

    @property
    def written_lsn(self) -> int: ...

    @property
    def written_log_lsn(self) -> int: ...

    @property
    def synced_lsn(self) -> int: ...

    def prepare_sync(self) -> SyncJob | None: ...

    def complete_sync(self, job: SyncJob) -> None: ...


class Pump:
    def __init__(
        self,
        node: SteppedNode,
        storage: SyncedStorage,
        clock: NodeClock,
        send: Callable[[Message], None],
        *,
        fsync: FsyncPolicy,
        batch_interval_ms: int,
        max_inflight: int,
        request_timeout_ms: int,
        on_fatal: Callable[[BaseException], None] | None = None,
        inline_sync_events: int = INLINE_SYNC_EVENTS,
        records_from_log: bool = False,
    ) -> None:
        self._node = node
        self._storage = storage
        self._clock = clock
        self._send = send
        self._schedule = FlushSchedule.of(fsync, batch_interval_ms, records_from_log)
        interval_ms = self._schedule.interval_ms
        self._flush_interval_s = None if interval_ms is None else interval_ms / 1000
        self._max_inflight = max_inflight
        self._guard_timeout_s = GUARD_TIMEOUT_FACTOR * request_timeout_ms / 1000
        self._on_fatal = on_fatal
        self._inline_sync_events = inline_sync_events
        self._loop = asyncio.get_running_loop()
        self._next_request_id = 1
        # The request being stepped inline by ``submit`` and its answer, when the node answers at once.
        self._inline_request_id = 0
        self._inline_reply: Reply | None = None
        self._waiters: dict[int, tuple[asyncio.Future[Reply], asyncio.TimerHandle]] = {}
        # (written_lsn of the step, effect): durable Sends and Replies waiting for a sync, in step order.
        self._held: deque[tuple[int, Send | Reply]] = deque()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        # One worker thread: syncs run one at a time, in LSN order.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sync-{node.node_id}")
        self._flusher: asyncio.Task[None] | None = None
        self._failure: Failure | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._step(Started())
        self._flusher = self._loop.create_task(self._flush_loop(), name=f"flusher-{self._node.node_id}")

    async def close(self) -> None:
        """Stop taking inputs, make everything written durable, and answer whatever still waits."""
        if self._failure is None:
            self._failure = Failure.of(ErrorCode.UNAVAILABLE, f"node {self._node.node_id} is shutting down")
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        # The flusher finishes the sync it may be running, syncs the rest once more, and returns.
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        self._fail_waiters(Failure.of(ErrorCode.TIMEOUT, "the node stopped before answering; the op may have happened"))
        self._io.shutdown(wait=True)

    # ------------------------------------------------------------ inputs

    @property
    def outstanding(self) -> int:
        """Client requests submitted and not yet answered."""
        return len(self._waiters)

    @property
    def held_effects(self) -> int:
        """Sends and Replies waiting for a sync before they may leave."""
        return len(self._held)

    def submit(self, op: ClientOp) -> Reply | asyncio.Future[Reply]:
        """Step a client request now; the node's reply, or a future for it when the answer must wait."""
        if self._failure is not None:
            return Reply(0, self._failure)
        if len(self._waiters) >= self._max_inflight:
            return Reply(0, Failure.of(ErrorCode.OVERLOADED, "too many requests waiting for an answer; retry later"))
        request_id = self._next_request_id
        self._next_request_id += 1
        self._inline_request_id = request_id
        try:
            self._step(ClientRequest(request_id, op))
        finally:
            self._inline_request_id = 0
            reply, self._inline_reply = self._inline_reply, None
        if reply is not None:
            return reply
        future: asyncio.Future[Reply] = self._loop.create_future()
        guard = self._loop.call_later(self._guard_timeout_s, self._expire, request_id)
        self._waiters[request_id] = (future, guard)
        return future

    async def execute(self, op: ClientOp) -> Result:
        reply = self.submit(op)
        if isinstance(reply, asyncio.Future):
            reply = await reply
        return reply.result

    def deliver(self, msg: Message) -> None:
        """A peer message, already authenticated by the transport."""
        if self._failure is None:
            self._step(msg)

    def order(self, order: MovePartition | SetMember) -> None:
        """An operator's order (an admin route): move a partition, or change membership. The node says in
        ``order_refusal`` whether it did anything."""
        if self._failure is None:
            self._step(order)

    def send_failed(self, msg: Message) -> None:
        if self._failure is None:
            self._step(SendFailed(msg))

    # ------------------------------------------------------------ stepping

    def _step(self, inp: Input) -> None:
        effects = self._node.step(self._clock.now_ms(), inp)
        storage = self._storage
        written_lsn = storage.written_lsn
        pending_writes = written_lsn - storage.synced_lsn
        for effect in effects:
            if isinstance(effect, (Reply, Send)):
                if effect.durable and pending_writes > 0:
                    self._held.append((written_lsn, effect))
                else:
                    self._release(effect)
            elif isinstance(effect, SetTimer):
                self._set_timer(effect)
            elif isinstance(effect, CancelTimer):
                handle = self._timers.pop(effect.key, None)
                if handle is not None:
                    handle.cancel()
        if self._schedule.sync_now(pending_writes, bool(self._held), storage.written_log_lsn > storage.synced_lsn):
            self._wake.set()

    def _release(self, effect: Reply | Send) -> None:
        if isinstance(effect, Send):
            self._send(effect.msg)
            return
        if effect.request_id == self._inline_request_id:
            self._inline_reply = effect
            return
        waiter = self._waiters.pop(effect.request_id, None)
        if waiter is not None:
            future, guard = waiter
            guard.cancel()
            if not future.done():
                future.set_result(effect)

    def _expire(self, request_id: int) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None and not waiter[0].done():
            failure = Failure.of(ErrorCode.TIMEOUT, "no answer in time; the op may have happened")
            waiter[0].set_result(Reply(request_id, failure))

    def _fail_waiters(self, failure: Failure) -> None:
        waiters, self._waiters = self._waiters, {}
        for future, guard in waiters.values():
            guard.cancel()
            if not future.done():
                future.set_result(Reply(0, failure))

    def _set_timer(self, timer: SetTimer) -> None:
        old = self._timers.pop(timer.key, None)
        if old is not None:
            old.cancel()
        delay_s = max(0, timer.at_ms - self._clock.now_ms()) / 1000
        self._timers[timer.key] = self._loop.call_later(delay_s, self._fire, timer.key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        if self._failure is None:
            self._step(TimerFired(key))

    # ------------------------------------------------------------ syncing

    async def _flush_loop(self) -> None:
        while True:
            # Once closing (no more inputs), one last sync covers everything written, then the loop ends.
            closing = self._failure is not None
            if not closing:
                await self._wait_for_work()
            self._wake.clear()
            try:
                synced = await self._sync_once()
            except Exception as exc:
                self._die(exc, "storage sync failed")
                return
            if not synced:
                if closing:
                    return
                continue
            self._release_synced()
            if closing:
                return
            # A node that started closing during the sync takes no more inputs; the next turn is the last.
            if self._failure is None:
                try:
                    self._step(Synced(self._storage.synced_lsn))
                except Exception as exc:
                    self._die(exc, "the node failed to take a Synced input")
                    return
            # Durable effects of steps taken while this sync ran wait for the next one (group commit).
            storage = self._storage
            pending_writes = storage.written_lsn - storage.synced_lsn
            if self._schedule.sync_now(pending_writes, bool(self._held), storage.written_log_lsn > storage.synced_lsn):
                self._wake.set()

    async def _wait_for_work(self) -> None:
        """Until a step asks for a sync now; under "batch" and "never" also until the interval is up."""
        if self._flush_interval_s is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)

    async def _sync_once(self) -> bool:
        """Sync what is written; whether there was anything to sync."""
        storage = self._storage
        if storage.written_lsn - storage.synced_lsn <= self._inline_sync_events:
            # One loop turn first: sends and steps already queued go ahead of a blocking commit, and their
            # writes share it.
            await asyncio.sleep(0)
        job = storage.prepare_sync()
        if job is None:
            return False
        if job.up_to_lsn - storage.synced_lsn <= self._inline_sync_events:
            job.run()
        else:
            await self._loop.run_in_executor(self._io, job.run)
        storage.complete_sync(job)
        return True

    def _release_synced(self) -> None:
        synced_lsn = self._storage.synced_lsn
        held = self._held
        while held and held[0][0] <= synced_lsn:
            self._release(held.popleft()[1])

    def _die(self, exc: BaseException, what: str) -> None:
        """Nothing held may be reported as done, and the node must not go on."""
        log.exception("%s on node %s; the node stops", what, self._node.node_id, exc_info=exc)
        self._failure = Failure.of(ErrorCode.INTERNAL, f"{what}; the op may have happened")
        self._held.clear()
        self._fail_waiters(self._failure)
        if self._on_fatal is not None:
            self._on_fatal(exc)
