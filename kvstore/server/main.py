"""Run one node process: ``python -m kvstore.server.main --config C --node N [--host H]``.

Binds the host and port the config gives the node (``--host`` overrides the host, for example
0.0.0.0), prints ``kvstore node <id> listening on http://host:port`` once it serves, and on SIGTERM or
SIGINT stops gracefully: open requests are answered, storage is synced and closed. A failed storage
sync stops the node with exit status 1, and so does storage that refuses to open (damaged or locked),
after printing why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys

import uvloop

from kvstore.config import ClusterConfig, ConfigError
from kvstore.server.app import NodeServer
from kvstore.storage.factory import open_storage
from kvstore.storage.sqlite import StorageError

log = logging.getLogger("kvstore.server")


# Open-file soft limit asked for when the hard limit is unlimited (Linux refuses RLIM_INFINITY here).
_OPEN_FILES_WANTED = 1 << 20


def raise_open_files_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit, as etcd and Go programs do: the common soft
    default of 1024 would leave a node fewer client connections than its configured bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)


def run_node(config_path: str, node_id: str, host_override: str | None = None) -> None:
    config = ClusterConfig.load(config_path)
    config.node(node_id)
    failed = uvloop.run(_serve(config, node_id, host_override))
    if failed:
        raise SystemExit(1)


async def _serve(config: ClusterConfig, node_id: str, host_override: str | None) -> bool:
    """Serve until a signal (returns False) or a fatal storage error (returns True)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = NodeServer(config, node_id, open_storage(config, node_id), host=host_override, on_fatal=on_fatal)
    try:
        await server.start()
        print(f"kvstore node {node_id} listening on {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return bool(fatal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvstore.server.main", description="Run one kvstore node.")
    parser.add_argument("--config", required=True, help="cluster config (TOML)")
    parser.add_argument("--node", required=True, help="this node's id in the config")
    parser.add_argument("--host", default=None, help="bind this host instead of the config's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_files_limit()
    try:
        run_node(args.config, args.node, args.host)
    except ConfigError as exc:
        sys.exit(f"kvstore node: {exc}")
    except (OSError, StorageError) as exc:
        # A storage that refuses to open (damaged, locked) names its file and the problem: print that, exit 1.
        sys.exit(f"kvstore node {args.node}: {exc}")


if __name__ == "__main__":
    main()
