"""dvc.yaml against the code: each stage depends on its params view and on every module it imports,
and its outputs are the paths genlab.core.paths names (the stages write there)."""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genlab.core import paths

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# The two-stage pipeline's own dvc.yaml: its stages run from the repository root (wdir), as the root's do.
TWO_STAGE = yaml.safe_load((REPO / "pipelines/tokens/dvc.yaml").read_text())["stages"]
ALL_STAGES = {**STAGES, **{f"tokens:{name}": stage for name, stage in TWO_STAGE.items()}}

_CLOSURE = """
import importlib, importlib.util, json, sys
target = sys.argv[1]
if target.endswith('.py'):
    spec = importlib.util.spec_from_file_location('stage_under_test', target)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
else:
    importlib.import_module(target)
files = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]
print(json.dumps([f for f in files if '/src/genlab/' in f]))
"""


@functools.cache
def _closure(target: str) -> frozenset[str]:
    """Files of the genlab modules that importing `target` (a module or a script) loads."""
    out = subprocess.run([sys.executable, "-c", _CLOSURE, target], cwd=REPO, capture_output=True, text=True, check=True)
    return frozenset(Path(p).resolve().relative_to(REPO).as_posix() for p in json.loads(out.stdout))


def _direct(script: str) -> set[str]:
    """Files of the genlab modules a script imports by name."""
    files = set()
    for node in ast.walk(ast.parse((REPO / script).read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("genlab"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "genlab" else [node.module]
            for name in names:
                base = REPO / "src" / Path(*name.split("."))
                files.add(
                    (base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).relative_to(REPO).as_posix()
                )
    return files


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(ALL_STAGES))
def test_every_stage_depends_on_the_code_it_imports(name):
    """What a stage imports only through genlab.config.experiment (the family registry) reaches it through its
    params view instead, which the validate stage rewrites whenever src/genlab changes."""
    stage = ALL_STAGES[name]
    assert stage.get("wdir", "../..") == "../.." or name in STAGES
    script = stage["cmd"].split()[1]
    needed = (_closure(script) - _closure("genlab.config.experiment")) | _direct(script)
    missing = sorted(f for f in needed if not _covered(f, stage["deps"]))
    assert not missing, f"stage {name} imports {missing} but dvc.yaml does not list them as deps"


# Stages that read no params: the history stages turn a training record into files.
NO_PARAMS = {name for name, stage in ALL_STAGES.items() if stage["cmd"].startswith("python stages/history.py")}


@pytest.mark.parametrize("name", sorted(set(ALL_STAGES) - {"validate"}))
def test_every_stage_depends_on_its_params_view_not_on_params_yaml(name):
    """The root's stages on validated/<stage>.yaml; the two-stage pipeline's, which name their family, on
    validated/<family>/<stage>.yaml (the tokenize stage, which names none, on validated/tokenize.yaml); a stage
    reading no params on neither."""
    stage = ALL_STAGES[name]
    if name in NO_PARAMS:
        assert not any(d.startswith(("validated", "params")) for d in stage["deps"]) and "params" not in stage
        assert "import genlab.config" not in (REPO / "stages/history.py").read_text()
        return
    if name in STAGES:
        expected = paths.stage_view(name)
    else:
        cmd = stage["cmd"].split()
        family = cmd[cmd.index("--family") + 1] if "--family" in cmd else None
        expected = paths.stage_view(name.split(":")[1].split("_")[0], family)
    assert expected.as_posix() in stage["deps"]
    assert "params" not in stage


def _outs(name: str) -> set[str]:
    entries = STAGES[name].get("outs", []) + STAGES[name].get("metrics", [])
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def test_outputs_are_the_paths_the_code_writes():
    files = paths.MODEL_FILES
    assert _outs("validate") == {paths.VALIDATED_DIR.as_posix()}
    assert _outs("download") == {paths.PREPARED_DIR.as_posix()}
    assert _outs("classifier") == {paths.CLASSIFIER.as_posix(), paths.CLASSIFIER_METRICS.as_posix()}
    assert _outs("perceptual") == {paths.PERCEPTUAL.as_posix(), paths.PERCEPTUAL_METRICS.as_posix()}
    train = {files.model, files.record, files.machine, files.train_metrics}
    assert _outs("train") == {p.as_posix() for p in train}
    assert _outs("history") == {files.history.as_posix(), files.curves.as_posix()}
    # DVC keeps a run cache of a stage only if each uncached output is a metric or a plot (dvc.stage.Stage.run)
    outs = STAGES["train"]["outs"]
    uncached = [e for e in outs if isinstance(e, dict) and not next(iter(e.values())).get("cache", True)]
    assert not uncached, uncached
    assert _outs("evaluate") == {files.eval_metrics.as_posix()}
    assert _outs("sample") == {files.samples.as_posix()}


def test_the_params_reference_is_current_and_lists_every_key_of_params_yaml():
    from genlab.config.experiment import reference_markdown

    current = (REPO / "docs/params.md").read_text()
    assert current == reference_markdown(), "refresh it: python -m genlab.config.experiment > docs/params.md"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(node, prefix=""):
        for k, v in node.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    documented = set(re.findall(r"^\| `([^`]+)`", reference_markdown(), re.M))
    assert documented == set(keys(raw))


def test_bytecode_caches_are_no_part_of_a_code_dependency():
    """A `__pycache__` written by an import must not change the hash of `src/genlab` (dvc.lock would differ on
    every machine whose Python writes bytecode)."""
    dvc = Path(sys.executable).with_name("dvc")
    for path in ("src/genlab/__pycache__/config.cpython-311.pyc", "src/genlab/data/__pycache__/raw.cpython-313.pyc"):
        proc = subprocess.run([dvc, "check-ignore", path], cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{path} is hashed by DVC: {proc.stdout}{proc.stderr}"
    kept = subprocess.run(
        [dvc, "check-ignore", "src/genlab/config/experiment.py"], cwd=REPO, capture_output=True, text=True
    )
    assert kept.returncode == 1  # the sources themselves are still hashed


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "stages").glob("*.py")))
def test_every_stage_imports_genlab_before_torch(script):
    """genlab/__init__ sets GOMP_SPINCOUNT, which libgomp reads once, when torch loads: a stage that imports
    torch first trains 22x slower beside another busy job on 2 cores (bench/contention.py)."""
    import ast

    tops = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.parse((REPO / "stages" / script).read_text()).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [node])
    ]
    roots = [name.split(".")[0] for name in tops if name]
    assert "genlab" in roots and ("torch" not in roots or roots.index("genlab") < roots.index("torch")), roots
