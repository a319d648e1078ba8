"""The layers import one way, and nothing imports in a circle.

Bottom to top: model -> sources, mappings, state -> connectors -> delivery -> app. A source
knows an API, a mapping knows fields, a connector knows a wire protocol; only the app knows
all three. Delivery drives connectors through their contract (`connectors.base`) alone.

Every import counts, wherever it is written (lazy imports inside functions too), and so does
a string that names one of our modules (`importlib.import_module("...")`, or a registry that
maps a name to its module): a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("core", "connectors", "mappings")

# (module prefix, layer), the longest prefix wins.
LAYER_OF = (
    ("core.model", "model"),
    ("core.sources", "sources"),
    ("mappings", "mappings"),
    ("core.state", "state"),
    ("connectors", "connectors"),
    ("core.delivery", "delivery"),
    ("core.app", "app"),
    ("core", "app"),  # the package itself: nothing in it but its layers
)
# What each layer may import besides itself: names of layers, or of single modules.
MAY_IMPORT: dict[str, set[str]] = {
    "model": set(),
    "sources": {"model"},
    "mappings": {"model"},
    "state": {"model"},
    "connectors": {"model"},
    "delivery": {"model", "state", "connectors.base"},
    "app": {"model", "sources", "mappings", "state", "connectors", "delivery"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def layer(module: str) -> str:
    for prefix, name in LAYER_OF:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module}: in no layer")


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that `name` (a module, or a name inside one) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every module of ours that `module` imports or names, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value.split(".")[0] in PACKAGES:
            names = [node.value]
        for name in names:
            found = _resolve(name, modules)
            if found is not None and found != module and not module.startswith(found + "."):
                yield found


def graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {module: set(imports_of(module, path, modules)) for module, path in modules.items()}


def _allowed(importer: str, imported: str) -> bool:
    own, other = layer(importer), layer(imported)
    return own == other or other in MAY_IMPORT[own] or imported in MAY_IMPORT[own]


def test_every_import_follows_the_layer_order() -> None:
    wrong = sorted(f"{importer} ({layer(importer)}) imports {imported} ({layer(imported)})"
                   for importer, imported_set in graph().items() for imported in imported_set
                   if not _allowed(importer, imported))
    assert not wrong, "imports against the layer order:\n  " + "\n  ".join(wrong)


def test_no_module_imports_itself_through_others() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_walk_sees_lazy_imports_and_registries(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a module named in a string count."""
    modules = {"core.app.x": tmp_path / "x.py", "mappings.raw": tmp_path / "raw.py", "connectors.file": tmp_path / "f.py"}
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from mappings import raw\n\nREGISTRY = {'file': 'connectors.file'}\n")
    assert set(imports_of("core.app.x", source, modules)) == {"mappings.raw", "connectors.file"}
    assert not _allowed("mappings.raw", "connectors.file") and _allowed("core.delivery", "connectors.base")
