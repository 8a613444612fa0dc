"""An experiment trains on the params it was started with, or stops (issue 23.17).

`dvc exp run -S k=v` writes params.yaml into the workspace before it takes DVC's locks, so a second
`dvc exp run -S` started in the same workspace while the first runs rewrites the first's params.yaml
(DVC then refuses the second: "... is busy"). Two checks keep the first from training on them:

- validate, run by `dvc exp run`, compares params.yaml with the one in the experiment's own stash
  commit, which DVC's executor keeps at refs/exps/exec/EXEC_MERGE while the experiment runs, and
  refuses when that commit belongs to another experiment (DVC_EXP_NAME), holds other params, or is
  gone (the other experiment's failed start removes it);
- validate records the text it read (validated/params.json); every stage run by DVC refuses when
  params.yaml no longer holds it, naming the keys that changed: `load_config` checks at the stage's
  start, `errors.exit_on_error` at its end, and train also just before it writes its outputs.

Stages run by hand (no DVC_STAGE) read params.yaml as it is: there is no validate run to agree with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from typing import Any

from genlab.config.params_file import parse_params, read_params_text
from genlab.core import atomic, paths
from genlab.core.errors import ConfigError

RECORD = paths.VALIDATED_DIR / "params.json"
EXEC_MERGE = "refs/exps/exec/EXEC_MERGE"  # DVC's ref to the running experiment's stash commit
_STASH_MESSAGE = re.compile(r"dvc-exp:[0-9a-f]+:[0-9a-f]+:(?P<name>[^:\n]*)")
SIDE_BY_SIDE = (
    "To run variants side by side, queue them (`dvc exp run --queue -S ...`, then `dvc queue start`) or "
    "give each its own copy of the repository (`dvc exp run --temp -S ...`)"
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'train.epochs': 3, ...}: every leaf of a parsed params file under its dotted key."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each dotted key whose value differs (absent on one side: '<none>')."""
    keys = sorted(set(before) | set(after))
    show = lambda d, k: json.dumps(d[k], default=str) if k in d else "<none>"  # noqa: E731
    return [f"{k}: {show(before, k)} -> {show(after, k)}" for k in keys if before.get(k, ...) != after.get(k, ...)]


def _describe_change(old_text: str, new_text: str) -> str:

    try:
        keys = changed_keys(flatten(parse_params(old_text)), flatten(parse_params(new_text)))
    except ConfigError:
        return "its text changed and no longer reads as params"
    return ", ".join(keys) if keys else "its text changed (comments or layout; no value)"


def under_dvc() -> bool:
    return bool(os.environ.get("DVC_STAGE"))


def record(text: str) -> None:
    """validate: what it read, for the later stages to compare with."""
    atomic.write_text(RECORD, json.dumps({"sha256": digest(text), "text": text}) + "\n")


def check_unchanged(text: str) -> None:
    """Under DVC: refuse params.yaml text other than what the validate stage read and checked."""
    if not under_dvc():
        return
    try:
        recorded = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{RECORD} (what the validate stage read) is missing or unreadable: run `dvc repro` (or "
            "`dvc repro validate`) so that params.yaml is checked before this stage uses it"
        ) from None
    if recorded.get("sha256") == digest(text):
        return
    raise ConfigError(
        f"{paths.PARAMS} changed after the validate stage read it: {_describe_change(recorded.get('text', ''), text)}. "
        "This stage stops rather than use params validate has not checked: after an edit, run `dvc repro` "
        "(validate first); if another `dvc exp run -S` in this workspace rewrote it (DVC writes `-S` before it "
        f"refuses a second run), restore the params and rerun. {SIDE_BY_SIDE}"
    )


def _git(*args: str) -> str | None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, encoding="utf-8", check=False)
    return proc.stdout if proc.returncode == 0 else None


def check_experiment(text: str) -> None:
    """validate under `dvc exp run`: params.yaml must be the one the experiment was stashed with."""
    name = os.environ.get("DVC_EXP_NAME")
    if not name or not under_dvc():
        return
    message = _git("log", "-1", "--format=%B", EXEC_MERGE)
    if message is None:
        # DVC's executor holds the ref for the whole run; a second experiment's start and failure removes it
        # (its clean-up), after its stash was applied over this one's params.yaml.
        baseline = _git("show", f"{os.environ.get('DVC_EXP_BASELINE_REV', 'HEAD')}:./{paths.PARAMS.as_posix()}")
        against = f" (against the baseline commit: {_describe_change(baseline, text)})" if baseline else ""
        raise ConfigError(
            f"DVC's record of the running experiment ({EXEC_MERGE}) is gone: another `dvc exp run` in this "
            f"workspace has replaced the params.yaml of '{name}'{against}, which stops rather than train on it. "
            f"Restore params.yaml (`git checkout params.yaml`) and rerun. {SIDE_BY_SIDE}"
        )
    found = _STASH_MESSAGE.search(message)
    if found and found.group("name") != name:
        raise ConfigError(
            f"experiment '{found.group('name')}' was started in this workspace while '{name}' was starting, "
            f"and its `-S` rewrote {paths.PARAMS}: '{name}' stops rather than train on another experiment's "
            f"params. {SIDE_BY_SIDE}"
        )
    stashed = _git("show", f"{EXEC_MERGE}:./{paths.PARAMS.as_posix()}")
    if stashed is not None and stashed != text:
        raise ConfigError(
            f"{paths.PARAMS} is not what experiment '{name}' was started with: "
            f"{_describe_change(stashed, text)}. Another `dvc exp run -S` in this workspace rewrites "
            f"params.yaml before DVC refuses it. {SIDE_BY_SIDE}"
        )


def check() -> None:
    """A stage's later check (its end; train's outputs): params.yaml still holds what validate read."""

    check_unchanged(read_params_text(paths.PARAMS))
