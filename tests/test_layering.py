"""The packages depend one way: the core imports no service and not the load test; the services do not
import each other; nothing at runtime imports what only the tests and the benches use."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.manifests import REPO


def imports(package: str, root: Path = REPO) -> dict[Path, set[str]]:
    """Each module of a package, and the top two levels of every module it imports."""
    found: dict[Path, set[str]] = {}
    for path in (root / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = {".".join(n.split(".")[:2]) for n in names}
    return found


def offenders(package: str, forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    return sorted(
        f"{path.relative_to(root)} imports {name}"
        for path, names in imports(package, root).items()
        for name in names
        if name.startswith(forbidden)
    )


def test_the_core_imports_no_service_and_no_tool() -> None:
    assert offenders("denorm", ("services", "loadtest", "bench", "tests")) == []


def test_the_services_do_not_import_each_other() -> None:
    for service in ("api", "refresher", "reconciler"):
        others = tuple(f"services.{s}" for s in ("api", "refresher", "reconciler") if s != service)
        assert offenders(f"services/{service}", (*others, "loadtest", "bench", "tests")) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    (tmp_path / "denorm").mkdir()
    (tmp_path / "denorm" / "probe.py").write_text("import os\nfrom services.api import app\n")
    assert offenders("denorm", ("services",), tmp_path) == ["denorm/probe.py imports services.api"]


# --- the graph of imports: no cycle, and a core of what the services share --------------------

SERVICES = {"services.api": "api", "services.refresher": "refresher", "services.reconciler": "reconciler"}


def module_name(path: Path, root: Path) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph(
    root: Path = REPO, packages: tuple[str, ...] = ("denorm", "services", "loadtest", "bench")
) -> dict[str, set[str]]:
    """Every module of these packages, and the modules of theirs it imports: at the top, in a
    function, or for type checking only, all alike."""
    paths = {module_name(p, root): p for package in packages for p in (root / package).rglob("*.py")
             if p.name != "__init__.py"}  # fmt: skip
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle, once, as the modules on it."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :]
            if not any(set(cycle) == set(c) for c in found):
                found.append(cycle)
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def core_users(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each module of the core (denorm/), and which of the services and the CLI use it: import it,
    or import a core module that does."""
    users: dict[str, set[str]] = {m: set() for m in graph if m.startswith("denorm")}
    starts = {m: s for m in graph for prefix, s in SERVICES.items() if m.startswith(prefix)} | {"denorm.cli": "cli"}
    for start, service in starts.items():
        stack, seen = [start], set()
        while stack:
            for target in graph.get(stack.pop(), ()):
                if target.startswith("denorm") and target not in seen:
                    seen.add(target)
                    users[target].add(service)
                    stack.append(target)
    return users


def misplaced(graph: dict[str, set[str]]) -> list[str]:
    """Core modules that are not shared: used by one service only (they belong to it), or by none
    (they belong to the tests, the benches or the load test). The CLI lives in the core, and so
    may what its own commands alone use (migrate, seed, deploy)."""
    shared = {m: len(u) >= 2 or u == {"cli"} for m, u in core_users(graph).items()}
    return sorted(f"{m} is used by {sorted(core_users(graph)[m]) or 'no service'}"
                  for m, ok in shared.items() if m != "denorm.cli" and not ok)  # fmt: skip


def test_no_module_imports_itself_round_about() -> None:
    assert cycles(import_graph()) == []


def test_the_core_holds_only_what_the_services_share() -> None:
    assert misplaced(import_graph()) == []


def test_the_benches_and_the_load_test_import_no_test() -> None:
    assert offenders("bench", ("tests",)) == [] and offenders("loadtest", ("tests", "bench", "services")) == []


def test_the_checks_see_a_cycle_and_a_core_module_of_one_service(tmp_path: Path) -> None:
    for package in ("denorm", "services/api", "services/refresher", "loadtest", "bench"):
        (tmp_path / package).mkdir(parents=True)
    (tmp_path / "denorm" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import denorm.b\n"
    )
    (tmp_path / "denorm" / "b.py").write_text("def f() -> None:\n    import denorm.a\n")
    (tmp_path / "denorm" / "shared.py").write_text("")
    (tmp_path / "services" / "api" / "app.py").write_text("import denorm.a\nimport denorm.shared\n")
    (tmp_path / "services" / "refresher" / "main.py").write_text("from denorm import shared\nimport denorm.shared\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["denorm.a", "denorm.b"]]
    assert misplaced(graph) == ["denorm.a is used by ['api']", "denorm.b is used by ['api']"]
