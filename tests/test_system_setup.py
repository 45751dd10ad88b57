"""The set-up step of `make run` and `make test` (scripts/system-setup.sh): its list of system tools
(scripts/system-packages.txt) is exactly what the tests, the scripts they run and the Makefile call,
and a missing tool stops a user who is not root at once with the one command that installs it all."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.manifests import REPO

SETUP = REPO / "scripts" / "system-setup.sh"
PACKAGES = REPO / "scripts" / "system-packages.txt"
VENV_BIN = REPO / ".venv" / "bin"
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"

# Commands every Debian system has (coreutils, util-linux, the shell's builtins and keywords), the
# two a developer brings (git, make), and docker, which build-image.sh uses only where an engine
# answers. A command outside these and outside the list fails the test: list it, or say why here.
BASE = {
    "awk", "bash", "cat", "cd", "chroot", "command", "cp", "date", "dirname", "docker", "echo", "env", "exec", "exit",
    "export", "false", "git", "grep", "head", "id", "kill", "local", "ls", "make", "mkdir", "mktemp", "mv",
    "nice", "printf", "read", "rm", "runuser", "sed", "seq", "set", "sh", "sleep", "sort", "tail", "tar",
    "timeout", "touch", "trap", "true", "wait",
}  # fmt: skip


def listed() -> dict[str, tuple[str, str]]:
    """tool -> (package, group), from the one list."""
    rows: dict[str, tuple[str, str]] = {}
    for line in PACKAGES.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tool, package, group = line.split()[:3]
            rows[tool] = (package, group)
    return rows


def is_command(name: str) -> bool:
    """A program on PATH (sbin included) that is not one of the project's own venv."""
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")
    return found is not None and not Path(found).is_relative_to(VENV_BIN) and name not in BASE


# Calls whose first argument is an argv: subprocess's, and the tests' own wrappers of them.
RUNNERS = {"run", "Popen", "check_call", "check_output", "call", "started", "which"}


def _first_word(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.JoinedStr) and node.values:  # f"/usr/lib/postgresql/{v}/bin/pg_basebackup"
        node = node.values[-1]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value and " " not in node.value:
        return node.value.rsplit("/", 1)[-1]
    return None


def _calls_which(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "which" for n in ast.walk(node))


def python_commands(paths: list[Path]) -> set[str]:
    """Programs a Python file runs: the first word of an argv handed to a runner or bound to a name,
    what shutil.which is asked for, and a tuple of names a comprehension checks with which."""
    names: set[str | None] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in RUNNERS:
                    arg = node.args[0]
                    names.add(_first_word(arg.elts[0] if isinstance(arg, ast.List) and arg.elts else arg))
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and node.value.elts:
                names.add(_first_word(node.value.elts[0]))
            elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp) and _calls_which(node):
                for loop in node.generators:
                    if isinstance(loop.iter, ast.Tuple | ast.List):
                        names |= {_first_word(e) for e in loop.iter.elts}
    return {n for n in names if n}


SHELL_SPLIT = re.compile(r"\|\||&&|[|;(){}`]|\$\(|\b(?:then|do|else|if|elif|while|until|exec)\s")
SHELL_WORD = re.compile(r"^\s*!?\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:timeout\s+\d+\s+)?([A-Za-z][\w.+-]*)")


QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def shell_commands(text: str) -> set[str]:
    """The first word of every command of a shell script or a Makefile recipe (comments and quoted
    strings left out)."""
    names: set[str] = set()
    for line in text.splitlines():
        code = QUOTED.sub("''", line.split(" #", 1)[0] if not line.lstrip().startswith("#") else "")
        for part in SHELL_SPLIT.split(code):
            match = SHELL_WORD.match(part or "")
            if match:
                names.add(match.group(1))
    return names


def makefile_recipes() -> str:
    return "\n".join(line[1:] for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("\t"))


def called(python: list[Path], shell: list[Path], extra: str = "") -> set[str]:
    words = python_commands(python)
    for path in shell:
        words |= shell_commands(path.read_text())
    words |= shell_commands(extra)
    return {w for w in words if w in listed() or is_command(w)}


def test_the_list_is_what_the_tests_the_scripts_and_the_makefile_call() -> None:
    tests = [*(REPO / "tests").rglob("*.py"), *(REPO / "loadtest").rglob("*.py"), REPO / "bench" / "faults.py"]
    scripts = sorted((REPO / "scripts").glob("*.sh"))
    found = called(tests, [p for p in scripts if p != SETUP], makefile_recipes())
    test_tools = {tool for tool, (_, group) in listed().items() if group in ("run", "test")}
    python = re.search(r"^PYTHON \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert python, "the Makefile names its Python"
    # The interpreter and its venv module are the Makefile's $(PYTHON), not a literal command.
    assert {t for t in test_tools if t.startswith(python.group(1))} == {python.group(1), f"{python.group(1)}/ensurepip"}
    assert found == test_tools - {python.group(1), f"{python.group(1)}/ensurepip"}


def test_the_bench_tools_are_what_the_benches_call() -> None:
    found = called(list((REPO / "bench").rglob("*.py")), [])
    bench_tools = {tool for tool, (_, group) in listed().items() if group == "bench"}
    assert bench_tools <= found
    assert found - bench_tools <= {tool for tool, (_, group) in listed().items() if group != "bench"}


def test_the_scan_sees_a_new_command(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        'import subprocess\nsubprocess.run(["pgbouncer", "-V"])\ncmd = [f"/usr/bin/{x}/psql"]\n'
        'tags = {"t": ["redis-server"]}\nmissing = [t for t in ("runc", "wrk") if shutil.which(t)]\n'
    )
    assert python_commands([probe]) == {"pgbouncer", "psql", "runc", "wrk"}
    assert shell_commands('x=1 timeout 60 buildah pull "$y" && podman run # redis-cli\nif ! debootstrap') >= {
        "buildah", "podman", "debootstrap"}  # fmt: skip
    assert "redis-cli" not in shell_commands("echo hi  # redis-cli")
    assert "psql" not in shell_commands('echo "install it (psql comes with it)" >&2')


@pytest.fixture
def missing_tool_list() -> Iterator[Path]:
    """The real list plus a tool no machine has, readable by an unprivileged user."""
    directory = Path(tempfile.mkdtemp(prefix="system-packages-"))
    directory.chmod(0o755)
    path = directory / "system-packages.txt"
    path.write_text(PACKAGES.read_text() + "denorm-no-such-tool   denorm-no-such-package   test\n")
    path.chmod(0o644)
    yield path
    shutil.rmtree(directory)


def as_a_user(*args: str) -> list[str]:
    """argv that runs as an unprivileged user: `nobody` when the tests run as root."""
    return ["runuser", "-u", "nobody", "--", *args] if os.geteuid() == 0 else list(args)


def setup(argv: list[str], packages: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEM_PACKAGES": str(packages or PACKAGES)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_missing_tool_stops_a_user_at_once_with_the_one_command_that_installs_it(missing_tool_list: Path) -> None:
    done = setup(as_a_user(str(SETUP), "test"), missing_tool_list)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    missing, _, command = lines[0].partition(": install them with  sudo apt-get install -y --no-install-recommends ")
    assert missing.startswith("missing ") and "denorm-no-such-tool" in missing.split(), lines[0]
    assert "denorm-no-such-package" in command.split() and command.endswith("then run make test again")


def test_check_only_reports_even_as_root(missing_tool_list: Path) -> None:
    done = setup([str(SETUP), "test", "--check"], missing_tool_list)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "denorm-no-such-package" in done.stderr


def test_a_tool_of_another_group_is_not_asked_for(missing_tool_list: Path) -> None:
    """`make run` needs none of the tests' tools."""
    done = setup(as_a_user(str(SETUP), "run"), missing_tool_list)
    assert (done.returncode, done.stderr) == (0, "")


def test_every_tool_the_tests_need_is_here_and_the_step_is_silent() -> None:
    """What `make test` ran before pytest: nothing is missing now, and saying so prints nothing."""
    done = setup([str(SETUP), "test", "--check"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize("target", ["run", "test", "quick"])
def test_the_make_targets_set_up_before_anything_else(target: str) -> None:
    done = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=REPO, capture_output=True,
                          text=True, check=True)  # fmt: skip
    first = done.stdout.splitlines()[0]
    group = "run" if target == "run" else "test"
    assert first == f"scripts/system-setup.sh {group}", done.stdout[:500]
