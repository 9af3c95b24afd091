"""Run a scenario against a real local cluster: node processes on 127.0.0.1, real SIGKILLs, real sockets.

The same workloads and nemesis schedule as the simulator, with real time instead of virtual time:
client processes are asyncio tasks, each pinned to one node's HTTP API; crashes are SIGKILLs through
the cluster supervisor; message and clock faults are pushed to every node's admin route (and again to
a node after it restarts, since a fresh process starts fault-free). After the heal and the quiet time,
every replica's copy of each partition that has more than one is read through the nodes' admin route and
judged by the convergence checker (``replica_convergence``). The cluster lives in a temporary directory
and is always torn down.

The ``features`` workload's view is applied to the cluster's registry first. Its pushes go through the feature
store's route (``POST /features/push``: the key routes refuse the store's reserved keys), which builds from the
events the same merges ``push_ops`` gives the simulator; its reads are plain reads of the online keys. After its
final pushes and ``quiet_ms`` more, every replica of every partition is read for its checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from chaos.checkers import convergence
from chaos.faults import ChaosPolicy
from chaos.leaders import pick_leader
from chaos.nemesis import Nemesis, describe_schedule, plan
from chaos.run_sim import Copies, Recorder, RunResult, all_checkers, features_final, final_state
from chaos.scenario import Scenario, check_real_cluster
from chaos.workloads import Execution, FeaturesWorkload, Outcome, PlannedOp, make_workload
from kvstore.client import AsyncClient, ReplicaCopy
from kvstore.cluster import CONFIG_NAME, LocalCluster, pick_free_ports
from kvstore.config import ClusterConfig, Limits, NodeAddress, StorageConfig, Timeouts, local_cluster
from kvstore.errors import ErrorCode, KvError
from kvstore.features.definitions import Definitions, FeatureView
from kvstore.features.keys import EVENTS_PREFIX, parse_event_key
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    DeleteOp,
    Failure,
    GetOp,
    PutOp,
    Result,
    ScanOp,
    Written,
)
from kvstore.server.routes_admin import ADMIN_FAULTS_PATH, ADMIN_MEMBERS_PATH, ADMIN_MOVES_PATH
from kvstore.storage.simulated import CrashKind
from partitioning.partition_map import ACTIVE, LEAVING, PartitionMap
from replication.event_time import decode_row

Progress = Callable[[str], None]
ADMIN_TIMEOUT_S = 5.0


def real_cluster_config(scenario: Scenario, directory: Path, secret: str) -> ClusterConfig:
    spec = scenario.cluster
    ports = pick_free_ports(spec.nodes)
    base = local_cluster(
        spec.nodes,
        mode=spec.mode,
        replicas=spec.replicas,
        partitions=spec.partitions,
        partitioner=spec.partitioner,
        ranges=spec.ranges_config(),
        secret=secret,
        storage=StorageConfig(engine="sqlite", fsync=spec.fsync, batch_interval_ms=spec.batch_interval_ms,  # type: ignore[arg-type]
                              data_dir=str(directory / "data")),
        timeouts=Timeouts(request_timeout_ms=spec.request_timeout_ms),
        replication=scenario.replication,
        leaderless=scenario.leaderless,
        limits=Limits(raft_compact_entries=spec.raft_compact_entries),
    )
    nodes = tuple(NodeAddress(n.node_id, "127.0.0.1", port) for n, port in zip(base.nodes, ports, strict=True))
    return base.replace(nodes=nodes, initial_nodes=spec.initial_nodes(base.node_ids))


async def execute(client: AsyncClient, op: ClientOp, leaderless: bool = False) -> Result:
    """One client operation over HTTP, with errors as ``Failure`` results, as the simulator gives them. In
    ``leaderless`` mode reads, writes and deletes go through the causal calls, which answer ``FoundSiblings``
    and ``Stored`` as the node does."""
    try:
        if leaderless and isinstance(op, GetOp):
            return await client.get_siblings(op.key, r=op.r or None, consistency=op.consistency or None,
                                             repair=op.repair or None)
        if leaderless and isinstance(op, PutOp):
            return await client.put_causal(op.key, op.value, context=op.context, w=op.w or None,
                                           consistency=op.consistency or None)
        if leaderless and isinstance(op, DeleteOp):
            return await client.delete_causal(op.key, context=op.context, w=op.w or None,
                                              consistency=op.consistency or None)
        if isinstance(op, GetOp):
            found = await client.get(op.key)
            return found if found is not None else Failure.of(ErrorCode.NOT_FOUND, f"key {op.key!r} not found")
        if isinstance(op, PutOp):
            return await client.put(op.key, op.value, ttl_ms=op.ttl_ms)
        if isinstance(op, CasOp):
            return await client.cas(op.key, op.expected, op.new, ttl_ms=op.ttl_ms)
        if isinstance(op, DeleteOp):
            return await client.delete(op.key)
        if isinstance(op, ScanOp):
            return await client.scan(start=op.start, end=op.end, limit=op.limit)
    except KvError as exc:
        return Failure.of(exc.code, exc.message)
    raise TypeError(f"the workloads do not use {type(op).__name__}")


async def push_events(client: AsyncClient, view: FeatureView, batch: BatchPutOp) -> Result:
    """A features push (the merges ``push_ops`` built) sent as the feature store's push of its events, which the
    route turns into the same merges; its answer as the batch's results. The events are read back from the
    batch's event-log merges (each is one event: its key names the entity and time, its row the values).

    An error answer says how many merges were not acknowledged, not which: unless the route refused the push
    before any merge (a 4xx answer, definite), every merge's outcome is unknown."""
    events = []
    for item in batch.items:
        if item.key.startswith(EVENTS_PREFIX):
            _view, entity_key, ts = parse_event_key(item.key)
            values = {name: value for name, (_ts, value) in decode_row(item.value).items()}
            events.append({"entity": view.entity.value_of(entity_key), "event_ts_ms": ts, "values": values})
    w = batch.items[0].w if batch.items else ""
    try:
        await client.call("POST", "/features/push", {"view": view.name, "events": events},
                          query={"w": w} if w else None, idempotent=True)
    except KvError as exc:
        if exc.code.http_status < 500:
            return Failure.of(exc.code, exc.message)
        return Failure.of(ErrorCode.TIMEOUT, f"push not acknowledged, which merges landed is unknown: {exc.message}")
    return BatchResults(tuple(Written(item.key, 0) for item in batch.items))


async def replica_copies(urls: Mapping[str, str], secret: str, timeout_s: float, every_partition: bool = False) -> (
    tuple[Copies, tuple[tuple[str, ...], ...], int] | str
):
    """Every replica's copy of each partition with more than one in a running cluster (its nodes at ``urls``),
    the partitions' replicas and the latest node clock seen; or why they could not all be read.

    The partition map is the newest any node serves on ``/cluster``; every replica is read whole from its own
    node's admin route (``secret`` is the cluster's). ``every_partition``: those of one replica too."""
    clients = {node: AsyncClient([url], route_by_map=False, timeout_s=timeout_s) for node, url in urls.items()}
    try:
        views = [await client.cluster() for client in clients.values()]
        partition_map = max((view["partition_map"] for view in views), key=lambda m: m["epoch"])
        replicas = tuple(tuple(nodes) for nodes in partition_map["replicas"])
        partitions = range(len(replicas)) if every_partition else convergence.multi_copy_partitions(replicas)
        reads = [(partition, node) for partition in partitions for node in replicas[partition]]
        # Every read runs to its end (return_exceptions) before the clients close under them.
        answers = await asyncio.gather(
            *(clients[node].replica_copy(p, secret=secret) for p, node in reads), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
    except KvError as exc:
        return f"could not read every replica's copy: {exc}"
    finally:
        for client in clients.values():
            await client.close()
    read = [answer for answer in answers if isinstance(answer, ReplicaCopy)]
    copies = {(c.partition, c.node_id): c.records for c in read}
    return copies, replicas, max((c.clock_ms for c in read), default=0)


async def replica_convergence(urls: Mapping[str, str], secret: str, timeout_s: float) -> dict[str, Any]:
    """The convergence verdict (``convergence.check_copies``) of a running cluster (``replica_copies``); "unknown"
    when a node cannot be read."""
    read = await replica_copies(urls, secret, timeout_s)
    if isinstance(read, str):
        return {"valid": "unknown", "reason": read}
    return convergence.check_copies(*read)


class _RealTarget:
    """A local cluster as the nemesis sees it. Called from a worker thread: everything here may block."""

    def __init__(self, cluster: LocalCluster, policy: ChaosPolicy, started_wall_ms: int, started: float) -> None:
        self.cluster = cluster
        self.policy = policy
        self._started_wall_ms = started_wall_ms
        self._started = started
        self._down: set[str] = set()

    def node_ids(self) -> tuple[str, ...]:
        return self.cluster.config.node_ids

    def now_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def crash(self, node_id: str, kind: CrashKind) -> None:
        if kind != "process":
            # SIGKILL leaves what the node wrote to the OS; losing that too takes the simulator's disk.
            raise ValueError(f"a real cluster can only crash a process (SIGKILL), not a {kind!r} crash")
        self.cluster.kill(node_id)
        self._down.add(node_id)

    def restart(self, node_id: str) -> None:
        self.cluster.restart(node_id)
        self._down.discard(node_id)
        self._push(node_id)

    def is_up(self, node_id: str) -> bool:
        return node_id not in self._down

    def leader(self, partition: int | None) -> str | None:
        """By each live node's own ``/cluster`` ``leadership``."""
        if self.cluster.config.mode != "leader":
            return None
        said: dict[str, list[dict[str, Any]]] = {}
        for node_id in self.node_ids():
            if not self.is_up(node_id):
                continue
            try:
                with urllib.request.urlopen(self.cluster.url(node_id) + "/cluster", timeout=ADMIN_TIMEOUT_S) as answer:
                    leadership = json.loads(answer.read()).get("leadership", [])
            except (OSError, ValueError, AttributeError):
                continue  # down in between, or an answer cut short
            if isinstance(leadership, list):
                said[node_id] = [entry for entry in leadership if isinstance(entry, dict)]
        return pick_leader(said, partition)

    def policy_changed(self) -> None:
        for node_id in self.node_ids():
            if self.is_up(node_id):
                self._push(node_id)

    def move(self, partition: int, target: str) -> str:
        """Order the move from the live node that serves ``partition`` by its own map."""
        order = {"partition": partition, "target": target}
        for node_id in self.node_ids():
            if not self.is_up(node_id):
                continue
            try:
                answer = json.loads(self._admin(node_id, "POST", ADMIN_MOVES_PATH, order))
            except (OSError, ValueError):
                # A node going down in between, or an answer cut short: it started nothing that we know of.
                continue
            if answer.get("started"):
                return f"move partition {partition} from {node_id} to {target}"
        return f"partition {partition}: no live node started a move to {target}"

    def view(self) -> PartitionMap | None:
        """Every live node's map (``GET /cluster``) merged: what they know together; None if none answered."""
        merged: PartitionMap | None = None
        for node_id in self.node_ids():
            if not self.is_up(node_id):
                continue
            try:
                with urllib.request.urlopen(self.cluster.url(node_id) + "/cluster", timeout=ADMIN_TIMEOUT_S) as answer:
                    seen = PartitionMap.from_json(json.loads(answer.read())["partition_map"])
            except (OSError, ValueError, KeyError):
                continue  # down in between, or an answer cut short: the others say what they know
            merged = seen if merged is None else merged.merge(seen)
        return merged

    def roster(self) -> dict[str, str]:
        view = self.view()
        return {} if view is None else {m.node_id: m.state for m in view.roster}

    def join(self, node_id: str) -> str:
        address = self.cluster.config.address_text(node_id)
        return self._order_member({"node": node_id, "state": ACTIVE, "address": address})

    def leave(self, node_id: str) -> str:
        return self._order_member({"node": node_id, "state": LEAVING})

    def _order_member(self, order: dict[str, str]) -> str:
        """``POST /admin/members`` to the lowest active member that is up (by ``view``), then the other live
        members in turn until one answers; a leave may also go to the leaving node itself."""
        node_id = order["node"]
        what = f"{order['state']} {node_id}" + (f" at {order['address']}" if order.get("address") else "")
        view = self.view()
        if view is None:
            return f"{what}: no live node to give the order to"
        ordered = [*view.active, *(n for n in view.members if n not in view.active)]
        for to in (n for n in ordered if n in self.node_ids() and self.is_up(n)):
            try:
                self._admin(to, "POST", ADMIN_MEMBERS_PATH, order)
            except urllib.error.HTTPError as exc:
                if exc.code == 400:
                    return f"{what}: refused at {to}: {_error_message(exc)}"
                continue
            except (OSError, ValueError):
                continue  # a node going down in between: ask the next one
            return f"{what} (ordered at {to})"
        return f"{what}: no live member took the order"

    def _push(self, node_id: str) -> None:
        doc = self.policy.to_json()
        # Clock faults start at run-relative times; nodes measure them on the wall clock.
        for clock in doc["clocks"].values():
            clock["since_ms"] += self._started_wall_ms
        self._admin(node_id, "PUT", ADMIN_FAULTS_PATH, doc)

    def _admin(self, node_id: str, method: str, path: str, doc: dict[str, Any]) -> bytes:
        """A JSON request to one node's admin route, with the cluster secret; the answer's body."""
        request = urllib.request.Request(
            self.cluster.url(node_id) + path,
            data=json.dumps(doc).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.cluster.config.secret}"},
        )
        with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as response:
            body: bytes = response.read()
            return body


def _error_message(error: urllib.error.HTTPError) -> str:
    """The message of a JSON error answer, or its status if it has none."""
    try:
        doc = json.loads(error.read())
        return str(doc["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"


class _RealRunner:
    def __init__(self, scenario: Scenario, cluster: LocalCluster, seed: int, progress: Progress) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.progress = progress
        root = random.Random(seed)
        self.seed = seed
        self.workload = make_workload(scenario.workload.kind, dict(scenario.workload.options))
        self.workload_rng = random.Random(root.getrandbits(64))
        self.client_rng = random.Random(root.getrandbits(64))
        nemesis_rng = random.Random(root.getrandbits(64))
        self.policy = ChaosPolicy(random.Random(root.getrandbits(64)))
        self.schedule = plan(scenario.nemesis, cluster.config.node_ids, scenario.duration_ms, nemesis_rng,
                             scenario.cluster.partitions)
        self.started = time.monotonic()
        self.target = _RealTarget(cluster, self.policy, int(time.time() * 1000), self.started)
        self.nemesis = Nemesis(scenario.nemesis, self.target, nemesis_rng)
        self.recorder = Recorder()
        self.next_process = scenario.workload.concurrency

    def now_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    async def run(self) -> RunResult:
        s = self.scenario
        nodes = self.cluster.config.node_ids
        timeout_s = s.workload.client_timeout_ms / 1000
        clients = {n: AsyncClient([self.cluster.url(n)], route_by_map=False, timeout_s=timeout_s) for n in nodes}
        try:
            if isinstance(self.workload, FeaturesWorkload):
                fv = self.workload.view
                definitions = Definitions({fv.entity.name: fv.entity}, {fv.name: fv})
                await clients[nodes[0]].call("PUT", "/features/registry", definitions.to_json(), idempotent=True)
            self.progress(f"workload {s.workload.kind} x{s.workload.concurrency} for {s.duration_ms} ms; "
                          f"{len(self.schedule) // 2} fault(s) scheduled")
            deadline = s.duration_ms
            tasks = [asyncio.create_task(self._process(i, clients[nodes[i % len(nodes)]], deadline))
                     for i in range(s.workload.concurrency)]
            await self._nemesis()
            await asyncio.gather(*tasks)
            self.progress("healing every fault")
            await asyncio.to_thread(self.nemesis.heal_all)
            await asyncio.sleep(s.quiet_ms / 1000)
            # Before the final reads: a protocol that repairs replicas on reads must not hide a divergence.
            self.progress("reading every replica's copy")
            read = await replica_copies(
                {n: self.cluster.url(n) for n in nodes}, self.cluster.config.secret, ADMIN_TIMEOUT_S
            )
            final = None
            if isinstance(read, str):
                converged: dict[str, Any] = {"valid": "unknown", "reason": read}
            else:
                converged = convergence.check_copies(*read)
                final = final_state(self.workload, s, read[0], read[1])
            view = await asyncio.to_thread(self.target.view)
            self.progress("final reads")
            for i, op in enumerate(self.workload.final_ops()):
                process = self.next_process
                self.next_process += 1
                await self._run_op(process, op, clients[nodes[i % len(nodes)]])
            features = None
            if isinstance(self.workload, FeaturesWorkload):
                # Its final ops resend the pushes cut short: quiet time again for every replica to apply them.
                await asyncio.sleep(s.quiet_ms / 1000)
                self.progress("reading every replica of every partition")
                every = await replica_copies({n: self.cluster.url(n) for n in nodes}, self.cluster.config.secret,
                                             ADMIN_TIMEOUT_S, every_partition=True)
                features = None if isinstance(every, str) else features_final(self.workload, every[0], every[1])
        finally:
            for client in clients.values():
                await client.close()
        history = self.recorder.history(f"{s.name} real seed={self.seed}")
        self.progress(f"checking {len(history)} events")
        checkers = all_checkers(s.checkers.names or self.workload.default_checkers, history,
                                s.checkers.time_limit_s, converged, final, features)
        outcomes = Counter(f"{e.f}:{e.type}" for e in history.events if e.type != "invoke")
        stats: dict[str, Any] = {
            "ops": sum(1 for e in history.events if e.type == "invoke"),
            "outcomes": dict(sorted(outcomes.items())),
            "wall_ms": self.now_ms(),
        }
        if view is not None:
            # As in the simulator's stats: completed hand-overs, and the roster after the heal.
            stats["partition_changes"] = sum(view.epochs) - view.partition_count
            stats["roster"] = {m.node_id: m.state for m in view.roster}
        return RunResult(s, self.seed, "real", history, self.nemesis.periods, checkers, stats,
                         describe_schedule(self.schedule))

    async def _nemesis(self) -> None:
        for action in self.schedule:
            delay_s = (action.at_ms - self.now_ms()) / 1000
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            self.progress(f"{self.now_ms():>6} ms  {'start' if action.start else 'end  '} {action.describe()}")
            await asyncio.to_thread(self.nemesis.apply, action)
        remaining_s = (self.scenario.duration_ms - self.now_ms()) / 1000
        if remaining_s > 0:
            await asyncio.sleep(remaining_s)

    async def _process(self, index: int, client: AsyncClient, deadline_ms: int) -> None:
        process = index
        think_ms = self.scenario.workload.think_ms
        while self.now_ms() < deadline_ms:
            op = self.workload.next_op(self.workload_rng)
            outcome = await self._run_op(process, op, client)
            if outcome[0] == "info":
                process = self.next_process
                self.next_process += 1
            await asyncio.sleep(self.client_rng.randint(0, think_ms) / 1000)

    async def _run_op(self, process: int, op: PlannedOp, client: AsyncClient) -> Outcome:
        self.recorder.invoke(process, op, self.now_ms())
        gen: Execution = self.workload.execute(op)
        timeout_s = self.scenario.workload.client_timeout_ms / 1000
        leaderless = self.scenario.cluster.mode == "leaderless"
        view = self.workload.view if isinstance(self.workload, FeaturesWorkload) else None
        try:
            outcome = await asyncio.wait_for(self._drive(gen, client, leaderless, view), timeout_s)
        except TimeoutError:
            outcome = ("info", None, "client_timeout")
        self.recorder.complete(process, op, outcome, self.now_ms())
        return outcome

    @staticmethod
    async def _drive(gen: Execution, client: AsyncClient, leaderless: bool, view: FeatureView | None) -> Outcome:
        """``view``: the features workload's, whose batches of merges are pushes (``push_events``)."""
        result: Result | None = None
        while True:
            try:
                request = gen.send(result)  # type: ignore[arg-type]
            except StopIteration as stop:
                outcome: Outcome = stop.value
                return outcome
            if view is not None and isinstance(request, BatchPutOp):
                result = await push_events(client, view, request)
            else:
                result = await execute(client, request, leaderless)


def run_on_real_cluster(scenario: Scenario, seed: int | None = None, progress: Progress = lambda _: None) -> RunResult:
    check_real_cluster(scenario)
    chosen_seed = scenario.seed if seed is None else seed
    with tempfile.TemporaryDirectory(prefix=f"kvstore-chaos-{scenario.name}-") as tmp:
        directory = Path(tmp)
        secret = f"chaos-{random.Random(chosen_seed).getrandbits(64):x}"
        config = real_cluster_config(scenario, directory, secret)
        config.save(directory / CONFIG_NAME)
        cluster = LocalCluster.create(directory)
        with cluster:
            cluster.up()
            progress(f"cluster up: {', '.join(cluster.urls())}")
            return asyncio.run(_RealRunner(scenario, cluster, chosen_seed, progress).run())
