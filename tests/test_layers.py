"""The package's layering, read from the source: no import circles, and no module imports a higher layer.

Imports inside functions count (they run too); imports under ``if TYPE_CHECKING`` do not. Importing a
module imports the packages above it, whose ``__init__`` runs first.
"""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    # lowest first; a module belongs to the first entry that is its name or a package above it
    ("dreamfusion.errors", "dreamfusion.typed_config", "dreamfusion.files", "dreamfusion.memory", "dreamfusion.runlock",
     "dreamfusion.schedules", "dreamfusion.diffusion", "dreamfusion.collapse", "dreamfusion.transfer",
     "dreamfusion.voxels", "dreamfusion.hash_kernels", "dreamfusion.hash_triton"),
    ("dreamfusion.cameras", "dreamfusion.field", "dreamfusion.shading", "dreamfusion.sds", "dreamfusion.distributed"),
    ("dreamfusion.geometry", "dreamfusion.renderer", "dreamfusion.regularizers", "dreamfusion.scene", "dreamfusion.sdf_field",
     "dreamfusion.procedural"),
    ("dreamfusion.priors", "dreamfusion.embedded", "dreamfusion.guidance", "dreamfusion.export", "dreamfusion.render_graph"),
    ("dreamfusion.trainer", "dreamfusion.refine"),
    ("dreamfusion.config",),
    ("dreamfusion.run",),
    ("dreamfusion.evaluate", "dreamfusion.evaluate_clip", "dreamfusion.viewer", "dreamfusion.batch"),
    ("dreamfusion.cli", "dreamfusion.__main__"),
]  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCE.rglob("*.py")}


def _with_packages(name: str) -> set[str]:
    """``name`` and every package above it (importing a module runs their ``__init__`` first)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(MODULES)


def _imports(name: str, top_level_only: bool) -> set[str]:
    """The package modules ``name`` imports when it runs (at import time only, with ``top_level_only``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function = True
        if not (top_level_only and in_function):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module or "") if part)
                submodules = {f"{module}.{alias.name}" for alias in node.names} & set(MODULES)
                found.update(submodules or {module})
                if not submodules or node.module:
                    found.add(module)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(path.read_text()), False)
    modules = set().union(*(_with_packages(m) for m in found if m.startswith("dreamfusion")))
    return modules - _with_packages(name)


def _layer(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == entry or name.startswith(entry + ".") for entry in layer):
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py; add it")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        if name != "dreamfusion":
            _layer(name)


@pytest.mark.parametrize("top_level_only", [True, False], ids=["at-import", "with-function-imports"])
def test_no_import_circles(top_level_only: bool) -> None:
    graph = {name: _imports(name, top_level_only) for name in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{name} -> {target}"
        for name in MODULES
        if name != "dreamfusion"
        for target in _imports(name, top_level_only=False)
        if target != "dreamfusion" and _layer(target) > _layer(name)
    ]
    assert not upward, "imports of a higher layer: " + "; ".join(sorted(upward))


def test_the_reader_sees_lazy_and_type_only_imports_as_they_run() -> None:
    """The checks above are only as good as the import reader: pin it on known modules."""
    assert "dreamfusion.config" not in _imports("dreamfusion.trainer", top_level_only=False)  # type-only
    assert "dreamfusion.run" in _imports("dreamfusion.evaluate", top_level_only=False)  # inside a function
    assert "dreamfusion.run" not in _imports("dreamfusion.evaluate", top_level_only=True)
    assert {"dreamfusion.priors", "dreamfusion.priors.base"} <= _imports("dreamfusion.guidance", top_level_only=True)
