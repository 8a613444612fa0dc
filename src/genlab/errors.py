"""Errors a user can act on. Each message names what was wrong and what is allowed."""


class GenlabError(Exception):
    """Base class: stages print these without a traceback and exit with status 2."""


class ConfigError(GenlabError):
    """A params.yaml key is missing, unknown, of the wrong type or out of range."""


class DataError(GenlabError):
    """A dataset cannot be found, downloaded, verified or read."""


class CheckpointError(GenlabError):
    """A checkpoint or model file is missing, corrupted or belongs to other params."""


class DivergenceError(GenlabError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""
