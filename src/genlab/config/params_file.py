"""Reading params.yaml as DVC reads it: the file's text (size, encoding and permission problems as clear
errors) and its YAML (1.2, safe, duplicated keys refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genlab.core.errors import ConfigError

MAX_PARAMS_BYTES = 1 << 20


def read_params_text(path: str | Path = "params.yaml") -> str:
    """params.yaml's text, or a ConfigError saying why it cannot be read: stages run by hand get the
    message validate gives under DVC, not an IsADirectoryError or UnicodeDecodeError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise ConfigError(f"params file {path} is {path.stat().st_size} bytes: a params file is at most 1 MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found: run from the repository root") from None
    except IsADirectoryError:
        raise ConfigError(f"params file {path} is a directory: it must be a YAML file") from None
    except OSError as exc:  # permissions, a dangling link, an I/O error
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"params file {path} is not UTF-8 text (byte {data[exc.start]:#04x} on line {line}): save it as UTF-8"
        ) from None


def parse_params(text: str, source: str = "params.yaml") -> dict[str, Any]:
    """`text` read as DVC reads params files (ruamel.yaml, YAML 1.2, safe), so that genlab validates
    and trains with the very values DVC records and compares: PyYAML's YAML 1.1 reads `010` as 8 and
    `1:40` as 100 where DVC reads 10 and the string "1:40". A duplicated key is an error, as in DVC."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    try:
        raw = YAML(typ="safe").load(text)  # dvc/utils/serialize/_yaml.py: parse_yaml
    except DuplicateKeyError as exc:
        # PyYAML kept the last of two values silently; DVC refuses the file ("structure is corrupted").
        raise ConfigError(
            f"params file {source} sets a key twice: {exc.problem} on line {exc.problem_mark.line + 1}; keep one"
        ) from None
    except YAMLError as exc:
        where = str(exc).replace('"<unicode string>"', source)
        raise ConfigError(f"params file {source} is not valid YAML: {where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params file {source} must be a mapping of keys to values, got {type(raw).__name__}")
    return raw
