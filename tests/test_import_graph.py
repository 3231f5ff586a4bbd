"""No import circles among sdlab's modules (issue 31), counting every import, also the ones
inside functions: a circle held apart only by a function-level import breaks as soon as someone
moves that import to the top of its file."""

from __future__ import annotations

import ast

from conftest import REPO

SRC = REPO / "src"


def modules() -> dict[str, object]:
    """Module name -> file, packages by their `__init__`."""
    found = {}
    for file in SRC.rglob("*.py"):
        name = ".".join(file.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = file
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the sdlab modules it names in any import. `from sdlab.a import b` points at
    `sdlab.a.b` when that is a module, else at `sdlab.a`; a package's own `__init__` running on
    the way to a child is not an edge (a registry package importing its children is no circle)."""
    files = modules()
    graph = {name: set() for name in files}
    for name, file in files.items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target.startswith("sdlab") and target != name:
                    graph[name].add(target)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as its path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)):
            return circle
    return None


def test_find_circle_finds_one_through_a_function_level_import():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_modules_import_each_other_without_circles():
    graph = import_graph()
    assert len(graph) > 30 and "sdlab.drawing_rules" in graph["sdlab.serve"]  # the graph is the real one
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)
