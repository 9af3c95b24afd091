"""The `kvstore` argument parser, help texts, exit statuses and error lines (in process, no cluster)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from kvstore import cli
from kvstore.cluster import ClusterState, NodeRecord
from kvstore.config import local_cluster
from kvstore.errors import ErrorCode
from kvstore.server.inprocess import InProcessCluster, loopback_config


def subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path the parser knows, e.g. ("cluster", "up"), found from the parser itself."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(subcommand_paths(sub, (*prefix, name)))
    return paths


ALL_COMMANDS = subcommand_paths(cli.build_parser())


def test_every_documented_command_exists() -> None:
    expected: set[tuple[str, ...]] = {("demo",), ("node",), ("get",), ("put",), ("delete",), ("scan",), ("sim",)}
    expected |= {("cluster",)}
    expected |= {("cluster", a) for a in ("up", "status", "kill", "restart", "down", "add-node", "remove-node")}
    assert expected <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "kvstore")
def test_help_exits_0_with_an_example(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Example" in out
    assert f"kvstore {' '.join(path)}".strip() in out


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: kvstore" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["get"], ["put", "k"], ["put", "k", "v", "--file", "f"], ["sim", "--nodes", "3"], ["scan", "--limit", "0"],
     ["cluster", "up", "--fsync", "sometimes"], ["cluster"], ["frobnicate"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_put_parses_value_file_and_ttl() -> None:
    args = cli.build_parser().parse_args(["put", "k", "--file", "v.bin", "--ttl-ms", "500", "--url", "http://x:1"])
    assert (args.key, args.value, args.file, args.ttl_ms, args.url) == ("k", None, Path("v.bin"), 500, ["http://x:1"])
    assert args.handler is cli._put


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.NOT_FOUND, 1),
        (ErrorCode.PRECONDITION_FAILED, 1),
        (ErrorCode.BAD_KEY, 2),
        (ErrorCode.TOO_LARGE, 2),
        (ErrorCode.UNAVAILABLE, 3),
        (ErrorCode.TIMEOUT, 3),
        (ErrorCode.OVERLOADED, 3),
        (ErrorCode.INTERNAL, 3),
    ],
)
def test_exit_status_by_error_code(code: ErrorCode, status: int) -> None:
    assert cli.exit_status(code) == status


def test_missing_cluster_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "status", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kvstore: error: no cluster in ")
    assert len(err.strip().splitlines()) == 1


def test_scan_refuses_prefix_with_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scan", "--prefix", "a", "--start", "b", "--url", "http://127.0.0.1:1"]) == 2
    assert "bad_request" in capsys.readouterr().err


def test_put_of_an_unreadable_file_is_a_bad_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["put", "k", "--file", str(tmp_path / "missing"), "--url", "http://127.0.0.1:1"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_url_without_a_scheme_is_a_bad_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "k", "--url", "127.0.0.1:7001"]) == 2
    assert "expected http://host:port" in capsys.readouterr().err


def test_the_foreground_watch_reports_nodes_that_stop_come_back_or_are_added(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What each one-second look finds: n2 stops, n4 is added (from another terminal), n2 comes back.
    looks = [
        ({"n1", "n2", "n3"}, ("n1", "n2", "n3")),
        ({"n1", "n3"}, ("n1", "n2", "n3")),
        ({"n1", "n3", "n4"}, ("n1", "n2", "n3", "n4")),
        ({"n1", "n2", "n3", "n4"}, ("n1", "n2", "n3", "n4")),
    ]

    class Cluster:
        config = local_cluster(3)
        look = 0

        def alive(self, node_id: str) -> bool:
            return node_id in looks[self.look][0]

        def state(self) -> ClusterState:
            return ClusterState(tuple(NodeRecord(n, 1, "127.0.0.1", 7000) for n in looks[self.look][1]))

    cluster = Cluster()

    def sleep(_: float) -> None:
        if cluster.look == len(looks) - 1:
            raise KeyboardInterrupt
        cluster.look += 1

    monkeypatch.setattr("kvstore.cli.time.sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        cli._watch(cluster)  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "n2 stopped",
        "n4 was added (http://127.0.0.1:7000)",
        "n2 is running again",
    ]


def test_get_and_writes_parse_their_replication_settings() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["get", "k", "--consistency", "stale", "--max-staleness-ms", "250"])
    assert (args.consistency, args.max_staleness_ms) == ("stale", 250)
    args = parser.parse_args(["get", "k"])
    assert (args.consistency, args.max_staleness_ms) == (None, None)
    assert parser.parse_args(["put", "k", "v", "--replication", "semi-sync"]).replication == "semi-sync"
    assert parser.parse_args(["delete", "k", "--replication", "async"]).replication == "async"


@pytest.mark.parametrize(
    "argv",
    [["get", "k", "--consistency", "eventual"], ["get", "k", "--max-staleness-ms", "0"],
     ["put", "k", "v", "--replication", "quorum"]],
)
def test_bad_replication_settings_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_settings_reach_the_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> list[int]:
        async with InProcessCluster(loopback_config(1)) as running:
            url = running.url("n1")
            return [
                await asyncio.to_thread(cli.main, [*argv, "--url", url])
                for argv in (["put", "k", "v", "--replication", "sync"], ["get", "k", "--consistency", "linearizable"],
                             ["get", "k", "--consistency", "stale"])
            ]

    assert asyncio.run(scenario()) == [0, 0, 2]
    captured = capsys.readouterr()
    assert captured.out == "ok: k = 1 bytes (version 1)\nv"
    assert "consistency=stale needs leader mode" in captured.err
