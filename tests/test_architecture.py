"""The layout keeps its architecture: every import in src/genlab (module-level, function-local, under
TYPE_CHECKING) goes to the same layer or a lower one, and no group of modules imports itself in a cycle.
docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "genlab"

# Bottom to top: a module may import its own layer and the ones below. Written down once, here.
LAYERS = (
    ("core",),  # errors, files, checkpoints, device and seeds, progress, machine, paths, params keys, figures
    ("data", "processes", "quality"),  # datasets; generative processes; metrics on tensors
    ("models",),  # the families (each its params section + networks) and their registry
    ("config",),  # params.yaml read as DVC reads it, the shared sections, Config from the registries
    ("tracking",),  # the MLflow store, the model flavour, the team server
    ("training",),  # the one loop, distributed workers, sources, resume
    ("evaluation",),  # model files, upstream models, the classifier's training, scoring, latent figures
    ("reporting",),  # comparing finished runs, the summary, replicates
    ("pipeline",),  # what the stage scripts share, make show, the plots template, the CI rerun
)


def _modules() -> dict[str, Path]:
    mods = {}
    for file in SRC.rglob("*.py"):
        parts = list(file.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = file
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The genlab module an import of `name` loads (`name` itself, or the module holding attribute `name`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every genlab module `module` imports, anywhere in its body."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("genlab") else None
            if target and target != module:
                found.add(target)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # genlab/__init__: above everything, imports nothing
    for depth, packages in enumerate(LAYERS):
        if parts[1] in packages:
            return depth
    raise AssertionError(f"{module} is in no layer: put it in a package of LAYERS (tests/test_architecture.py)")


def test_the_top_level_holds_packages_only():
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layered packages: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up_a_layer(module):
    upward = sorted(t for t in imports(module) if layer(t) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports higher layers: {upward}"


def test_no_import_cycle():
    graph = {m: imports(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_local_and_type_checking_imports(tmp_path, monkeypatch):
    """The rules above would pass vacuously if `imports` missed the import forms that made the old cycles."""
    (tmp_path / "genlab" / "core").mkdir(parents=True)
    (tmp_path / "genlab" / "pipeline").mkdir()
    (tmp_path / "genlab" / "pipeline" / "stage.py").write_text("")
    (tmp_path / "genlab" / "core" / "errors.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from genlab.pipeline.stage import x\n"
        "def f():\n    from genlab.pipeline import stage\n"
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path / "genlab")
    monkeypatch.setitem(globals(), "MODULES", _modules())
    assert imports("genlab.core.errors") == {"genlab.pipeline.stage"}
    assert layer("genlab.pipeline.stage") > layer("genlab.core.errors")
