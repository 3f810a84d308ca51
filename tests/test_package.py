"""The package's shape: no import cycle (imports inside functions included), `import *` of every package, and
the names the README's Python example uses."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import bdprune

ROOT = Path(bdprune.__file__).parent


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["bdprune", *path.relative_to(ROOT).with_suffix("").parts]
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> modules whose import it runs. Importing a.b.c runs a and a.b first, so those count too,
    except the packages the importer itself sits in (they are already being imported)."""
    mods = modules()
    graph = {}
    for name, (path, package) in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, inside functions too
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level else []
                module = ".".join(base + [node.module] if node.module else base) if node.level else node.module
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            for target in targets:
                parts = (target or "").split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    if ancestor in mods and name != ancestor and not name.startswith(ancestor + "."):
                        edges.add(ancestor)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "bdprune.attacks" in graph["bdprune.runs"], "the graph sees imports"
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle_through_an_import_inside_a_function():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_file_io_is_a_leaf():
    assert import_graph()["bdprune.files"] <= {"bdprune.errors"}


PACKAGES = [m.name for m in pkgutil.walk_packages([str(ROOT)], "bdprune.") if m.ispkg] + ["bdprune"]


@pytest.mark.parametrize("package", PACKAGES)
def test_import_star_works(package):
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    exported = getattr(importlib.import_module(package), "__all__", [])
    assert all(name in namespace for name in exported)


def test_the_readme_python_example_names_exist():
    from bdprune.checkpoint import load_checkpoint  # noqa: F401
    from bdprune.defenses import BNP, DefenseData  # noqa: F401
    from bdprune.metrics import attack_success_rate, clean_accuracy  # noqa: F401
    from bdprune.repair import defender_data, load_suspect, repair  # noqa: F401
