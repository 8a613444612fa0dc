"""The experiment: `Config`, the typed, validated view of params.yaml, assembled from the shared sections
(`config.sections`), the data section and dataset registry (`data.params`) and one section per registered family
(`models.REGISTRY`); each stage's view of it; the params reference (docs/params.md).

Every key is declared with its type, default, range and the stages that read it (`genlab.core.schema.key`),
so a typo or a wrong value fails before any stage writes an output, with a message naming the key and
what it accepts. This module alone knows the registries: sections and families know nothing of each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from genlab.config import params_guard
from genlab.config.params_file import parse_params, read_params_text
from genlab.config.sections import ClassifierConfig, EvaluateConfig, PerceptualConfig, SampleConfig, TrainConfig
from genlab.core import paths
from genlab.core.errors import ConfigError
from genlab.core.schema import (
    TYPE_RULE,
    between,
    build,
    key,
    optional,
    reference,
    view,
)
from genlab.data.params import DataConfig
from genlab.models import DEFAULT_FAMILY, SECTIONS

MODEL_STAGES = ("classifier", "perceptual", "tokenize", "train", "evaluate", "sample")  # stages running networks
FAMILY_STAGES = ("train", "evaluate", "sample")  # the stages that read the active family's section
PER_FAMILY_STAGES = (*FAMILY_STAGES, "perceptual")  # a view per family: the perceptual net only for those using it


@dataclass(frozen=True)
class ModelConfig:
    STAGES: ClassVar = ("train",)
    family: Literal[tuple(SECTIONS)] = key(DEFAULT_FAMILY, doc="the model family (its section holds its keys)")


SEED_RANGE = ((lambda v: 0 <= v < 2**32), "an integer in [0, 4294967295]")


THREADS_DOC = (
    "CPU threads of each stage's process; null = torch's default (one per core), and a stage says so when "
    "other genlab stages share the cores. Beside other CPU jobs (dvc queue start -j 2) 1 keeps a run near its "
    "fair share; numbers are bit-identical only at equal threads"
)


def _config_class() -> type:
    """Config: the shared sections plus one section per registered family (cfg.vae, cfg.gan, ...)."""
    fields: list[tuple[str, Any, Any]] = [
        # NumPy and scikit-learn take seeds in [0, 2^32): a negative one would fail only in a late stage.
        ("seed", int, key(0, SEED_RANGE, stages=("download", *MODEL_STAGES), doc="drives every random stream")),
        ("device", str, key("auto", stages=MODEL_STAGES, doc="auto (CUDA when present) | cpu | cuda | cuda:N")),
        ("threads", Optional[int], key(None, optional(between(1, 1024)), stages=MODEL_STAGES, doc=THREADS_DOC)),
        ("data", DataConfig, field(default_factory=DataConfig)),
        ("model", ModelConfig, field(default_factory=ModelConfig)),
        *((name, section, field(default_factory=section)) for name, section in SECTIONS.items()),
        ("train", TrainConfig, field(default_factory=TrainConfig)),
        ("classifier", ClassifierConfig, field(default_factory=ClassifierConfig)),
        ("perceptual", PerceptualConfig, field(default_factory=PerceptualConfig)),
        ("evaluate", EvaluateConfig, field(default_factory=EvaluateConfig)),
        ("sample", SampleConfig, field(default_factory=SampleConfig)),
    ]

    def family(self) -> Any:
        """The active family's section."""
        return getattr(self, self.model.family)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, prefix: str) -> None:
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"params key 'device' = {self.device!r} is invalid: expected auto, cpu, cuda or cuda:N")

    namespace = {"family": property(family), "to_dict": to_dict, "check": check}
    cls = dataclasses.make_dataclass("Config", fields, namespace=namespace, frozen=True)
    cls.__module__ = __name__
    return cls


Config = _config_class()


def config_from_dict(raw: dict[str, Any], require_all: bool = False) -> Config:
    """Validate `raw`; absent keys take the declared defaults unless `require_all` (params.yaml).
    train.epochs null becomes the active family's default length (`FamilyConfig.EPOCHS`)."""
    cfg = build(Config, raw or {}, "", require_all)
    if cfg.train.epochs is None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=cfg.family.EPOCHS))
    return cfg


FAMILY_NAMES = tuple(SECTIONS)  # the values model.family accepts


def needs_stage(family: str, stage: str) -> bool:
    """Whether `family` uses a network that pipeline stage `stage` trains (an `Upstream` of its section)."""
    return any(needed.stage == stage for needed in SECTIONS[family].UPSTREAM)


def stage_view(cfg: Config, stage: str, family: str | None = None) -> dict[str, Any]:
    """Exactly the params `stage` reads, as a nested dict: of the family sections, only `family`'s
    (default: the active one). The validate stage writes these views for DVC, so a stage reruns
    when, and only when, a value it reads changes; the train stage logs its view as the run's params."""
    family = family or cfg.model.family
    if stage == "perceptual" and not needs_stage(family, stage):
        # One view for every family without a perceptual loss: the stage writes an empty stand-in, and
        # switching among those families, or editing perceptual.*, reruns nothing.
        return {"perceptual": {"needed": False}}
    out = view(cfg, stage)
    for name in SECTIONS:
        if name != family:
            out.pop(name, None)
    if stage in FAMILY_STAGES and family != cfg.model.family:
        out.setdefault("model", {})["family"] = family
    return out


# A params file is a few KiB; anything far larger is a mistake (a dataset or log pasted or linked in),
# and reading it whole would only delay the error.
def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml, which must set every key; `overrides` maps dotted keys to values.

    Under DVC, params.yaml must still hold what the validate stage read (`params_guard`): another
    `dvc exp run -S` in this workspace may have rewritten it since."""
    path = Path(path)
    text = read_params_text(path)
    raw = parse_params(text, str(path))
    if path == paths.PARAMS:
        params_guard.check_unchanged(text)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    # Built-in defaults would silently stand in for a key deleted from params.yaml and retrain with it.
    return config_from_dict(raw, require_all=True)


def reference_markdown() -> str:
    """docs/params.md: every params key with what it accepts, its default and the stages that read it,
    made from the declarations themselves (`python -m genlab.config.experiment > docs/params.md`)."""
    lines = [
        "# params.yaml reference",
        "",
        "Made by `python -m genlab.config.experiment > docs/params.md` from the key declarations in the code",
        "(a test keeps it current). *Stages* are the DVC stages that read a key: a change reruns those stages and what",
        "depends on their outputs, nothing else. A family's section is read only while that family is active",
        "(`model.family`), or by a stage that names the family (`--family`).",
        "",
        "params.yaml is read as DVC reads it (YAML 1.2, ruamel.yaml): `010` is 10, `1:40` and `yes` are strings,",
        "`1e3` is a number, a key set twice is an error. " + TYPE_RULE,
        "Every count has a maximum (*accepts*), so that a typo such as `train.epochs: 1000000000000` is refused",
        "instead of training until killed; raise one in the key's declaration if you truly need more.",
        "",
        "| key | accepts | default | stages | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, allowed, default, stages, doc in reference(Config):
        cells = [f"`{name}`", allowed, f"`{default}`", stages, doc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
