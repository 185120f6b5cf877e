"""The package's import graph: no cycles (counting imports inside functions), no private reach-ins."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pytorch_pruner"

#: Known cycles still to be broken, each with who owns it. Empty is the goal; never add silently.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()  # speed/slim <-> speed/bert: broken by the speed/ rework


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs (module level or inside a function), not those under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(edges between the package's modules, private names imported across modules)."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _runtime_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(module, is_package, node)
                targets = [source]
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.append(f"{source}.{alias.name}")  # `from . import submodule`
                    elif alias.name.startswith("_") and not alias.name.startswith("__") and source in modules:
                        private.append((module, node.lineno, f"{source}.{alias.name}"))
            for target in targets:
                # importing a.b.c runs a and a.b first, unless they are the importer's own packages
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in modules and name != module and not module.startswith(name + "."):
                        edges[module].add(name)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if (v, w) in KNOWN_CYCLE_EDGES:
                continue
            if w not in index:
                connect(w)
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
                result.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return result


def test_the_package_has_no_import_cycle() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == [], "an import cycle (imports inside functions count too)"
    stale = [edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in edges.get(edge[0], set())]
    assert not stale, f"these known cycle edges are gone: remove them from KNOWN_CYCLE_EDGES: {stale}"


def test_no_module_imports_another_modules_private_names() -> None:
    _, private = _graph()
    assert private == [], "give the name a public home instead of importing it as _private"


def test_the_checks_see_what_they_look_for() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from .x import y\nif TYPE_CHECKING:\n    from .z import w\n")
    assert [n.module for n in _runtime_imports(tree)] == ["x"]
    node = ast.parse("from ..config import load_config").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _resolve("pytorch_pruner.speed.slim", False, node) == "pytorch_pruner.config"
    edges, _ = _graph()
    assert "pytorch_pruner.config" in edges["pytorch_pruner.pruning"]
