"""The app's layout holds: no import circle, imports inside functions only where they must be,
modules of a size one can read, the durable contract's names registered, and an import-linter
contract that does fail on a wrong-way import (bin/test runs the contract itself)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from cleanups import contract
from cleanups.durable.registration import ACTIVITIES, ORCHESTRATORS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cleanups"
MOST_LINES = 400

# Imports inside a function, and why each must be there. Anything else is an import circle
# hidden in a function, or a cost paid at the wrong time: move it to the top of its module.
ALLOWED_FUNCTION_IMPORTS = {
    # Django: an AppConfig imports what registers itself (checks, tasks) once apps are ready.
    ("cleanups/apps.py", "ready"): {"*"},
    # Optional dependencies: OpenTelemetry is installed only with the `tracing` extra.
    ("cleanups/tracing.py", "*"): {"opentelemetry"},
    # django.contrib.sessions is optional in a host project; only this task needs it.
    ("cleanups/cleanup_tasks/rows.py", "expired_sessions"): {"django.contrib.sessions.models"},
    # azure-identity is imported only by a worker or client that talks to Azure.
    ("cleanups/engine/connection.py", "_credential"): {"azure.identity"},
}


def _modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_among_the_apps_modules():
    # grimp reads every import statement, those inside functions included.
    graph = grimp.build_graph("cleanups", exclude_type_checking_imports=True)
    edges = {
        module: {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported.startswith("cleanups")
        }
        for module in graph.modules
        if ".migrations" not in module
    }
    # A package imports its own submodules (a facade); only circles between modules count.
    for module, imported in edges.items():
        imported -= {m for m in imported if m.startswith(module + ".") or module == m}
    assert _strongly_connected(edges) == []


def test_the_cycle_finder_finds_a_circle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]


def _function_imports(path: Path) -> list[tuple[str, str]]:
    """(function, imported module) for every import inside a function of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(node.name, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((node.name, "." * inner.level + (inner.module or "")))
    return found


def _allowed(relative: str, function: str, module: str) -> bool:
    for key in ((relative, function), (relative, "*")):
        for prefix in ALLOWED_FUNCTION_IMPORTS.get(key, ()):
            if prefix == "*" or module == prefix or module.startswith(prefix + "."):
                return True
    return False


def test_imports_inside_functions_only_where_they_must_be():
    hidden = [
        f"{path.relative_to(ROOT)}: {function}() imports {module}"
        for path in _modules()
        for function, module in _function_imports(path)
        if not _allowed(str(path.relative_to(ROOT)), function, module)
    ]
    assert hidden == []


def test_every_module_is_at_most_400_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for path in _modules()
        if (count := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}


def test_the_workers_registrations_are_the_contracts_names():
    assert [f.__name__ for f in ORCHESTRATORS] == [contract.ORCHESTRATION_NAME]
    assert {f.__name__ for f in ACTIVITIES} == {
        contract.RUN_CLEANUP_ACTIVITY,
        contract.TIME_OUT_RUN_ACTIVITY,
        contract.SAMPLE_CLEANUP_ACTIVITY,
    }


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def copy_of_the_app(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "cleanups", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_contract_holds_and_breaks_on_a_wrong_way_import(copy_of_the_app: Path):
    kept = _lint_imports(copy_of_the_app)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # A model that calls a service: the very import that closed the old circle.
    model = copy_of_the_app / "cleanups" / "models" / "runs.py"
    model.write_text(model.read_text() + "\nfrom cleanups import control  # noqa\n")
    broken = _lint_imports(copy_of_the_app)
    assert broken.returncode != 0
    assert "cleanups.models.runs -> cleanups.control" in broken.stdout
