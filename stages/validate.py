"""DVC stage `validate`: check every key of params.yaml before any other stage runs, and write each
stage's view of the params.

DVC deletes a stage's outputs (`cache: false` metrics included) when it starts the stage, so a bad
value found by the stage itself has already cost its outputs. Every other stage depends on a view
written here, so DVC runs this stage first and stops here, before it touches anything. A view
(validated/<stage>.yaml) holds exactly the keys that stage reads — of the family sections, only the
active family's — so DVC reruns a stage when, and only when, one of its values changes: editing gan.*
leaves a VAE pipeline up to date. validated/<family>/<stage>.yaml is the same for a stage that names
its family (`--family`), as a second model of a two-model pipeline does. validated/params.json holds the
text read, which later stages run by DVC must still find in params.yaml (`genlab.config.params_guard`).
"""

from pathlib import Path

import yaml

from genlab.config import params_guard
from genlab.config.experiment import (
    FAMILY_NAMES,
    PER_FAMILY_STAGES,
    config_from_dict,
    parse_params,
    read_params_text,
    stage_view,
)
from genlab.core import atomic, paths
from genlab.core.errors import ConfigError
from genlab.core.schema import STAGES
from genlab.pipeline.stage import run_stage


def _write(path: Path, view: dict) -> None:
    atomic.write_text(path, yaml.safe_dump(view, sort_keys=True))


def run() -> None:
    text = read_params_text(paths.PARAMS)
    params_guard.check_experiment(text)
    cfg = config_from_dict(parse_params(text, str(paths.PARAMS)), require_all=True)
    if cfg.device.startswith("cuda"):  # cuda on a machine without one; torch is loaded for this question only
        from genlab.core.runtime import resolve_device

        resolve_device(cfg.device)
    if cfg.data.name == "image_folder" and not Path(cfg.data.path).expanduser().is_dir():
        raise ConfigError(f"data.path = {cfg.data.path!r} is not an existing folder of images")
    weights = cfg.evaluate.inception_weights
    if cfg.evaluate.inception_fid and weights and not Path(weights).expanduser().is_file():
        raise ConfigError(f"evaluate.inception_weights = {weights!r} is not a file")
    for stage in STAGES:
        _write(paths.stage_view(stage), stage_view(cfg, stage))
    for family in FAMILY_NAMES:
        for stage in PER_FAMILY_STAGES:
            _write(paths.stage_view(stage, family), stage_view(cfg, stage, family))
    params_guard.record(text)  # what every later stage run by DVC must still find in params.yaml


if __name__ == "__main__":
    run_stage(run)
