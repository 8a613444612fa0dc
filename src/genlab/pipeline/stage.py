"""What the stage scripts share: running one (a GenlabError is a plain message and exit status 2), the
`--name/--family` arguments, and today's params for a stage."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from genlab.config import params_guard
from genlab.config.experiment import FAMILY_NAMES, Config, load_config
from genlab.core import paths
from genlab.core.errors import exit_on_error


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's entry point as `exit_on_error` does; under DVC (which sets DVC_STAGE) it ends well only
    on the params the validate stage read (issue 23.17)."""

    def checked() -> None:
        main()
        if os.environ.get("DVC_STAGE"):
            params_guard.check()

    exit_on_error(checked)


def stage_args(description: str) -> argparse.Namespace:
    """--name (which model's files) and --family (a fixed family instead of model.family), for the
    train, evaluate and sample stages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--name",
        default=paths.DEFAULT_MODEL,
        help="the model's name: models/<name>.pt etc. (default: the top-level model)",
    )
    parser.add_argument(
        "--family", choices=sorted(FAMILY_NAMES), help="train this family instead of params.yaml's model.family"
    )
    return parser.parse_args()


def stage_config(family: str | None) -> Config:
    """params.yaml, validated, with model.family replaced by `family` when a stage fixes it."""
    return load_config(paths.PARAMS, overrides={"model.family": family} if family else None)
