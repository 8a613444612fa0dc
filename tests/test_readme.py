"""The README's commands, as written: every one names what exists (make targets, files, params keys and
values, stage and module options), and the block a new user runs after `make run` works in order on a
reproduced copy of the project."""

from __future__ import annotations

import importlib
import re
import runpy
import shlex
import sys

from conftest import REPO

README = REPO / "README.md"


def commands(text: str) -> list[list[str]]:
    """Every command of the README's ```bash blocks, split into words (comments dropped, continuation lines
    joined, `a && b` as two commands), in the order written."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(words[:cut])
                words = words[cut + 1 :]
    return [c for c in out if c]


def overrides(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w in ("-S", "--set-param")]


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, without the virtual environment's set-up around them."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(re.sub(r"\$\([A-Z_]+\)", "", line.strip().replace("$(ACTIVATE) && ", "")).strip())
    return recipe


def test_every_readme_command_names_what_exists():
    from genlab.reporting.replicates import check_overrides

    seen = {"make": 0, "dvc exp run": 0, "stage": 0, "module": 0}
    targets = set(re.findall(r"^([a-z][\w-]*)\s*:", (REPO / "Makefile").read_text(), re.M))
    for words in commands(README.read_text()):
        where = " ".join(words)
        head = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]  # VAR=value prefixes
        if head[:1] == ["make"]:
            assert set(head[1:]) <= targets, f"README: `{where}`: no such Makefile target"
            seen["make"] += 1
        elif head[:3] == ["dvc", "exp", "run"]:
            files = [w for w in head if w.endswith("dvc.yaml")]
            assert all((REPO / f).is_file() for f in files), f"README: `{where}`: no such pipeline file"
            check_overrides(REPO, overrides(head))  # unknown keys and bad values raise ConfigError
            seen["dvc exp run"] += 1
        elif head[:2] == ["python", "-m"] and head[2].startswith("genlab."):
            module = importlib.import_module(head[2])
            if hasattr(module, "parse") and "<" not in where:
                module.parse(head[3:])
            seen["module"] += 1
        elif head[:1] == ["python"] and head[1].startswith("stages/"):
            stage = runpy.run_path(str(REPO / head[1]), run_name="readme_check")
            stage["parse"](head[2:])  # argparse exits 2 on an unknown option
            seen["stage"] += 1
        elif head[:2] == ["dvc", "repro"]:
            assert all((REPO / f).is_file() for f in head[2:] if f.endswith("dvc.yaml")), where
    assert seen["make"] and seen["dvc exp run"] and seen["stage"], f"README commands not found as expected: {seen}"


def after_make_run() -> list[list[str]]:
    """The README's block of what to run after `make run` (the one that starts with `make ui`)."""
    block = next(b for b in commands(README.read_text()) if b[:2] == ["make", "ui"])
    found = commands(README.read_text())
    start = found.index(block)
    end = next(i for i in range(start + 1, len(found)) if found[i][:3] == ["dvc", "exp", "run"])
    return found[start:end]


def test_the_block_after_make_run_works_in_order(reproduced):
    """On a reproduced copy plus a second variant (the groups need two): each line exits 0 and writes what
    it says. `make X` runs X's recipe (the copy has no virtual environment of its own); `make ui` starts
    a server and is tested in test_tracking."""
    reproduced.run("dvc", "exp", "run", "dvc.yaml", "-S", "vae.beta=0.5", timeout=600)
    ran = []
    for words in after_make_run():
        if words[:2] == ["make", "ui"]:
            continue
        lines = [shlex.split(r) for r in make_recipe(words[1])] if words[0] == "make" else [words]
        for line in lines:
            line = [sys.executable if w == "python" else w for w in line]
            out = reproduced.run(*line, timeout=300).stdout
            ran.append((" ".join(words), out))
    said = dict(ran)
    assert [r[0] for r in ran] == [" ".join(w) for w in after_make_run() if w[:2] != ["make", "ui"]]
    assert "vae.beta" in said["make show"] and "test.elbo" in said["make show"]
    assert "vae.beta" in said["dvc exp show --only-changed"]
    assert "2 run(s)" in said["python stages/report.py --dataset digits --family vae"]
    assert "(n = 1 + 1)" in said["python stages/report.py --group --baseline vae.beta=1.0"]  # one seed a group
    assert "runs.html" in said["python stages/report.py --group --html"]
    assert (reproduced.root / "reports/runs.html").is_file()
