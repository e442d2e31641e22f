"""The agreed layering: imports flow one way, with no cycle and no private name across modules.

Every module under ``src/modeconn_unlearn`` is parsed (imports inside functions and
``TYPE_CHECKING`` blocks included) and each import of another module of the package is
checked against :data:`LAYERS`. A module may import from lower layers, or from its own
layer when the imports stay acyclic. A module that is not in the table fails the test:
place new modules there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "modeconn_unlearn"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Layer of each top-level module or subpackage (its submodules share its layer).
LAYERS: dict[str, int] = {
    "errors": 0,
    "optional": 0,
    "checks": 0,
    "checkpoint": 1,
    "cloning": 1,
    "wrappers": 1,
    "modes": 1,
    "progress": 1,
    "data": 2,
    "tasks": 2,
    "batchnorm": 2,
    "datasets": 2,
    "zoo": 2,
    "curve": 3,
    "ensemble": 3,
    "losses": 3,
    "masks": 3,
    "task_vector": 3,
    "training": 4,
    "evaluation": 5,
    "mia": 6,
    "connectivity": 6,
    "selection": 6,
    "plotting": 7,
    "connectivity_plots": 7,  # re-exports modeconn_unlearn.plotting under its old name
    "lm": 7,
    "recipe": 7,
}
#: The package's own ``__init__`` is the public face above every layer.
TOP = 100

#: Upward imports that are allowed, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    (
        f"{PACKAGE}.evaluation.report",
        f"{PACKAGE}.plotting",
    ): "PathReport.plot(), a convenience accessor (like DataFrame.plot) that imports the "
    "optional plotting layer when called",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


MODULES = all_modules()


def layer_of(module: str) -> int | None:
    if module == PACKAGE:
        return TOP
    key = module.split(".")[1]
    return LAYERS.get(key)


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from ... import`` statement."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for each internal import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if target.split(".")[0] != PACKAGE:
                continue
            names: list[str] = []
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:  # "from . import losses": the submodule itself
                    found.append((submodule, [], node.lineno))
                else:
                    names.append(alias.name)
            if names:
                found.append((target, names, node.lineno))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYERS of tests/test_layering.py: {unplaced}"


def test_imports_never_go_up_a_layer() -> None:
    upward = []
    for module, imports in GRAPH.items():
        own = layer_of(module)
        for target, _, line in imports:
            if target not in MODULES:
                upward.append(f"{module}:{line} imports {target}, which does not exist")
                continue
            theirs = layer_of(target)
            if own is None or theirs is None or theirs <= own:
                continue
            allowed = any(
                module == a and (target == b or target.startswith(b + "."))
                for a, b in ALLOWED_UPWARD
            )
            if not allowed:
                upward.append(f"{module}:{line} (layer {own}) imports {target} (layer {theirs})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` as a list of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(edges[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    return None


def test_there_is_no_import_cycle() -> None:
    edges = {
        module: {
            target
            for target, _, _ in imports
            if target in MODULES
            and target != module
            and (module, target) not in ALLOWED_UPWARD
            and not any(module == a and target.startswith(b + ".") for a, b in ALLOWED_UPWARD)
        }
        for module, imports in GRAPH.items()
    }
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in GRAPH.items()
        for target, names, line in imports
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


# --------------------------------------------------------------------------- the checker itself
def test_find_cycle_sees_a_cycle_and_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    ("importer", "level", "module", "expected"),
    [
        (f"{PACKAGE}.evaluation.paths", 1, "outputs", f"{PACKAGE}.evaluation.outputs"),
        (f"{PACKAGE}.evaluation.paths", 2, "curve_model", f"{PACKAGE}.curve_model"),
        (f"{PACKAGE}.evaluation", 1, "scores", f"{PACKAGE}.evaluation.scores"),
        (PACKAGE, 1, "errors", f"{PACKAGE}.errors"),
    ],
)
def test_relative_imports_resolve(importer: str, level: int, module: str, expected: str) -> None:
    node = ast.ImportFrom(module=module, names=[ast.alias(name="x")], level=level)
    assert resolve(importer, node) == expected


def test_an_upward_import_would_be_caught() -> None:
    assert layer_of(f"{PACKAGE}.errors") == 0 and layer_of(f"{PACKAGE}.plotting.path") == 7
    assert layer_of(f"{PACKAGE}.not_placed") is None


def test_the_architecture_page_lists_every_layered_module() -> None:
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [name for name in LAYERS if f"`{name}`" not in page and f"`{name}/" not in page]
    assert not missing, f"docs/architecture.md does not list {missing}; add a row per module"
