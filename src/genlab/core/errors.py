"""Errors a user can act on. Each message names what was wrong and what is allowed."""


class GenlabError(Exception):
    """Base class: stages print these without a traceback and exit with status 2."""


class ConfigError(GenlabError):
    """A params.yaml key is missing, unknown, of the wrong type or out of range."""


class DataError(GenlabError):
    """A dataset cannot be found, downloaded, verified or read."""


class CheckpointError(GenlabError):
    """A checkpoint or model file is missing, corrupted or belongs to other params."""


class StorageError(GenlabError):
    """An output could not be written (disk full); the previous file is kept."""


class TrackingError(GenlabError):
    """The MLflow store (an SQLite file or a tracking server) refused a request or did not answer."""


class DivergenceError(GenlabError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def restore_hint(stage: str) -> str:
    """How to get back what DVC removed: it deletes a stage's outputs before running the stage's command."""
    return (
        f"DVC removed the outputs of stage '{stage}' before running it: `dvc checkout {stage}` restores the "
        "cached ones recorded in dvc.lock, and `git checkout -- <file>` the metrics files DVC does not cache"
    )


def exit_on_error(stage) -> None:
    """Run a stage's entry point; a GenlabError is the user's to fix, so print it plainly and exit 2.
    Under DVC (which sets DVC_STAGE) the message also says how to get the stage's previous outputs back."""
    import os
    import sys

    try:
        stage()
    except GenlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if os.environ.get("DVC_STAGE"):
            print(restore_hint(os.environ["DVC_STAGE"]), file=sys.stderr)
        sys.exit(2)
