"""The sans-IO rule and the dependency direction of docs/design.md, checked from the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_PACKAGES = ("replication", "partitioning", "transactions")
# kvstore modules that make up the node core: driven by both drivers, so they may do no IO of their own.
CORE_MODULES = (
    "kvstore/node.py",
    "kvstore/forwarding.py",
    "kvstore/handoff.py",
    "kvstore/raft_snapshots.py",
    "kvstore/membership.py",
    "kvstore/group_changes.py",
    "kvstore/map_gossip.py",
    "kvstore/ranges.py",
    "kvstore/gather.py",
    "kvstore/raft_batching.py",
    "kvstore/state_machine.py",
    "kvstore/commands.py",
    "kvstore/messages.py",
    "kvstore/effects.py",
    "kvstore/flush_policy.py",
    "kvstore/codec.py",
    "kvstore/errors.py",
    "kvstore/validation.py",
    "kvstore/session.py",
    "kvstore/leader_wait.py",
    "kvstore/leader_balance.py",
    "kvstore/leaderless_mode.py",
    "kvstore/version_store.py",
    "kvstore/hint_store.py",
    "kvstore/changes.py",
    "kvstore/faults.py",
    "kvstore/storage/base.py",
    "kvstore/storage/memory.py",
    "kvstore/storage/simulated.py",
)
FORBIDDEN_IN_CORE = {"asyncio", "aiohttp", "time", "socket", "threading", "uuid", "uvloop", "sqlite3", "os"}


def python_files(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = ROOT / root
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return files


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every imported module name with its line, including `from x import y` as x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend([(node.module, node.lineno)] + [(f"{node.module}.{a.name}", node.lineno) for a in node.names])
    return found


def module_level_random_use(path: Path) -> list[int]:
    """Lines that use the `random` module's shared generator (anything but the `random.Random` class)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            bad.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            bad.extend(node.lineno for a in node.names if a.name != "Random")
    return bad


def top(name: str) -> str:
    return name.split(".")[0]


def test_core_modules_exist() -> None:
    # The lists above must name real files, or the checks below would pass vacuously.
    for module in CORE_MODULES:
        assert (ROOT / module).is_file(), module
    for package in PROTOCOL_PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package


def test_core_does_no_io() -> None:
    offenders = []
    for path in python_files(*CORE_MODULES, *PROTOCOL_PACKAGES):
        for name, line in imports_of(path):
            if top(name) in FORBIDDEN_IN_CORE:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
        offenders.extend(
            f"{path.relative_to(ROOT)}:{line} uses module-level random" for line in module_level_random_use(path)
        )
    assert offenders == []


def test_core_imports_only_core() -> None:
    core_names = {m.removesuffix(".py").replace("/", ".") for m in CORE_MODULES}
    offenders = []
    for path in python_files(*CORE_MODULES):
        for name, line in imports_of(path):
            if top(name) != "kvstore":
                continue
            module = name if name in core_names else name.rsplit(".", 1)[0]
            allowed = module in core_names or module in {"kvstore", "kvstore.config", "kvstore.storage"}
            if not allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}, which is not part of the core")
    assert offenders == []


def test_protocol_packages_import_nothing_upward() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in python_files(*PROTOCOL_PACKAGES)
        for name, line in imports_of(path)
        if top(name) in {"kvstore", "chaos"}
    ]
    assert offenders == []


def test_only_the_cli_imports_chaos() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in python_files("kvstore")
        if path != ROOT / "kvstore" / "cli.py"
        for name, line in imports_of(path)
        if top(name) == "chaos"
    ]
    assert offenders == []


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom time import monotonic\nimport random\nx = random.random()\n")
    names = {top(n) for n, _ in imports_of(sample)}
    assert {"asyncio", "time"} <= names
    assert module_level_random_use(sample) == [4]
