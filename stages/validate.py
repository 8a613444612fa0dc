"""DVC stage `validate`: check every key of params.yaml before any other stage runs.

DVC deletes a stage's outputs (`cache: false` metrics included) when it starts the stage, so a bad
value found by the stage itself has already cost its outputs. Every other stage depends on this
stage's stamp, so DVC runs it first and stops here, before it touches anything. The stamp's text is
fixed: a copy of the params would change with every key and rerun every stage on any edit.
"""

from pathlib import Path

from genlab import atomic, paths, stage
from genlab.config import load_config
from genlab.errors import ConfigError
from genlab.runtime import resolve_device


def run() -> None:
    cfg = load_config(paths.PARAMS)
    resolve_device(cfg.device)  # cuda on a machine without one
    if cfg.data.name == "image_folder" and not Path(cfg.data.path).expanduser().is_dir():
        raise ConfigError(f"data.path = {cfg.data.path!r} is not an existing folder of images")
    weights = cfg.evaluate.inception_weights
    if cfg.evaluate.inception_fid and weights and not Path(weights).expanduser().is_file():
        raise ConfigError(f"evaluate.inception_weights = {weights!r} is not a file")
    atomic.write_text(paths.PARAMS_STAMP, "params.yaml passed stages/validate.py\n")


if __name__ == "__main__":
    stage.main(run)
