"""Local cluster supervisor: start, inspect, kill, restart and stop node processes on this machine.

A cluster lives in one directory::

    <dir>/cluster.toml    the ClusterConfig every node reads
    <dir>/state.json      pid, host and port of each node process (present while the cluster is up)
    <dir>/<node>.log      each node's stdout and stderr, appended across restarts
    <dir>/data/<node>/    each node's storage

The state file is what lets separate ``kvstore cluster ...`` invocations (and tests, the demo and chaos
scenarios through ``LocalCluster``) act on the same processes. A pid in it is trusted only while that
process is alive and is a kvstore node: a dead or reused pid makes the entry stale, never a target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kvstore.config import (
    FSYNC_POLICIES,
    MODES,
    STORAGE_ENGINES,
    ClusterConfig,
    ConfigError,
    NodeAddress,
    StorageConfig,
    local_cluster,
)
from partitioning.partition_map import ACTIVE, LEAVING, REMOVED

DEFAULT_DIR = Path(".kvstore/cluster")
CONFIG_NAME = "cluster.toml"
STATE_NAME = "state.json"
DATA_NAME = "data"
STATE_VERSION = 1
# Marks a command line as a kvstore node, so a reused pid is never mistaken for one of ours.
NODE_MODULE = "kvstore.server.main"
HEALTH_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 20
KEYS_METRIC = "kvstore_keys"
# How long add_node and remove_node wait, by default, for the cluster to reach its new layout.
MEMBERSHIP_TIMEOUT_S = 60.0
# One admin request or GET /cluster to a node.
ADMIN_TIMEOUT_S = 5.0


class ClusterError(Exception):
    """A supervisor operation that cannot be done; the message says what to do instead."""


class ClusterUsageError(ClusterError):
    """An operation refused for what it was asked (an unknown node, the last active member...), not because
    something failed: the command line gives it exit status 2."""


# ---------------------------------------------------------------- state file


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    pid: int
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterState:
    """The contents of ``state.json``: which process serves each node."""

    nodes: tuple[NodeRecord, ...]

    def record(self, node_id: str) -> NodeRecord | None:
        for rec in self.nodes:
            if rec.node_id == node_id:
                return rec
        return None

    def with_record(self, new: NodeRecord) -> ClusterState:
        """This state with ``new`` in place of the node's record (appended if the node had none)."""
        if self.record(new.node_id) is None:
            return ClusterState((*self.nodes, new))
        return ClusterState(tuple(new if rec.node_id == new.node_id else rec for rec in self.nodes))

    def without(self, node_id: str) -> ClusterState:
        return ClusterState(tuple(rec for rec in self.nodes if rec.node_id != node_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "nodes": {r.node_id: {"pid": r.pid, "host": r.host, "port": r.port} for r in self.nodes},
        }

    @staticmethod
    def from_json(data: object) -> ClusterState:
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(nodes, dict):
            raise ValueError(f"expected {{'version': {STATE_VERSION}, 'nodes': {{...}}}}")
        records = []
        for node_id, entry in nodes.items():
            if not isinstance(entry, dict):
                raise ValueError(f"node {node_id!r}: expected an object")
            pid, host, port = entry.get("pid"), entry.get("host"), entry.get("port")
            if not (isinstance(pid, int) and pid > 0 and isinstance(host, str) and isinstance(port, int)):
                raise ValueError(f"node {node_id!r}: expected pid, host and port")
            records.append(NodeRecord(node_id, pid, host, port))
        return ClusterState(tuple(records))

    @staticmethod
    def load(path: Path) -> ClusterState | None:
        """The state at ``path``, or None if there is none. A corrupt file is an error naming the path."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return ClusterState.from_json(json.loads(text))
        except ValueError as exc:
            raise ClusterError(f"{path} is corrupt ({exc}); stop any nodes by hand and delete it") from exc

    def save(self, path: Path) -> None:
        # Write then rename, so a reader never sees half a file.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------- ports and processes


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (the OS picks them)."""
    with contextlib.ExitStack() as stack:
        ports = []
        # Hold every socket open until all are picked, so the OS cannot hand out the same port twice.
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def consecutive_free_ports(base_port: int, count: int, host: str = "127.0.0.1") -> list[int]:
    """``base_port`` and the ``count - 1`` ports after it, all of which must be free."""
    ports = list(range(base_port, base_port + count))
    if not (base_port > 0 and ports[-1] < 65536):
        raise ClusterError(f"--base-port {base_port}: ports {ports[0]}..{ports[-1]} are not all valid ports")
    taken = [p for p in ports if not port_is_free(host, p)]
    if taken:
        raise ClusterError(f"port(s) {', '.join(map(str, taken))} on {host} are in use; pick another --base-port")
    return ports


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def node_process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live kvstore node process (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (not Linux): the signal check is all we have
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and NODE_MODULE.encode() in cmdline


def check_health(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the supervisor


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    url: str
    pid: int | None
    alive: bool
    healthy: bool
    # Keys the node holds (its kvstore_keys gauge); None when it does not answer.
    key_count: int | None
    # The node's state in the roster ("active", "leaving", "removed"; "none": not a member yet), as the node
    # itself sees it, else as another running node does; None when no running node answers.
    member_state: str | None = None
    # Partitions the node owns, in the same view; None when no running node answers.
    partitions: int | None = None


class LocalCluster:
    """The node processes of one cluster directory.

    ``LocalCluster.create(dir, ...)`` writes (or reuses) the config; ``LocalCluster.open(dir)`` attaches
    to a directory another process set up. Used as a context manager, it stops every node on exit.
    """

    def __init__(self, directory: Path, config: ClusterConfig) -> None:
        self.directory = directory
        self.config = config
        # Processes this object started: waited on directly so they never linger as zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ construction

    @staticmethod
    def create(
        directory: str | Path = DEFAULT_DIR,
        nodes: int | None = None,
        fsync: str | None = None,
        engine: str | None = None,
        base_port: int | None = None,
        mode: str | None = None,
        replicas: int | None = None,
    ) -> LocalCluster:
        """Prepare ``directory`` for a cluster: a new config, or the existing one (same data, same ports
        when they are still free). Options given for an existing cluster must match it. Nodes listen on
        ``base_port``, ``base_port + 1``, ... when it is given, else on ports the OS finds free."""
        directory = Path(directory).resolve()
        _refuse_if_running(directory)
        config_path = directory / CONFIG_NAME
        if config_path.exists():
            config = _reuse_config(ClusterConfig.load(config_path), nodes, fsync, engine, mode, replicas)
        else:
            node_count = 3 if nodes is None else nodes
            if node_count < 1:
                raise ClusterError("--nodes must be at least 1")
            storage = StorageConfig(
                engine=_choice("--engine", engine or "sqlite", STORAGE_ENGINES),
                fsync=_choice("--fsync", fsync or "always", FSYNC_POLICIES),
                data_dir=str(directory / DATA_NAME),
            )
            chosen_mode = _choice("--mode", mode or "single", MODES)
            if replicas is not None and chosen_mode == "single":
                raise ClusterError(
                    "--replicas needs --mode leader or leaderless (single mode keeps one copy of each partition)"
                )
            try:
                # Peer traffic is authenticated with the secret: each cluster gets its own.
                config = local_cluster(
                    node_count, storage=storage, secret=secrets.token_hex(16), mode=chosen_mode, replicas=replicas
                )
            except ConfigError as exc:
                raise ClusterError(str(exc)) from exc
            config = _with_ports(config, pick_free_ports(node_count))
        if base_port is not None:
            config = _with_ports(config, consecutive_free_ports(base_port, len(config.nodes)))
        directory.mkdir(parents=True, exist_ok=True)
        config.save(config_path)
        return LocalCluster(directory, config)

    @staticmethod
    def open(directory: str | Path = DEFAULT_DIR) -> LocalCluster:
        directory = Path(directory).resolve()
        config_path = directory / CONFIG_NAME
        if not config_path.exists():
            raise ClusterError(f"no cluster in {directory} (start one with: kvstore cluster up --dir {directory})")
        return LocalCluster(directory, ClusterConfig.load(config_path))

    # ------------------------------------------------------------ paths and state

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    def log_path(self, node_id: str) -> Path:
        return self.directory / f"{node_id}.log"

    def state(self) -> ClusterState:
        return ClusterState.load(self.state_path) or ClusterState(())

    def urls(self) -> list[str]:
        return [n.url for n in self.config.nodes]

    def url(self, node_id: str) -> str:
        return self.config.node(node_id).url

    def alive(self, node_id: str) -> bool:
        rec = self.state().record(node_id)
        return rec is not None and self._pid_alive(rec.pid)

    def _pid_alive(self, pid: int) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return node_process_alive(pid)

    # ------------------------------------------------------------ lifecycle

    def up(self, timeout_s: float = 30.0) -> None:
        """Start every node and wait until each answers /health. On any failure, stop what was started."""
        _refuse_if_running(self.directory)
        self.state_path.unlink(missing_ok=True)  # stale if present: every recorded process is gone
        try:
            for node in self.config.nodes:
                self._spawn(node)
            self._wait_healthy(self.config.node_ids, timeout_s)
        except BaseException:
            self.down()
            raise

    def kill(self, node_id: str) -> None:
        """SIGKILL one node (a crash: no shutdown, unsynced data lost)."""
        rec = self._running_record(node_id)
        _signal(rec.pid, signal.SIGKILL)
        self._wait_exit(rec.pid, timeout_s=10.0)

    def stop(self, node_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM one node, SIGKILL it if it has not exited after ``grace_s``."""
        self._terminate([self._running_record(node_id).pid], grace_s)

    def restart(self, node_id: str, timeout_s: float = 30.0) -> None:
        """Start ``node_id`` again on its port with its data (stopping it first if it still runs)."""
        node = self.config.node(node_id)
        if self.alive(node_id):
            self.stop(node_id)
        try:
            self._spawn(node)
            self._wait_healthy((node_id,), timeout_s)
        except BaseException:
            if self.alive(node_id):
                self._terminate([self._running_record(node_id).pid], grace_s=2.0)
            raise

    def down(self, grace_s: float = 10.0, purge: bool = False) -> list[str]:
        """Stop every node (SIGTERM, then SIGKILL after ``grace_s``) and remove the state file.

        Data stays unless ``purge``, which deletes the whole directory. Returns the nodes that were running.
        """
        state = ClusterState.load(self.state_path) or ClusterState(())
        running = [r for r in state.nodes if self._pid_alive(r.pid)]
        # Children this object started but has not recorded (a failure mid-``up``) are stopped too.
        recorded = {r.pid for r in state.nodes}
        unrecorded = [pid for pid, child in self._children.items() if pid not in recorded and child.poll() is None]
        self._terminate([r.pid for r in running] + unrecorded, grace_s)
        # Children that had exited on their own were reaped by the checks above: nothing more to track.
        self._children.clear()
        self.state_path.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.directory, ignore_errors=True)
        return [r.node_id for r in running]

    def status(self) -> list[NodeStatus]:
        state = self.state()
        out = []
        views: dict[str, dict[str, Any]] = {}
        for node in self.config.nodes:
            rec = state.record(node.node_id)
            alive = rec is not None and self._pid_alive(rec.pid)
            healthy = alive and check_health(node.url)
            view = cluster_view(node.url) if healthy else None
            if view is not None:
                views[node.node_id] = view
            out.append(
                NodeStatus(
                    node_id=node.node_id,
                    url=node.url,
                    pid=rec.pid if rec is not None else None,
                    alive=alive,
                    healthy=healthy,
                    key_count=_key_count(node.url) if healthy else None,
                )
            )
        return [dataclasses.replace(st, **_membership_of(st.node_id, views)) for st in out]

    # ------------------------------------------------------------ membership

    def add_node(self, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> str:
        """Start one more node and have the cluster admit it; return its id once the new layout is in force.

        The node gets the next unused id and a free port on 127.0.0.1, goes into ``[nodes]`` of cluster.toml
        (``initial_nodes`` names the founders from then on, so the first layout stays what it was) and is
        started; a running member is then told ``POST /admin/members {"state": "active"}``. It returns once
        every running member's ``GET /cluster`` shows the same map epoch, ``balanced``, the new node active
        and owning partitions (when there are at least as many partitions as active nodes). Until a member
        has admitted it, any failure stops the new node and takes it out of the config again; a timeout
        after that leaves it a member, and the error says what is still pending. Refused under fsync "never",
        where nodes move no partition.
        """
        deadline = time.monotonic() + timeout_s
        self._refuse_moves_never()
        members = self._running_members()
        if not members:
            raise ClusterUsageError(
                f"no node of {self.directory} is running to admit a new one (start them with: "
                f"kvstore cluster up --detach --dir {self.directory})"
            )
        old_config = self.config
        node_id = self._next_node_id(members)
        node = NodeAddress(node_id, "127.0.0.1", pick_free_ports(1)[0])
        self._save_config(
            old_config.replace(nodes=(*old_config.nodes, node), initial_nodes=old_config.founding_nodes)
        )
        try:
            self._spawn(node)
            self._wait_healthy((node_id,), max(0.0, deadline - time.monotonic()))
            order = {"node": node_id, "state": "active", "address": f"{node.host}:{node.port}"}
            self._order_membership(order, members, deadline)
        except BaseException:
            if self.alive(node_id):
                self._terminate([self._running_record(node_id).pid], grace_s=5.0)
            self.state().without(node_id).save(self.state_path)
            self._save_config(old_config)
            raise
        self._wait_until(
            lambda: self._join_pending(node_id), deadline, timeout_s, f"{node_id} was admitted, but the new layout"
        )
        return node_id

    def remove_node(self, node_id: str, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> None:
        """Drain ``node_id`` and stop it once the cluster has moved its partitions away.

        A running member is told ``POST /admin/members {"state": "leaving"}``; once every other running
        member's ``GET /cluster`` shows the node removed (or not a member), holding no partition, the same
        map epoch and ``balanced``, the node is stopped (SIGTERM, as ``stop``) and taken out of state.json and
        of ``[nodes]`` in cluster.toml (``initial_nodes`` keeps naming the founders). Its log and data stay.
        Refused: a node not in the config, one that is not running, the last active member, and any drain
        under fsync "never" (no partition moves then).
        """
        deadline = time.monotonic() + timeout_s
        if node_id not in self.config.node_ids:
            raise ClusterUsageError(f"no node {node_id!r} in the cluster (nodes: {', '.join(self.config.node_ids)})")
        self._refuse_moves_never()
        if not self.alive(node_id):
            raise ClusterUsageError(
                f"node {node_id} is not running: a node drains by moving its partitions itself (start it with: "
                f"kvstore cluster restart {node_id} --dir {self.directory})"
            )
        members = self._running_members()
        for view in (cluster_view(n.url) for n in members):
            if view is not None and _active(view) == [node_id]:
                raise ClusterUsageError(
                    f"{node_id} is the last active member: the cluster would have nowhere to keep its data"
                )
        # Told to another member if one runs: the leaving node may be the one that stops answering first.
        others = [n for n in members if n.node_id != node_id]
        ordered = others + [n for n in members if n.node_id == node_id]
        self._order_membership({"node": node_id, "state": "leaving"}, ordered, deadline)
        self._wait_until(
            lambda: self._leave_pending(node_id), deadline, timeout_s, f"the drain of {node_id}"
        )
        self._terminate([self._running_record(node_id).pid], grace_s=10.0)
        self.state().without(node_id).save(self.state_path)
        self._save_config(
            self.config.replace(
                nodes=tuple(n for n in self.config.nodes if n.node_id != node_id),
                initial_nodes=self.config.founding_nodes,
            )
        )

    def partition_counts(self) -> dict[str, int]:
        """Partitions each member owns, as the first running member that answers sees it ({} if none does)."""
        for node in self._running_members():
            view = cluster_view(node.url)
            if view is not None:
                return {m["node_id"]: len(m["partitions"]) for m in view["members"]}
        return {}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # ------------------------------------------------------------ internals

    def _refuse_moves_never(self) -> None:
        if self.config.storage.fsync == "never":
            raise ClusterUsageError(
                'this cluster runs fsync "never", under which nodes move no partition (a power loss could forget '
                'that one was handed over), so no node can join or drain; use fsync "always" or "batch"'
            )

    def _save_config(self, config: ClusterConfig) -> None:
        config.save(self.config_path)
        self.config = config

    def _running_members(self) -> list[NodeAddress]:
        """Running nodes of the config, less those whose own map says they are no member (a node started
        but never admitted, or one already removed)."""
        state = self.state()
        running = []
        for node in self.config.nodes:
            rec = state.record(node.node_id)
            if rec is None or not self._pid_alive(rec.pid):
                continue
            view = cluster_view(node.url)
            if view is not None and _roster_state(view, node.node_id) not in (ACTIVE, LEAVING):
                continue
            running.append(node)
        return running

    def _next_node_id(self, members: list[NodeAddress]) -> str:
        """``n<k+1>`` past every id this cluster has used: its config, its founders, the roster (removed nodes
        stay there) and the data directories, so a new node never inherits an old one's data or entry."""
        used = set(self.config.node_ids) | set(self.config.initial_nodes)
        for node in members:
            view = cluster_view(node.url)
            if view is not None:
                used |= {m["node"] for m in view["partition_map"]["roster"]}
        data_dir = Path(self.config.storage.data_dir)
        if data_dir.is_dir():
            used |= {p.name for p in data_dir.iterdir()}
        numbers = [int(m.group(1)) for m in (re.fullmatch(r"n(\d+)", i) for i in used) if m is not None]
        return f"n{max(numbers, default=0) + 1}"

    def _order_membership(self, order: dict[str, str], members: list[NodeAddress], deadline: float) -> None:
        """POST ``order`` to ``/admin/members`` of the first of ``members`` that takes it. A refusal (400) is
        final; a member that cannot be reached or fails is passed over for the next, round after round, until
        the deadline."""
        body = json.dumps(order).encode()
        failures: dict[str, str] = {}
        while True:
            for node in members:
                request = urllib.request.Request(
                    f"{node.url}/admin/members",
                    data=body,
                    method="POST",
                    headers={"Authorization": f"Bearer {self.config.secret}", "Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as resp:
                        resp.read()
                        return
                except urllib.error.HTTPError as exc:
                    message = _error_message(exc)
                    if exc.code == 400 and not failures:
                        raise ClusterUsageError(f"{node.node_id} refused: {message}") from None
                    if exc.code == 400:
                        # An earlier attempt may have been applied before its answer was lost: done if so.
                        if self._order_in_effect(order):
                            return
                        raise ClusterUsageError(f"{node.node_id} refused: {message}") from None
                    failures[node.node_id] = f"HTTP {exc.code}: {message}"
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    failures[node.node_id] = str(getattr(exc, "reason", exc))
            if time.monotonic() > deadline:
                shown = "; ".join(f"{n}: {why}" for n, why in failures.items())
                raise ClusterError(f"no member took the order {order['state']} for {order['node']} ({shown})")
            time.sleep(POLL_INTERVAL_S * 4)

    def _order_in_effect(self, order: dict[str, str]) -> bool:
        wanted = (ACTIVE,) if order["state"] == ACTIVE else (LEAVING, REMOVED, None)
        views = [cluster_view(n.url) for n in self._running_members()]
        return any(v is not None and _roster_state(v, order["node"]) in wanted for v in views)

    def _wait_until(self, pending: Callable[[], list[str]], deadline: float, timeout_s: float, what: str) -> None:
        while True:
            left = pending()
            if not left:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} was not in force after {timeout_s:g} s; pending: " + "; ".join(left))
            time.sleep(POLL_INTERVAL_S * 2)

    def _views(self, nodes: list[NodeAddress], pending: list[str]) -> dict[str, dict[str, Any]]:
        views = {}
        for node in nodes:
            view = cluster_view(node.url)
            if view is None:
                pending.append(f"{node.node_id} does not answer GET /cluster")
            else:
                views[node.node_id] = view
        return views

    def _join_pending(self, node_id: str) -> list[str]:
        """What keeps ``node_id``'s join from being in force, per running member (empty: in force)."""
        pending: list[str] = []
        nodes = self._running_members()
        if node_id not in (n.node_id for n in nodes):
            nodes.append(self.config.node(node_id))  # its own map may not name it yet
        views = self._views(nodes, pending)
        for viewer, view in views.items():
            state = _roster_state(view, node_id)
            if state != ACTIVE:
                pending.append(f"{viewer} sees {node_id} {state or 'not in the roster'}")
            replicas = view["partition_map"]["replicas"]
            if len(replicas) >= len(_active(view)) and not any(node_id in r for r in replicas):
                pending.append(f"{viewer}'s map gives {node_id} no partition yet")
            pending.extend(_unbalanced(viewer, view))
        pending.extend(_epochs_differ(views))
        return pending

    def _leave_pending(self, node_id: str) -> list[str]:
        """What keeps ``node_id``'s drain from being done, per other running member (empty: done)."""
        pending: list[str] = []
        views = self._views([n for n in self._running_members() if n.node_id != node_id], pending)
        if not views and not pending:
            pending.append(f"no other member runs to take {node_id}'s partitions")
        for viewer, view in views.items():
            state = _roster_state(view, node_id)
            if state not in (REMOVED, None):
                pending.append(f"{viewer} sees {node_id} {state}")
            held = [p for p, r in enumerate(view["partition_map"]["replicas"]) if node_id in r]
            if held:
                pending.append(f"{viewer}'s map gives {node_id} {len(held)} partition(s)")
            pending.extend(_unbalanced(viewer, view))
        pending.extend(_epochs_differ(views))
        return pending

    def _running_record(self, node_id: str) -> NodeRecord:
        self.config.node(node_id)  # unknown ids get the config's error, which lists the known ones
        rec = self.state().record(node_id)
        if rec is None or not self._pid_alive(rec.pid):
            raise ClusterError(f"node {node_id} is not running (start it with: kvstore cluster restart {node_id})")
        return rec

    def _spawn(self, node: NodeAddress) -> None:
        if not port_is_free(node.host, node.port):
            raise ClusterError(f"port {node.port} for {node.node_id} is in use by another process")
        cmd = [sys.executable, "-m", NODE_MODULE, "--config", str(self.config_path), "--node", node.node_id]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path(node.node_id), "ab") as log:
            # A new session: Ctrl-C in the supervisor's terminal must not reach the nodes directly; the
            # supervisor stops them itself, gracefully.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._children[proc.pid] = proc
        self._update_state(NodeRecord(node.node_id, proc.pid, node.host, node.port))

    def _update_state(self, rec: NodeRecord) -> None:
        self.state().with_record(rec).save(self.state_path)

    def _wait_healthy(self, node_ids: tuple[str, ...], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(node_ids)
        while waiting:
            for node_id in list(waiting):
                if not self.alive(node_id):
                    raise ClusterError(
                        f"node {node_id} exited during startup; last lines of {self.log_path(node_id)}:\n"
                        + tail(self.log_path(node_id))
                    )
                if check_health(self.url(node_id)):
                    waiting.remove(node_id)
            if waiting and time.monotonic() > deadline:
                raise ClusterError(f"{', '.join(waiting)} did not answer /health within {timeout_s:g} s")
            if waiting:
                time.sleep(POLL_INTERVAL_S)

    def _terminate(self, pids: list[int], grace_s: float) -> None:
        """SIGTERM all of ``pids`` at once (they shut down in parallel), then SIGKILL any still running."""
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for pid in pids:
            if not self._wait_exit(pid, max(0.0, deadline - time.monotonic())):
                _signal(pid, signal.SIGKILL)
                self._wait_exit(pid, timeout_s=10.0)

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        child = self._children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            del self._children[pid]
            return True
        deadline = time.monotonic() + timeout_s
        while node_process_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    # A process already gone is the goal of every signal sent here.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def cluster_view(url: str) -> dict[str, Any] | None:
    """The node's ``GET /cluster`` document (its view of the cluster), or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/cluster", timeout=ADMIN_TIMEOUT_S) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("partition_map"), dict) else None


def _roster_state(view: dict[str, Any], node_id: str) -> str | None:
    """``node_id``'s state in the view's roster; None if the roster does not name it."""
    for entry in view["partition_map"]["roster"]:
        if entry["node"] == node_id:
            return str(entry["state"])
    return None


def _active(view: dict[str, Any]) -> list[str]:
    return [e["node"] for e in view["partition_map"]["roster"] if e["state"] == ACTIVE]


def _unbalanced(viewer: str, view: dict[str, Any]) -> list[str]:
    if view["balanced"]:
        return []
    return [f"{viewer} is not balanced ({view['moves_in_progress']} move(s) of its own in progress)"]


def _epochs_differ(views: dict[str, dict[str, Any]]) -> list[str]:
    epochs = {viewer: view["epoch"] for viewer, view in views.items()}
    if len(set(epochs.values())) <= 1:
        return []
    return ["map epochs differ (" + ", ".join(f"{v} {e}" for v, e in epochs.items()) + ")"]


def _membership_of(node_id: str, views: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``member_state`` and ``partitions`` of ``node_id`` for its NodeStatus: its own view, else another's."""
    ordered = [views[node_id]] if node_id in views else []
    ordered += [v for viewer, v in views.items() if viewer != node_id]
    for view in ordered:
        state = _roster_state(view, node_id)
        if state is not None or view is views.get(node_id):
            owned = sum(1 for r in view["partition_map"]["replicas"] if r[0] == node_id)
            return {"member_state": state or "none", "partitions": owned}
    return {}


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The message of a kvstore JSON error answer, else the HTTP reason."""
    try:
        doc = json.loads(exc.read())
        return str(doc["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return str(exc.reason)


def _key_count(url: str) -> int | None:
    """The node's ``kvstore_keys`` gauge from /metrics (Prometheus text); None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=HEALTH_TIMEOUT_S) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return parse_gauge(text, KEYS_METRIC)


def parse_gauge(exposition: str, name: str) -> int | None:
    """The value of an unlabelled gauge in a Prometheus text exposition, as a whole number."""
    for line in exposition.splitlines():
        metric, _, value = line.partition(" ")
        if metric == name:
            try:
                return int(float(value))
            except ValueError:
                return None
    return None


def _refuse_if_running(directory: Path) -> None:
    state = ClusterState.load(directory / STATE_NAME)
    running = [r.node_id for r in state.nodes if node_process_alive(r.pid)] if state else []
    if running:
        raise ClusterError(
            f"a cluster is already running in {directory} ({', '.join(running)}); "
            f"stop it with: kvstore cluster down --dir {directory}"
        )


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ClusterError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _with_ports(config: ClusterConfig, ports: list[int]) -> ClusterConfig:
    nodes = tuple(NodeAddress(n.node_id, n.host, port) for n, port in zip(config.nodes, ports, strict=True))
    return config.replace(nodes=nodes)


def _reuse_config(
    config: ClusterConfig,
    nodes: int | None,
    fsync: str | None,
    engine: str | None,
    mode: str | None = None,
    replicas: int | None = None,
) -> ClusterConfig:
    """The existing config with its ports refreshed where they are taken; options must not contradict it."""
    given: dict[str, tuple[object, object]] = {
        "--nodes": (nodes, len(config.nodes)), "--fsync": (fsync, config.storage.fsync),
        "--engine": (engine, config.storage.engine), "--mode": (mode, config.mode),
        "--replicas": (replicas, config.replication_factor),
    }
    for option, (wanted, existing) in given.items():
        if wanted is not None and wanted != existing:
            raise ClusterError(
                f"this directory holds a cluster with {option} {existing}; to start a different one, "
                "use another --dir or remove this one with: kvstore cluster down --purge"
            )
    if all(port_is_free(n.host, n.port) for n in config.nodes):
        return config
    return _with_ports(config, pick_free_ports(len(config.nodes)))


@contextlib.contextmanager
def running_cluster(
    directory: str | Path, nodes: int = 3, fsync: str = "always", engine: str = "sqlite", timeout_s: float = 30.0
) -> Iterator[LocalCluster]:
    """A cluster that is up inside the ``with`` block and stopped (every process) when it is left."""
    cluster = LocalCluster.create(directory, nodes=nodes, fsync=fsync, engine=engine)
    with cluster:
        cluster.up(timeout_s=timeout_s)
        yield cluster

