"""Declaring params.yaml keys: type (the annotation), default, allowed range and the stages that read it.

    @dataclass(frozen=True)
    class VAEConfig:
        latent_dim: int = key(20, at_least(1))
        iw_samples: int = key(1000, at_least(1), stages=("evaluate",))

One declaration drives validation (`build`), the error messages, DVC's view of which stage reads which
key (`view`) and the reference in docs/params.md (`reference`). A section class may set `STAGES`, the
stages that read its keys unless a key says otherwise, and `check()`, for rules across its keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import field
from typing import Any, ClassVar, Literal

from genlab.core.errors import ConfigError

SAMPLING = ("evaluate", "sample")  # the stages that sample from a trained model
STAGES = ("download", "classifier", "perceptual", "tokenize", "train", "evaluate", "sample")

Check = tuple[Callable[[Any], bool], str]  # (predicate, what is allowed)

# Maxima of counts, so that a typo (an extra 000) is refused, not trained until killed (issue 23.3).
MAX_EPOCHS = 10_000  # the default experiment runs 100 epochs in about a minute on digits
MAX_BATCH = 131_072
MAX_IMAGES = 100_000  # generated or scored images: the FID literature's protocol is 50 000
MAX_WIDTH = 4_096  # layer widths, features, latent dimensions
MAX_STEPS = 10_000  # diffusion timesteps and sampler steps


@dataclasses.dataclass(frozen=True)
class Upstream:
    """A trained model a family uses besides its own weights, attached as `Family.upstreams[name]`.

    With `stage`, a network the pipeline's stage of that name trains, at `ModelPaths.<stage>` (the shared domain
    classifier; a model's own perceptual network); without, a trained genlab model whose file the family's params
    key `name` holds (a prior's tokenizer)."""

    name: str
    stage: str | None = None


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """Base of a family's params section. Its keys are read by the train stage unless a key declares
    other stages (`key(..., stages=("evaluate",))` for an evaluation knob), so editing an evaluation
    knob re-evaluates without retraining. It lives apart from the family's network code (no torch), and
    declares what the family needs besides its own weights, so the pipeline decides without loading it."""

    STAGES: ClassVar = ("train",)
    #: trained models the family uses besides its own weights (genlab.evaluation.upstream)
    UPSTREAM: ClassVar[tuple[Upstream, ...]] = ()
    #: the upstream tokenizer whose codes (the `tokenize` stage's data) the family trains on; None: the images
    TOKENS_OF: ClassVar[str | None] = None
    #: the upstream network whose features score samples (or reconstructions) during training, every
    #: `eval_every` epochs on `fid_samples` validation images (keys the section then declares); None: no scores
    SCORED_BY: ClassVar[str | None] = None
    #: train.epochs when params.yaml says null: the family's default run length
    EPOCHS: ClassVar[int] = 100


def key(default: Any, check: Check | None = None, *, stages: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """A params key: its default, an optional range check and the stages that read it (None: the section's)."""
    metadata = {"check": check, "stages": stages, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(low: float) -> Check:
    """A number >= low, no maximum: for float keys. Integer keys (counts) take `between`."""
    return (lambda v: v >= low), f"a number >= {low:g}"


def between(low: int, high: int) -> Check:
    """A count in [low, high]: the maximum is there so that a typo (an extra 000) is refused instead of
    training, allocating or sampling until the machine gives up."""
    return (lambda v: low <= v <= high), f"an integer in [{low}, {high}]"


def positive() -> Check:
    return (lambda v: v > 0), "a number > 0"


def in_unit(closed_low: bool = False) -> Check:
    if closed_low:
        return (lambda v: 0 <= v < 1), "a number in [0, 1)"
    return (lambda v: 0 < v < 1), "a number in (0, 1)"


def optional(check: Check) -> Check:
    pred, allowed = check
    return (lambda v: v is None or pred(v)), f"{allowed} or null"


def positive_list(high: int, length: int = 8) -> Check:
    """Widths or multipliers: 1 to `length` integers, each in [1, high]."""
    return (
        (lambda v: 1 <= len(v) <= length and min(v) >= 1 and max(v) <= high),
        f"a list of 1 to {length} integers in [1, {high}]",
    )


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(inner[0]) + " or null"
    if origin is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[tp]


TYPE_RULE = (
    "A value must have the declared type; the one conversion is an integer where a number is declared. So "
    "`true`/`false` only where true or false is declared (no 0/1), no `100.0` where an integer is declared and no "
    'quoted number (`"1e-3"`): DVC compares params with Python\'s `==`, for which `1`, `1.0` and `true` are equal.'
)


def coerce(name: str, value: Any, tp: Any) -> Any:
    """`value` if it has type `tp` by TYPE_RULE, else a ConfigError naming the key and what it accepts."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"params key '{name}' = {value!r} is invalid: expected {describe(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise bad
    if origin is typing.Union:
        return None if value is None else coerce(name, value, typing.get_args(tp)[0])
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [coerce(f"{name}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        # The one conversion TYPE_RULE allows: an integer is a number. A string is not, even "1e-3":
        # YAML 1.2 (DVC's reader and ours) already reads 1e-3 as a float.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        number = float(value)
        # inf would pass open-ended ranges (lr > 0) and NaN fails them only by accident of how it compares.
        if not math.isfinite(number):
            raise bad
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in a section declaration, not user input


def missing(cls: type, raw: dict[str, Any], prefix: str = "") -> list[str]:
    """Declared keys absent from `raw`, in declaration order (a whole absent section is named once)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            out += missing(hints[f.name], raw[f.name], f"{prefix}{f.name}.")
    return out


def _key_name(prefix: str, key: Any) -> str:
    """An unknown key as the user can see it: quoted when it holds spaces or tabs, typed when not a string."""
    if not isinstance(key, str):
        return f"{prefix}{key!r} (YAML type {type(key).__name__}, not a string)"
    name = prefix + key
    return name if key.isprintable() and not any(c.isspace() for c in key) else repr(name)


def refuse_unknown(cls: type, raw: Any, prefix: str = "") -> None:
    """Unknown keys at any depth, before any missing one: `"epochs ": 3` is first of all a misspelt key."""
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(raw, dict):
        raise ConfigError(f"params key '{where}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((k for k in raw if k not in fields), key=str)  # YAML keys may be numbers, null, lists
    if unknown:
        raise ConfigError(
            f"unknown params key(s) {', '.join(_key_name(prefix, k) for k in unknown)}; "
            f"allowed under '{where}': {', '.join(fields)}"
        )
    for name in fields:
        if dataclasses.is_dataclass(hints[name]) and isinstance(raw.get(name), dict):
            refuse_unknown(hints[name], raw[name], f"{prefix}{name}.")


def build(cls: type, raw: Any, prefix: str, require_all: bool) -> Any:
    """A section instance from `raw`: unknown keys, wrong types, missing keys (if required), ranges are errors."""
    refuse_unknown(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    absent = missing(cls, raw, prefix) if require_all else []
    if absent:
        raise ConfigError(
            f"params key(s) missing: {', '.join(absent)}: every key must be set in params.yaml "
            "(see the committed one for each key's meaning and default)"
        )
    values = {}
    for name in (n for n in fields if n in raw):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = build(tp, raw[name], f"{prefix}{name}.", require_all=False)  # checked above
        else:
            values[name] = coerce(prefix + name, raw[name], tp)
    section = cls(**values)
    for name, f in fields.items():
        check = f.metadata.get("check")
        if check and not check[0](getattr(section, name)):
            raise ConfigError(
                f"params key '{prefix}{name}' = {getattr(section, name)!r} is out of range: expected {check[1]}"
            )
    if hasattr(section, "check"):
        section.check(prefix)
    return section


def view(section: Any, stage: str, default_stages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of `section` that `stage` reads, as a nested dict (sub-sections recurse; empty ones are dropped)."""
    out: dict[str, Any] = {}
    own = getattr(section, "STAGES", default_stages)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            sub = view(value, stage, own)
            if sub:
                out[f.name] = sub
        elif stage in (f.metadata.get("stages") or own):
            out[f.name] = value
    return out


def reference(
    cls: type, prefix: str = "", default_stages: tuple[str, ...] = ()
) -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, stages, doc) per key, for docs/params.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    own = getattr(cls, "STAGES", default_stages)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += reference(tp, f"{prefix}{f.name}.", own)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        check = f.metadata.get("check")
        allowed = check[1] if check else describe(tp)
        stages = ", ".join(f.metadata.get("stages") or own)
        rows.append((prefix + f.name, allowed, json.dumps(default), stages, f.metadata.get("doc", "")))
    return rows
