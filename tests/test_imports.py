"""The package's imports point one way: no module of mbde_jax reaches itself again through what it imports.

The graph is read statically (ast) from every import anywhere in a module: at the top, inside functions, under
`if __name__ == "__main__":`, so a lazy import or a command's entry cannot hide a circle. An edge goes to the
module an import names (`from mbde_jax import cli` names mbde_jax.cli, `from mbde_jax.runs import Run` names
mbde_jax.runs); the parent packages a dotted import also runs are left out, since an import inside their functions
does not run then.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "mbde_jax"


def module_files(root: pathlib.Path = ROOT, package: str = PACKAGE) -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (a package by its own name, from its __init__.py)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The package's modules that module `name` (at `path`) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here) - 1:
                    raise ValueError(f"{path}: relative import beyond the package: line {node.lineno}")
                base = here[:len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {module for module in found if module in modules and module != name}


def import_graph(root: pathlib.Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group of modules that reach one another: [a, b, ..., a], the shortest path back to the
    group's first module (alphabetically)."""
    return [_circle_through(min(group), group, graph) for group in circular_groups(graph)]


def circular_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm), by their first module."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=min)


def _circle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth first)."""
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in no circle of {sorted(group)}")


def test_the_package_has_no_import_circle():
    graph = import_graph()
    found = [f"{' -> '.join(_circle_through(min(group), group, graph))} (the modules that reach one another: "
             f"{', '.join(sorted(group))})" for group in circular_groups(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_module_imports_the_command_list_and_no_flags_module_its_tool():
    """mbde_jax.cli names every tool by name; a tool imports its flags module, never the other way round."""
    graph = import_graph()
    reaching_cli = {name for name, targets in graph.items() if "mbde_jax.cli" in targets}
    assert not reaching_cli
    assert graph["mbde_jax.cli"] == set()  # it imports each tool when its command runs, by the name it lists
    for tool in ("sweep", "report", "evaluate", "export", "summary", "benchmark"):
        assert f"mbde_jax.{tool}_flags" in graph[f"mbde_jax.{tool}"], tool
        assert f"mbde_jax.{tool}" not in graph[f"mbde_jax.{tool}_flags"], tool


def _write_package(tmp_path: pathlib.Path, sources: dict[str, str]) -> pathlib.Path:
    for relative, text in sources.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("sources, circle", [
    # a lazy import inside a function closes the circle as much as one at the top
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": "def f():\n    import pkg.a\n"},
     ["pkg.a", "pkg.b", "pkg.a"]),
    # a `__main__` block's import, a relative import and `from package import module`
    ({"pkg/__init__.py": "", "pkg/tool.py": "if __name__ == '__main__':\n    from . import cli\n",
      "pkg/cli.py": "from pkg.sub import helper\n", "pkg/sub/__init__.py": "",
      "pkg/sub/helper.py": "def g():\n    from ..tool import x\n"},
     ["pkg.cli", "pkg.sub.helper", "pkg.tool", "pkg.cli"]),
])
def test_a_circle_is_found_and_named(tmp_path, sources, circle):
    root = _write_package(tmp_path, sources)
    assert cycles(import_graph(root, "pkg")) == [circle]


def test_imports_that_point_one_way_are_no_circle(tmp_path):
    root = _write_package(tmp_path, {
        "pkg/__init__.py": "", "pkg/low.py": "import os\n", "pkg/mid.py": "from pkg.low import thing\n",
        "pkg/top.py": "from pkg import mid, low\ndef f():\n    from . import mid\n"})
    graph = import_graph(root, "pkg")
    assert graph["pkg.top"] == {"pkg.mid", "pkg.low"} and graph["pkg.mid"] == {"pkg.low"}
    assert cycles(graph) == []
