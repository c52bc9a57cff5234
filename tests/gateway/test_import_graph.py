"""The gateway's modules form a stack: their import graph, read from the source with ``ast``,
has no cycle, and no module imports another part of the gateway inside a function (where an
import that closes a loop would hide until it runs).

Every import counts, at the top of a module or not, and importing ``a.b.c`` also runs the
packages ``a.b`` above it. ``python tests/gateway/test_import_graph.py`` prints the graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "services.gateway"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement loads (a module, or a package and its names)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the gateway modules it imports; and every gateway import inside a function."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    in_functions: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nested = {
            id(inner)
            for outer in ast.walk(tree)
            if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(outer)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = {
                parent
                for dotted in _imported(node, name, path.name == "__init__.py")
                for parent in _with_parents(dotted)
                # a submodule importing a sibling passes through its own package, which is
                # already being imported: no layer above it
                if parent in modules and parent != name and not name.startswith(parent + ".")
            }
            graph[name] |= targets
            if targets and id(node) in nested:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                in_functions.append(f"{where} imports {max(targets, key=len)}")
    return graph, in_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
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
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle(graph, set(component)) for component in components]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, inside the component, back to the start
        node = frontier.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    raise AssertionError(f"no cycle through {start}")


def test_the_gateway_imports_form_no_cycle() -> None:
    graph, _ = import_graph()
    assert len(graph) > 20 and "services.gateway.jobs" in graph  # it read the real package
    assert graph["services.gateway.editorial"] >= {"services.gateway.jobs"}
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_gateway_module_is_imported_inside_a_function() -> None:
    _, in_functions = import_graph()
    assert not in_functions, "\n".join(in_functions)


def test_the_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


if __name__ == "__main__":
    graph, in_functions = import_graph()
    short = len(PACKAGE) + 1
    for name in sorted(graph):
        imports = ", ".join(sorted(t[short:] for t in graph[name] if t != PACKAGE))
        if name != PACKAGE:
            sys.stdout.write(f"{name[short:]}: {imports or '-'}\n")
    for cycle in cycles(graph):
        sys.stdout.write("CYCLE: " + " -> ".join(cycle) + "\n")
    for line in in_functions:
        sys.stdout.write("IN A FUNCTION: " + line + "\n")
    sys.exit(1 if cycles(graph) or in_functions else 0)
