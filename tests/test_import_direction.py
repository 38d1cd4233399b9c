"""The library's imports point one way, and a method's folder is its own.

docs/architecture.md draws the layers of `compressors/`, bottom first; a module may import
its own layer and the layers below, never above (imports inside functions count too; those
under `if TYPE_CHECKING:` do not, they never run). And outside `compressors/methods/<name>/`,
nothing imports that folder's modules except the registry, which collects each `config.py`'s
`METHOD`: everything else reaches a method through the registry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compressors"

# Bottom first. A module belongs to the first layer with a matching pattern.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations", [
        "compressors.version", "compressors.safe_strings", "compressors.assets",
        "compressors.progress", "compressors.malloc", "compressors.peak_memory",
        "compressors.recipe.step", "compressors.recipe.fields", "compressors.recipe.text",
        "compressors.recipe.protocol", "compressors.recipe.patterns",
        "compressors.recipe.per_layer", "compressors.report.schema",
        "compressors.report.search", "compressors.io.model_files", "compressors.ops*"]),
    ("declarations", [
        "compressors.methods.method", "compressors.methods.*.config", "compressors.methods",
        "compressors.recipe", "compressors.recipe.schema", "compressors.memory",
        "compressors.search.goal"]),
    ("machinery", [
        "compressors.engine*", "compressors.io*", "compressors.report*",
        "compressors.evaluate", "compressors.publish"]),
    ("methods", ["compressors.methods.*"]),
    ("pipeline", ["compressors.pipeline"]),
    ("search", ["compressors.search*"]),
    ("front", ["compressors.cli", "compressors", "compressors.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, (_name, patterns) in enumerate(LAYERS):
        if any(fnmatch(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _target(name: str) -> str | None:
    """The project module an imported name lives in (a package, or one of its modules)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import that runs."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if node.lineno in skipped if hasattr(node, "lineno") else False:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name)
            if target is not None and target != module and target.startswith("compressors"):
                yield target, node.lineno


def _method_folder(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["compressors", "methods"] and (
            PACKAGE / "methods" / parts[2]).is_dir():
        return parts[2]
    return None


def test_every_import_points_down() -> None:
    upward = []
    for module in sorted(MODULES):
        for target, line in imports(module):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module}:{line} ({LAYERS[layer_of(module)][0]}) imports "
                              f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_a_methods_modules_are_its_own() -> None:
    """Only the method's own folder imports its modules; the registry imports its config."""
    reached_in = []
    for module in sorted(MODULES):
        for target, line in imports(module):
            folder = _method_folder(target)
            if folder is None or _method_folder(module) == folder:
                continue
            if module == "compressors.methods" and target == f"compressors.methods.{folder}.config":
                continue
            reached_in.append(f"{module}:{line} imports {target}")
    assert not reached_in, "reach a method through the registry:\n" + "\n".join(reached_in)


def test_the_layers_are_the_documented_ones() -> None:
    """docs/architecture.md's table names the same layers, in the same order."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    positions = [text.find(f"| `{name}` |") for name, _patterns in LAYERS]
    assert all(p >= 0 for p in positions), [n for (n, _), p in zip(LAYERS, positions,
                                                                   strict=True) if p < 0]
    assert positions == sorted(positions)
