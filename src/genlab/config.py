"""Typed, validated view of params.yaml.

Every key is declared with its type, default, range and the stages that read it (`genlab.schema.key`),
so a typo or a wrong value fails before any stage writes an output, with a message naming the key and
what it accepts. The shared sections live here; each model family declares its own section beside its
code (`Family.config_class`), and the family registry adds it to `Config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from genlab import params_guard, paths
from genlab.data import DATASETS
from genlab.errors import ConfigError
from genlab.models import SECTIONS
from genlab.schema import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_WIDTH,
    TYPE_RULE,
    between,
    build,
    in_unit,
    key,
    optional,
    positive,
    positive_list,
    reference,
    view,
)

MODEL_STAGES = ("classifier", "perceptual", "tokenize", "train", "evaluate", "sample")  # stages running networks
FAMILY_STAGES = ("train", "evaluate", "sample")  # the stages that read the active family's section
PER_FAMILY_STAGES = (*FAMILY_STAGES, "perceptual")  # a view per family: the perceptual net only for those using it


@dataclass(frozen=True)
class DataConfig:
    STAGES: ClassVar = ("download",)
    name: Literal[DATASETS] = key("digits")
    root: str = key("data/raw", doc="download cache for the torchvision datasets")
    mirror: Optional[str] = key(None, doc="directory or URL that replaces the official download location")
    path: Optional[str] = key(None, doc="image_folder: the folder of images (subfolders = classes)")
    image_size: int = key(28, between(4, 1024), doc="image_folder: images are resized to image_size x image_size")
    channels: Literal[1, 3] = key(1, doc="image_folder: 1 = grayscale, 3 = RGB")
    val_fraction: float = key(0.1, in_unit(), doc="carved from the train split with a seeded permutation")
    test_fraction: float = key(0.2, in_unit(), doc="datasets without an official test split (digits, image_folder)")
    limit: Optional[int] = key(
        None,
        optional(between(10, MAX_IMAGES)),
        doc="at most this many images in each split, a seeded draw: a smoke-sized run in minutes (metrics say their "
        "n: split_sizes in the manifest, test/num_samples); null = every image",
    )
    skip_unreadable: bool = key(
        False,
        doc="image_folder: leave out the inputs it cannot use (unreadable, truncated, tiny (< 8 px), oversized, "
        "animated or multi-page, pixels without a known range, broken or repeated folder links, empty class "
        "folders: README, Data) instead of failing; they are listed in the manifest and counted on the MLflow run",
    )
    binarize: Literal["none", "dynamic"] = key(
        "none", stages=("train",), doc="dynamic: a fresh Bernoulli draw each time an image is seen"
    )

    def check(self, prefix: str) -> None:
        if self.name == "image_folder" and not self.path:
            raise ConfigError(f"{prefix}name is image_folder but '{prefix}path' is empty: set it to a folder of images")


@dataclass(frozen=True)
class ModelConfig:
    STAGES: ClassVar = ("train",)
    family: Literal[tuple(SECTIONS)] = key("vae", doc="the model family (its section holds its keys)")


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop's settings; each family's optimiser settings (lr, betas) are in its own section."""

    STAGES: ClassVar = ("train",)
    epochs: int = key(100, between(1, MAX_EPOCHS))
    batch_size: int = key(64, between(1, MAX_BATCH))
    lr_schedule: Literal["constant", "cosine"] = key("cosine", doc="every optimiser's lr; cosine decays to 0 per step")
    grad_clip: Optional[float] = key(None, doc="clip each optimiser's gradient norm to this (null = off)")
    precision: Literal["fp32", "bf16", "fp16"] = key(
        "fp32",
        doc="bf16/fp16: autocast of forward passes (weights, optimiser and backward stay float32); "
        "fp16 needs CUDA (loss scaling)",
    )
    compile: bool = key(False, doc="torch.compile the family's networks (first steps slower: compilation)")
    processes: int = key(1, between(1, 256), doc="data-parallel workers (torchrun); batch_size is the global batch")
    resume: bool = key(False, doc="continue from checkpoints/train.pt into the same MLflow run")

    def check(self, prefix: str) -> None:
        if self.batch_size % self.processes:
            raise ConfigError(
                f"params key '{prefix}batch_size' = {self.batch_size} does not divide among "
                f"{prefix}processes = {self.processes} workers: use a multiple of {self.processes} "
                "(batch_size is the global batch, split evenly across workers)"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(
                f"params key '{prefix}grad_clip' = {self.grad_clip!r} is out of range: expected a number > 0 or null"
            )


@dataclass(frozen=True)
class ClassifierConfig:
    """The domain classifier whose features and class probabilities score generated samples."""

    STAGES: ClassVar = ("classifier",)
    epochs: int = key(10, between(1, MAX_EPOCHS))
    batch_size: int = key(64, between(1, MAX_BATCH))
    lr: float = key(2e-3, positive(), doc="Adam, cosine-decayed to 0 over the run")
    channels: list[int] = key([32, 64], positive_list(MAX_WIDTH), doc="conv widths")
    features: int = key(128, between(2, MAX_WIDTH), doc="penultimate width: the feature space of FID, precision/recall")


@dataclass(frozen=True)
class PerceptualConfig(ClassifierConfig):
    """A second, smaller classifier whose feature maps and logits give a perceptual loss (FlowMo trains
    with it): never the domain classifier, which judges the results, since a loss and its judge must differ."""

    STAGES: ClassVar = ("perceptual",)
    epochs: int = key(10, between(1, MAX_EPOCHS))
    channels: list[int] = key(
        [16, 32], positive_list(MAX_WIDTH), doc="conv widths; its feature maps enter the distance"
    )
    features: int = key(64, between(2, MAX_WIDTH))


@dataclass(frozen=True)
class EvaluateConfig:
    STAGES: ClassVar = ("evaluate",)
    batch_size: int = key(256, between(1, MAX_BATCH))
    num_samples: int = key(2000, between(10, MAX_IMAGES), doc="generated images scored against as many test images")
    bootstrap: int = key(
        50,
        (lambda v: v == 0 or 2 <= v <= 10_000, "an integer in [2, 10000], or 0 for no spreads"),
        doc="resamples behind every *_std",
    )
    inception_fid: bool = key(False, doc="also the standard Inception-v3 FID and KID (slow on CPU)")
    inception_weights: Optional[str] = key(None, doc="local pt_inception-2015-12-05 weights file")


@dataclass(frozen=True)
class SampleConfig:
    STAGES: ClassVar = ("sample",)
    n: int = key(64, between(1, 1024), doc="images in samples/samples.png")
    interpolation_steps: int = key(10, between(2, 100))
    interpolation_pairs: int = key(8, between(1, 64))
    latent_map: Literal["pca", "tsne"] = key("pca", doc="families with an encoder")
    class_samples: int = key(1000, between(1, MAX_IMAGES), doc="generated images classified for class_histogram.png")


SEED_RANGE = ((lambda v: 0 <= v < 2**32), "an integer in [0, 4294967295]")


THREADS_DOC = (
    "CPU threads of each stage's process; null = torch's default (one per core). Beside other CPU jobs "
    "(dvc queue start -j 2) 1 keeps a run near its fair share; numbers are bit-identical only at equal threads"
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
    """Validate `raw`; absent keys take the declared defaults unless `require_all` (params.yaml)."""
    return build(Config, raw or {}, "", require_all)


FAMILY_NAMES = tuple(SECTIONS)  # the values model.family accepts


def uses_upstream(family: str, name: str) -> bool:
    """Whether `family` trains or samples with upstream network `name` (its `Family.upstream`)."""
    return name in SECTIONS[family].UPSTREAM


def stage_view(cfg: Config, stage: str, family: str | None = None) -> dict[str, Any]:
    """Exactly the params `stage` reads, as a nested dict: of the family sections, only `family`'s
    (default: the active one). The validate stage writes these views for DVC, so a stage reruns
    when, and only when, a value it reads changes; the train stage logs its view as the run's params."""
    family = family or cfg.model.family
    if stage == "perceptual" and not uses_upstream(family, "perceptual"):
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
    made from the declarations themselves (`python -m genlab.config > docs/params.md`)."""
    lines = [
        "# params.yaml reference",
        "",
        "Made by `python -m genlab.config > docs/params.md` from the key declarations in the code (a test keeps",
        "it current). *Stages* are the DVC stages that read a key: a change reruns those stages and what",
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
