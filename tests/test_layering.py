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
