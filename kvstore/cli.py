"""The `kvstore` command: parses arguments and calls the modules that do the work.

Each subcommand is one ``_add_<name>(subparsers)`` function in ``SUBCOMMANDS``; it registers its parser and
sets ``handler``, a function taking the parsed arguments and returning the exit status. A new command
(``kvstore chaos``, ``kvstore check``) is one more such function; it imports its package (``chaos``, which
only this module may import) inside its handler, so every other command starts without loading it.

Exit status: 0 success; 1 the answer is "no" (key not found, CAS precondition failed) or an operation
failed (a node did not start, the demo's verification failed); 2 bad usage or input; 3 the cluster could
not serve the request (unavailable, timeout, overloaded, internal error).
"""

from __future__ import annotations

import argparse
import base64
import shlex
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, NoReturn

from kvstore.client import Client, SiblingsFound
from kvstore.cluster import DEFAULT_DIR, MEMBERSHIP_TIMEOUT_S, ClusterError, ClusterUsageError, LocalCluster
from kvstore.config import CONSISTENCY_LEVELS, FSYNC_POLICIES, MODES, STORAGE_ENGINES, ConfigError
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import FoundSiblings
from replication.replica import REPLICATION_SETTINGS

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
DEFAULT_SCAN_LIMIT = 100
# Descriptions are wrapped here: the raw formatter, which keeps the examples' layout, does not wrap them.
HELP_WIDTH = 80

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KvError as exc:
        _fail(f"{exc.code.value}: {exc.message}")
        return exit_status(exc.code)
    except ClusterUsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except (ClusterError, ConfigError, OSError) as exc:
        _fail(str(exc))
        return EXIT_NO
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


def exit_status(code: ErrorCode) -> int:
    if code in (ErrorCode.NOT_FOUND, ErrorCode.PRECONDITION_FAILED):
        return EXIT_NO
    if code.http_status < 500:
        return EXIT_USAGE
    return EXIT_UNAVAILABLE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvstore",
        description="A replicated key-value database: run a local cluster, read and write keys, simulate.",
        epilog=_examples("kvstore demo", "kvstore cluster up --detach", "kvstore put greeting hello",
                         "kvstore get greeting"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


# ---------------------------------------------------------------- helpers


def _examples(*lines: str) -> str:
    return ("Example:\n" if len(lines) == 1 else "Examples:\n") + "\n".join(f"  {line}" for line in lines)


def _command(subparsers: Any, name: str, summary: str, examples: Sequence[str], handler: Handler) -> Any:
    sub = subparsers.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary, HELP_WIDTH),
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(handler=handler)
    return sub


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"the cluster's directory (default: {DEFAULT_DIR})")


def _add_target(parser: argparse.ArgumentParser) -> None:
    """Options that say which cluster a client command talks to."""
    parser.add_argument("--url", action="append", metavar="URL",
                        help="a node's URL, e.g. http://127.0.0.1:7001 (repeat for more nodes; default: the nodes "
                             "of the cluster in --dir)")
    _add_dir(parser)
    parser.add_argument("--timeout-ms", type=_positive_int, default=5000, help="request timeout (default: 5000)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _urls(args: argparse.Namespace) -> list[str]:
    urls = [u.rstrip("/") for u in args.url] if args.url else LocalCluster.open(args.dir).urls()
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise KvError(ErrorCode.BAD_REQUEST, f"--url {url!r}: expected http://host:port")
    return urls


def _client(args: argparse.Namespace) -> Client:
    return Client(_urls(args), timeout_s=args.timeout_ms / 1000)


def _dir_option(directory: Path) -> str:
    """`` --dir D`` for commands to print, unless ``directory`` is the default."""
    return "" if directory == DEFAULT_DIR else f" --dir {directory}"


def _fail(message: str) -> None:
    print(f"kvstore: error: {message}", file=sys.stderr)


def _write_value(value: bytes, out: BinaryIO) -> None:
    out.write(value)
    # A terminal gets a line break after the value; a pipe or a file gets the exact bytes.
    if sys.stdout.isatty() and not value.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


def _printable(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- node


def _add_node(subparsers: Any) -> None:
    sub = _command(subparsers, "node", "Run one node of a cluster in the foreground (SIGTERM or Ctrl-C stops it).",
                   ["kvstore node --config .kvstore/cluster/cluster.toml --node n1"], _run_node)
    sub.add_argument("--config", required=True, type=Path, help="the cluster's TOML config")
    sub.add_argument("--node", required=True, help="this node's id in the config, e.g. n1")
    sub.add_argument("--host", help="address to listen on instead of the config's (e.g. 0.0.0.0)")


def _run_node(args: argparse.Namespace) -> int:
    # The server's own entry point: the same logging and error handling as nodes that `cluster up` starts.
    from kvstore.server.main import main as node_main

    node_main(["--config", str(args.config), "--node", args.node, *(["--host", args.host] if args.host else [])])
    return EXIT_OK


# ---------------------------------------------------------------- cluster


def _add_cluster(subparsers: Any) -> None:
    cluster = subparsers.add_parser(
        "cluster",
        help="Run a local cluster of node processes: up, status, kill, restart, add-node, remove-node, down.",
        description="Run a local cluster of node processes on this machine (127.0.0.1, free ports).",
        epilog=_examples("kvstore cluster up --detach --nodes 3", "kvstore cluster status",
                         "kvstore cluster kill n2", "kvstore cluster restart n2", "kvstore cluster add-node",
                         "kvstore cluster remove-node n2", "kvstore cluster down"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = cluster.add_subparsers(title="actions", metavar="ACTION", required=True)

    up = _command(actions, "up", "Start a local cluster and wait until every node answers /health; then stay in "
                  "the foreground until Ctrl-C (which stops the nodes), or return at once with --detach.",
                  ["kvstore cluster up --nodes 3 --fsync always", "kvstore cluster up --detach --base-port 7001",
                   "kvstore cluster up --mode leader --replicas 3",
                   "kvstore cluster up --mode leaderless --replicas 3",
                   "kvstore cluster up --detach --dir /tmp/kv"],
                  _cluster_up)
    _add_dir(up)
    up.add_argument("--nodes", type=_positive_int, help="number of nodes (default: 3, or the existing cluster's)")
    up.add_argument("--fsync", choices=FSYNC_POLICIES, help="when writes reach the disk (default: always)")
    up.add_argument("--engine", choices=STORAGE_ENGINES, help="storage engine (default: sqlite)")
    up.add_argument("--mode", choices=MODES,
                    help="replication: single (one copy per partition, the default), leader (Raft groups) or "
                    "leaderless (Dynamo-style quorums)")
    up.add_argument("--replicas", type=_positive_int,
                    help="leader and leaderless mode: copies of each partition (default: 3; at most --nodes)")
    up.add_argument("--base-port", type=_positive_int,
                    help="listen on this port and the next ones (default: free ports the OS picks)")
    up.add_argument("--detach", action="store_true", help="leave the nodes running and return")
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the nodes (default: 30)")

    status = _command(actions, "status", "Show each node: pid, alive, healthy, its state in the cluster's roster "
                      "(active, leaving, removed; none: not admitted), partitions owned, keys held.",
                      ["kvstore cluster status --dir /tmp/kv"], _cluster_status)
    _add_dir(status)

    kill = _command(actions, "kill", "Kill one node with SIGKILL, as a crash would.",
                    ["kvstore cluster kill n2"], _cluster_kill)
    kill.add_argument("node", help="node id, e.g. n2")
    _add_dir(kill)

    restart = _command(actions, "restart", "Start one node again on its port with its data; wait until healthy.",
                       ["kvstore cluster restart n2"], _cluster_restart)
    restart.add_argument("node", help="node id, e.g. n2")
    _add_dir(restart)

    add = _command(actions, "add-node", "Start one more node (the next id, a free port) and have the cluster admit "
                   "it; return once every running member agrees on the new layout and is balanced, with the new node "
                   "owning partitions.",
                   ["kvstore cluster add-node", "kvstore cluster add-node --dir /tmp/kv --timeout 120"],
                   _cluster_add_node)
    _add_dir(add)
    add.add_argument("--timeout", type=_positive_float, default=MEMBERSHIP_TIMEOUT_S,
                     help=f"seconds to wait for the new layout (default: {MEMBERSHIP_TIMEOUT_S:g})")

    remove = _command(actions, "remove-node", "Drain one node (the cluster moves its partitions to the others), then "
                      "stop it and take it out of the config. Its log and data are kept.",
                      ["kvstore cluster remove-node n2", "kvstore cluster remove-node n4 --dir /tmp/kv --timeout 120"],
                      _cluster_remove_node)
    remove.add_argument("node", help="node id, e.g. n2")
    _add_dir(remove)
    remove.add_argument("--timeout", type=_positive_float, default=MEMBERSHIP_TIMEOUT_S,
                        help=f"seconds to wait for the drain (default: {MEMBERSHIP_TIMEOUT_S:g})")

    down = _command(actions, "down", "Stop every node (SIGTERM, then SIGKILL after a grace period). Data is kept "
                    "unless --purge.", ["kvstore cluster down", "kvstore cluster down --purge --dir /tmp/kv"],
                    _cluster_down)
    _add_dir(down)
    down.add_argument("--purge", action="store_true", help="also delete the directory: config, logs and data")
    down.add_argument("--grace", type=float, default=10.0, help="seconds to wait after SIGTERM (default: 10)")


def _cluster_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster.create(
        args.dir, nodes=args.nodes, fsync=args.fsync, engine=args.engine, base_port=args.base_port,
        mode=args.mode, replicas=args.replicas,
    )
    if args.detach:
        cluster.up(timeout_s=args.timeout)  # stops what it started if it fails
        _print_nodes(cluster)
        print(f"stop it with: kvstore cluster down{_dir_option(args.dir)}")
        return EXIT_OK
    # Ctrl-C and SIGTERM both stop the cluster, even where the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        cluster.up(timeout_s=args.timeout)
        _print_nodes(cluster)
        print("press Ctrl-C to stop", flush=True)
        _watch(cluster)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave nodes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = cluster.down()
        print(f"cluster down ({', '.join(stopped) or 'no nodes were running'})")
    return EXIT_OK


def _print_nodes(cluster: LocalCluster) -> None:
    for node in cluster.config.nodes:
        print(f"{node.node_id}  {node.url}  log: {cluster.log_path(node.node_id)}")
    print(f"cluster up: {len(cluster.config.nodes)} nodes, config {cluster.config_path}", flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _watch(cluster: LocalCluster, interval_s: float = 1.0) -> None:
    """Wait for Ctrl-C, reporting nodes that stop or come back (``cluster kill`` from another terminal), and
    nodes added from another terminal (``cluster add-node``), which Ctrl-C then stops too."""
    alive = {n: True for n in cluster.config.node_ids}
    while True:
        time.sleep(interval_s)
        for record in cluster.state().nodes:
            if record.node_id not in alive:
                alive[record.node_id] = cluster.alive(record.node_id)
                print(f"{record.node_id} was added ({record.url})")
        for node_id, was_alive in alive.items():
            now_alive = cluster.alive(node_id)
            if now_alive != was_alive:
                print(f"{node_id} {'is running again' if now_alive else 'stopped'}")
                alive[node_id] = now_alive


def _cluster_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.open(args.dir)
    statuses = cluster.status()
    print(f"{'node':<6} {'url':<24} {'pid':>8}  {'process':<8} {'health':<8} {'member':<8} {'parts':>6} {'keys':>8}")
    for st in statuses:
        process = "alive" if st.alive else "dead"
        health = "ok" if st.healthy else "-"
        keys = "-" if st.key_count is None else str(st.key_count)
        pid = "-" if st.pid is None else str(st.pid)
        member = st.member_state or "-"
        parts = "-" if st.partitions is None else str(st.partitions)
        print(f"{st.node_id:<6} {st.url:<24} {pid:>8}  {process:<8} {health:<8} {member:<8} {parts:>6} {keys:>8}")
    healthy = sum(st.healthy for st in statuses)
    print(f"{healthy}/{len(statuses)} nodes healthy")
    return EXIT_OK if healthy == len(statuses) else EXIT_NO


def _cluster_kill(args: argparse.Namespace) -> int:
    LocalCluster.open(args.dir).kill(args.node)
    print(f"{args.node} killed (SIGKILL)")
    return EXIT_OK


def _cluster_restart(args: argparse.Namespace) -> int:
    cluster = LocalCluster.open(args.dir)
    cluster.restart(args.node)
    print(f"{args.node} restarted at {cluster.url(args.node)}")
    return EXIT_OK


def _cluster_add_node(args: argparse.Namespace) -> int:
    cluster = LocalCluster.open(args.dir)
    node_id = cluster.add_node(timeout_s=args.timeout)
    print(f"{node_id}  {cluster.url(node_id)}  log: {cluster.log_path(node_id)}")
    print(f"{node_id} joined; partitions owned: {_counts(cluster.partition_counts())}")
    return EXIT_OK


def _cluster_remove_node(args: argparse.Namespace) -> int:
    cluster = LocalCluster.open(args.dir)
    cluster.remove_node(args.node, timeout_s=args.timeout)
    print(f"{args.node} drained and stopped; partitions owned: {_counts(cluster.partition_counts())}")
    return EXIT_OK


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{node} {count}" for node, count in sorted(counts.items())) or "unknown"


def _cluster_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.open(args.dir)
    stopped = cluster.down(grace_s=args.grace, purge=args.purge)
    print(f"stopped: {', '.join(stopped) or 'no nodes were running'}")
    print(f"removed {cluster.directory}" if args.purge else f"data kept in {cluster.directory}")
    return EXIT_OK


# ---------------------------------------------------------------- client commands


def _add_get(subparsers: Any) -> None:
    sub = _command(subparsers, "get", "Print a key's value (the exact bytes). Exit 1 if the key does not exist.",
                   ["kvstore get user/42", "kvstore get user/42 --url http://127.0.0.1:7001 > value.bin",
                    "kvstore get user/42 --consistency stale --max-staleness-ms 500"], _get)
    sub.add_argument("key")
    sub.add_argument("--consistency", choices=CONSISTENCY_LEVELS,
                     help="how the read is served (leader mode; default: the cluster's replication.reads)")
    sub.add_argument("--max-staleness-ms", type=_positive_int,
                     help="with --consistency stale: the most the serving replica may lag behind")
    sub.add_argument("--r", help="leaderless mode: replies to wait for (a number, one, quorum, all)")
    sub.add_argument("--context", action="store_true",
                     help="leaderless mode: print the key's causal context (base64) to stderr, for put --context")
    _add_target(sub)


def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.r is not None or args.context:
            siblings = client.get_siblings(args.key, r=args.r, consistency=args.consistency)
            return _print_siblings(siblings, args.context)
        try:
            found = client.get(args.key, consistency=args.consistency, max_staleness_ms=args.max_staleness_ms)
        except SiblingsFound as exc:
            return _print_siblings(exc.siblings, False)  # the resolve hint names the context
    if found is None:
        raise KvError(ErrorCode.NOT_FOUND, f"key {args.key!r} does not exist")
    _write_value(found.value, sys.stdout.buffer)
    return EXIT_OK


def _print_siblings(found: FoundSiblings, show_context: bool) -> int:
    """A leaderless read: one value as its exact bytes; several as a numbered list, with the context that a put
    must send to replace them all (``kvstore put KEY VALUE --context ...``)."""
    context = base64.b64encode(found.context).decode("ascii")
    if show_context and found.context:
        print(f"context: {context}", file=sys.stderr)
    if not found.values:
        raise KvError(ErrorCode.NOT_FOUND, f"key {found.key!r} does not exist")
    if len(found.values) == 1:
        _write_value(found.values[0], sys.stdout.buffer)
        return EXIT_OK
    print(f"{found.key}: {len(found.values)} concurrent values (siblings)")
    for number, value in enumerate(found.values, 1):
        print(f"  [{number}] {_shown_value(value)}")
    print(f"resolve them with: kvstore put {shlex.quote(found.key)} VALUE --context {context}")
    return EXIT_OK


def _shown_value(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return f"(base64) {base64.b64encode(value).decode('ascii')}"


def _add_put(subparsers: Any) -> None:
    sub = _command(subparsers, "put", "Set a key's value, from the command line, a file (--file F) or stdin (-).",
                   ["kvstore put user/42 '{\"name\": \"Ada\"}'", "kvstore put photo/1 --file photo.jpg",
                    "echo hello | kvstore put greeting -"], _put)
    sub.add_argument("key")
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("value", nargs="?", help="the value as text; - reads it from stdin")
    source.add_argument("--file", type=Path, help="read the value from this file (- for stdin)")
    sub.add_argument("--ttl-ms", type=_positive_int, help="expire the key after this many milliseconds")
    _add_replication(sub)
    _add_leaderless_write(sub)
    _add_target(sub)


def _add_leaderless_write(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", help="leaderless mode: the causal context a read printed (base64): the write "
                        "replaces exactly the values that read returned (without it a put adds a sibling)")
    parser.add_argument("--w", help="leaderless mode: acknowledgements to wait for (a number, one, quorum, all)")


def _context_arg(text: str | None) -> bytes:
    if text is None:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise KvError(ErrorCode.BAD_REQUEST, "--context is not base64 (copy it from kvstore get --context)") from None


def _add_replication(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replication", choices=REPLICATION_SETTINGS,
                        help="when the write is acknowledged (leader mode; default: the cluster's replication.writes)")


def _put(args: argparse.Namespace) -> int:
    value = _read_value(args.value, args.file)
    with _client(args) as client:
        if args.context is not None or args.w is not None:
            stored = client.put_causal(args.key, value, context=_context_arg(args.context), w=args.w)
            print(f"ok: {args.key} = {len(value)} bytes ({stored.acks} replicas acknowledged)")
            print(f"context: {base64.b64encode(stored.context).decode('ascii')}", file=sys.stderr)
            return EXIT_OK
        written = client.put(args.key, value, ttl_ms=args.ttl_ms, replication=args.replication)
    # Version 0: a leaderless cluster, whose values have contexts instead (put --context, get --context).
    version = f" (version {written.version})" if written.version else ""
    print(f"ok: {args.key} = {len(value)} bytes{version}")
    return EXIT_OK


def _read_value(text: str | None, file: Path | None) -> bytes:
    if text == "-" or (file is not None and str(file) == "-"):
        return sys.stdin.buffer.read()
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"cannot read {file}: {exc.strerror}") from exc
    assert text is not None  # argparse requires the value or --file
    return text.encode("utf-8")


def _add_delete(subparsers: Any) -> None:
    sub = _command(subparsers, "delete", "Delete a key (deleting a missing key is not an error).",
                   ["kvstore delete user/42"], _delete)
    sub.add_argument("key")
    _add_replication(sub)
    _add_leaderless_write(sub)
    _add_target(sub)


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.context is not None or args.w is not None:
            stored = client.delete_causal(args.key, context=_context_arg(args.context), w=args.w)
            print(f"ok: {args.key} deleted ({stored.acks} replicas acknowledged)")
            return EXIT_OK
        deleted = client.delete(args.key, replication=args.replication)
    print(f"ok: {args.key} deleted" if deleted.existed else f"ok: {args.key} did not exist")
    return EXIT_OK


def _add_scan(subparsers: Any) -> None:
    sub = _command(subparsers, "scan", "List keys and values in key order, one 'key<TAB>value' line each: all keys "
                   "with a prefix, or the keys in [start, end).",
                   ["kvstore scan --prefix user/", "kvstore scan --start a --end m --limit 10"], _scan)
    sub.add_argument("--prefix", help="keys starting with this text")
    sub.add_argument("--start", help="first key (inclusive)")
    sub.add_argument("--end", help="end key (exclusive)")
    sub.add_argument("--limit", type=_positive_int, default=DEFAULT_SCAN_LIMIT,
                     help=f"at most this many keys (default: {DEFAULT_SCAN_LIMIT})")
    _add_target(sub)


def _scan(args: argparse.Namespace) -> int:
    if args.prefix is not None and (args.start is not None or args.end is not None):
        raise KvError(ErrorCode.BAD_REQUEST, "give either --prefix or --start/--end, not both")
    with _client(args) as client:
        page = client.scan(args.prefix, start=args.start, end=args.end, limit=args.limit)
    for item in page.items:
        print(f"{item.key}\t{_printable(item.value)}")
    if page.truncated:
        print(f"(more keys follow: raise --limit above {args.limit})", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- sim and demo


def _add_sim(subparsers: Any) -> None:
    from chaos.commands import add_sim_arguments

    sub = _command(subparsers, "sim", "Run the cluster in the deterministic simulator: a register workload (and, "
                   "with --crashes, a node crash every 600 ms of virtual time), run by the chaos layer's simulator "
                   "runner and judged by its linearizability and lost-write checkers. One seed replays the same "
                   "run exactly (its trace-hash is printed last). Exit 1 if the history is not valid under "
                   "fsync=always; a failure prints the seed and the command that replays it.",
                   ["kvstore sim --seed 1 --nodes 3 --ops 200", "kvstore sim --seed 7 --nodes 5 --ops 2000 --crashes"],
                   _sim)
    add_sim_arguments(sub)


def _sim(args: argparse.Namespace) -> int:
    from chaos.commands import run_sim_command

    if args.nodes < 1 or args.ops < 1:
        raise KvError(ErrorCode.BAD_REQUEST, "--nodes and --ops must be at least 1")
    return run_sim_command(args)


def _add_demo(subparsers: Any) -> None:
    _command(subparsers, "demo", "Start a local 3-node cluster, run a concurrent workload, kill a node in the "
             "middle, restart it, and verify that every acknowledged write is readable. Then run a chaos "
             "scenario (crashes, partitions, duplicated messages) in the simulator with fsync=always (must be "
             "linearizable), with fsync=never (the checkers must catch the lost writes), and on a real cluster. "
             "Reports go to reports/demo/. Exit 0 if every check comes out as expected.",
             ["kvstore demo"], _demo)


def _demo(args: argparse.Namespace) -> int:
    from chaos.crash_demo import run_demo
    from chaos.demo import run_chaos_demo

    cluster_ok = run_demo()
    print()
    chaos_ok = run_chaos_demo()
    return EXIT_OK if cluster_ok and chaos_ok else EXIT_NO


# ---------------------------------------------------------------- chaos and check (the chaos package)


def _add_chaos(subparsers: Any) -> None:
    from chaos.commands import add_chaos_run_arguments

    chaos = subparsers.add_parser("chaos", help="Run chaos scenarios: a workload under faults, judged by checkers.",
                                  description="Run chaos scenarios: a workload under faults, judged by checkers.",
                                  epilog=_examples("kvstore chaos run scenarios/register-crash.toml --seeds 1..20"),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = chaos.add_subparsers(metavar="ACTION")
    run = _command(actions, "run", "Run a scenario (TOML) in the deterministic simulator (default) or against a "
                   "real local cluster (--real), write a report folder (history.jsonl, result.json, report.html) "
                   "and print the verdict. A failing simulated seed prints the command that replays it. Exit 0 "
                   "all valid, 1 any invalid, 2 unknown or bad input.",
                   ["kvstore chaos run scenarios/register-crash.toml",
                    "kvstore chaos run scenarios/register-crash.toml --seeds 1..500 --no-report",
                    "kvstore chaos run scenarios/register-crash-fsync-never.toml --seed 3",
                    "kvstore chaos run scenarios/register-crash.toml --real"], _chaos_run)
    add_chaos_run_arguments(run)


def _chaos_run(args: argparse.Namespace) -> int:
    from chaos.commands import run_chaos

    return run_chaos(args)


def _add_check(subparsers: Any) -> None:
    from chaos.commands import add_check_arguments

    sub = _command(subparsers, "check", "Check histories (Jepsen-style JSON lines) with a consistency checker. "
                   "Prints one JSON object per file: its verdict (true, false or \"unknown\"), the key and the "
                   "shortest failing stretch of ops when invalid, and the time taken. Exit 0 all valid, 1 any "
                   "invalid, 2 unknown or bad input.",
                   ["kvstore check --checker linearizable history.jsonl",
                    "kvstore check tests/data/histories/knossos/bad/*.jsonl"], _check)
    add_check_arguments(sub)


def _check(args: argparse.Namespace) -> int:
    from chaos.commands import run_check

    return run_check(args)


def _add_features(subparsers: Any) -> None:
    from kvstore.features.commands import add_features

    add_features(subparsers, _command, _add_target, _urls)


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_demo,
    _add_cluster,
    _add_node,
    _add_get,
    _add_put,
    _add_delete,
    _add_scan,
    _add_features,
    _add_sim,
    _add_chaos,
    _add_check,
)
