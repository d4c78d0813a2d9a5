"""The shape of the code: no import circles, no import against the layer order.

Every module's imports are read with `ast` (function-level ones too, for the
layers): a layer imports only itself and the layers below it. The order is
written here and in the README's Layout section, and the test holds them equal.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The layers, lowest first: each imports only itself and those before it. A module belongs
#: to the longest layer its name starts with: the `tower` command (tower.cli) sits on top,
#: as it starts the web server.
LAYERS = ["pilots", "sites", "transfer", "catalog", "tower", "web", "tower.cli"]
#: What the pilot may import besides the standard library and itself: it runs at sites
#: with nothing of gridtower installed.
PILOT_THIRD_PARTY = {"requests", "pika", "yaml"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for layer in LAYERS if "." not in layer
           for path in (ROOT / layer).rglob("*.py")}


def layer_of(name: str) -> int:
    """The rank of the layer module `name` belongs to, or -1 outside the layers."""
    ranks = [rank for rank, layer in enumerate(LAYERS)
             if name == layer or name.startswith(layer + ".")]
    return max(ranks, key=lambda rank: len(LAYERS[rank]), default=-1)


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(module imported, line, whether at module level) for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        top = id(node) not in in_function
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from package import module` imports the module
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno, top


def test_layer_order_is_the_readme_s() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Layers, lowest first: " + " < ".join(f"`{layer}`" for layer in LAYERS) in readme


def test_no_import_against_the_layer_order() -> None:
    wrong = sorted({f"{path.relative_to(ROOT)}:{line}: {name} imports {imported}"
                    for name, path in MODULES.items() for imported, line, _ in imports(path)
                    if layer_of(imported) > layer_of(name)})
    assert not wrong, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + \
        "\n".join(wrong)


def test_the_pilot_imports_only_the_standard_library_requests_pika_and_yaml() -> None:
    allowed = set(sys.stdlib_module_names) | PILOT_THIRD_PARTY | {"pilots", "__future__"}
    wrong = [f"{path.relative_to(ROOT)}:{line}: {imported}"
             for name, path in MODULES.items() if name.split(".")[0] == "pilots"
             for imported, line, _ in imports(path) if imported.split(".")[0] not in allowed]
    assert not wrong, "\n".join(wrong)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or with a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circles_are_found() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    """Between modules, by their module-level imports (`if TYPE_CHECKING:` ones too). The edge
    is to the module named: a package whose `__init__` imports its own modules, which import
    each other, is no circle (Python runs the package first, whoever is imported)."""
    graph = {name: {imported for imported, _, top in imports(path)
                    if top and imported in MODULES and imported != name}
             for name, path in MODULES.items()}
    assert not circles(graph), "import circles:\n" + "\n".join(
        " -> ".join(circle) for circle in circles(graph))
