"""The layout a maintainer relies on: imports go one way, no import cycles, no oversized files.

The import graph is read from the sources with ``ast``, so it includes imports made inside
functions: such an import hides a cycle from Python's import machinery but not from a reader.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"SCPMNoduleLib": ROOT / "SCPMNoduleLib", "Training": ROOT / "Training",
            "SCPMNodule": ROOT / "SCPMNodule"}
MAX_LINES = 600


@functools.cache
def _modules() -> dict[str, Path]:
    """Every Python module of the three packages, by dotted name (``SCPMNodule.py`` is ``SCPMNodule``)."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "Testing" in parts or "Screenshots" in parts:
                continue
            if parts == ["SCPMNodule"]:        # the Slicer module's script is a top-level module
                modules["SCPMNodule"] = path
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "SCPMNodule":        # SCPMNodule/SCPMNoduleMRML is a top-level package in Slicer
                modules[".".join(parts)] = path
            else:
                modules[".".join([package, *parts])] = path
    return modules


def _imported(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The known modules an import statement names (the most specific one that exists)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = ".".join(part for part in (package, node.module) if part)
        else:
            base = node.module or ""
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (module or function level)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(name, path, node, known)
        edges.discard(name)
        # Importing a package's own submodule from its __init__ is how packages are built, not a cycle.
        graph[name] = {edge for edge in edges if not (path.name == "__init__.py" and edge.startswith(name + "."))
                       and not (name.startswith(edge + ".") and modules[edge].name == "__init__.py")}
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; every component of two or more modules is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycles = [c for c in strongly_connected_components(graph) if len(c) > 1]
    assert cycles == [["a", "b", "c"]]


def test_no_import_cycles_in_the_library_training_or_the_slicer_module():
    cycles = [c for c in strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == [], f"import cycles (module- or function-level): {cycles}"


def test_imports_go_one_way():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("SCPMNoduleLib"):
            assert not {e for e in edges if not e.startswith("SCPMNoduleLib")}, name
        if name.startswith("Training"):
            assert not {e for e in edges if e.startswith(("SCPMNodule.", "SCPMNoduleMRML")) or e == "SCPMNodule"}, name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_grows_past_a_few_hundred_lines(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by idea"


def _top_level_definitions(tree: ast.Module) -> set[str]:
    """Names a module's top level binds: functions, classes, assignments and imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):  # plain and tuple targets (RIGHT, LEFT = 1, 2)
            names |= {n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).partition(".")[0] for alias in node.names}
    return names


def _declared_all(tree: ast.Module) -> list[str] | None:
    """The literal ``__all__`` of a module, or None."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            return ast.literal_eval(value)
    return None


@pytest.mark.parametrize("name", sorted(n for n in _modules() if n.startswith(("SCPMNoduleLib", "Training"))))
def test_every_public_function_and_class_is_in_all(name):
    tree = ast.parse(_modules()[name].read_text(encoding="utf-8"))
    exported = _declared_all(tree)
    assert exported is not None, f"{name} has no __all__"
    public = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              and not node.name.startswith("_")}
    assert public <= set(exported), f"{name}: public but not in __all__: {sorted(public - set(exported))}"
    assert set(exported) <= _top_level_definitions(tree), f"{name}: __all__ names what it does not define"
    assert len(exported) == len(set(exported)), f"{name}: __all__ repeats a name"
