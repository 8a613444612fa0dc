"""Typed, validated view of params.yaml.

Every key is declared here with its type and allowed values, so a typo or a wrong type fails
before any stage writes an output, with a message naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from genlab.errors import ConfigError

DATASETS = ("digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "image_folder")
FAMILIES = ("vae", "gan", "ddpm")
GAN_LOSSES = ("bce", "minimax", "wgan-gp", "lsgan", "hinge")


@dataclass(frozen=True)
class DataConfig:
    name: Literal[DATASETS] = "digits"
    root: str = "data/raw"  # download cache for the torchvision datasets
    mirror: Optional[str] = None  # directory or URL that replaces the official download location
    path: Optional[str] = None  # image_folder: the folder of images
    image_size: int = 28  # image_folder: images are resized to image_size x image_size
    channels: Literal[1, 3] = 1  # image_folder: 1 = grayscale, 3 = RGB
    val_fraction: float = 0.1  # carved from the train split with a seeded permutation
    test_fraction: float = 0.2  # datasets without an official test split (digits, image_folder)
    binarize: Literal["none", "dynamic"] = "none"


@dataclass(frozen=True)
class ModelConfig:
    family: Literal[FAMILIES] = "vae"


@dataclass(frozen=True)
class VAEConfig:
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [512, 256])  # mlp widths, encoder order
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv widths, encoder order
    latent_dim: int = 20
    likelihood: Literal["bernoulli", "gaussian"] = "gaussian"
    beta: float = 1.0
    kl_warmup_epochs: int = 0  # KL weight ramps linearly from 1/n to beta over n epochs


@dataclass(frozen=True)
class GANConfig:
    """DCGAN (seed 001); its optimiser settings are its own, train.lr does not apply."""

    loss: Literal[GAN_LOSSES] = "bce"  # bce = non-saturating G loss; minimax = the original log(1 - D(G(z)))
    latent_dim: int = 100
    width: int = 64  # channels of D's first conv layer and G's last; doubled per resolution halving
    n_critic: Optional[int] = None  # D steps per G step; null = 5 for wgan-gp, 1 otherwise
    gp_weight: float = 10.0  # wgan-gp: lambda of the gradient penalty
    spectral_norm: bool = False  # spectral normalisation on D's layers (then D has no BatchNorm)
    lr: float = 2e-4  # Adam, both networks
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999  # EMA copy of G, used for every sample
    eval_every: int = 5  # epochs between domain-FID checks during training (0 = never; the last epoch always)
    fid_samples: int = 1000  # samples for that check, scored against as many validation images


@dataclass(frozen=True)
class DDPMConfig:
    """Denoising diffusion (seed 003); trained with train.lr."""

    schedule: Literal["linear", "cosine"] = "linear"  # linear: beta 1e-4 -> 0.02 (Ho et al.); cosine: Nichol & Dhariwal
    timesteps: int = 1000
    prediction: Literal["eps", "v"] = "eps"
    channels: int = 32  # U-Net base width
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])  # width multiplier per resolution
    res_blocks: int = 1  # residual blocks per resolution
    attention: bool = True  # self-attention at the lowest resolution
    ema_decay: float = 0.999  # EMA weights used for evaluation and sampling
    snapshot_steps: int = 10  # DDIM steps for the per-epoch sample grid


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # every optimiser's lr; cosine decays to 0 per step
    resume: bool = False


@dataclass(frozen=True)
class ClassifierConfig:
    """The domain classifier whose features and class probabilities score generated samples."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv widths
    features: int = 128  # penultimate width: the feature space of FID, precision/recall, density/coverage


@dataclass(frozen=True)
class EvaluateConfig:
    iw_samples: int = 1000  # importance samples per test image (5000 = literature protocol)
    batch_size: int = 256
    num_samples: int = 2000  # generated images scored against as many test images (capped at the test size)
    inception_fid: bool = False  # also the standard Inception-v3 FID (slow on CPU)
    inception_weights: Optional[str] = None  # local pt_inception-2015-12-05 weights file, if no package ships them
    bound_strata: int = 100  # ddpm: timesteps per test image for the stratified bound estimate (0 = all, exact)


@dataclass(frozen=True)
class SampleConfig:
    n: int = 64
    interpolation_steps: int = 10
    interpolation_pairs: int = 8
    latent_map: Literal["pca", "tsne"] = "pca"
    class_samples: int = 1000  # generated images classified for samples/class_histogram.png
    steps: int = 50  # ddpm: sampler steps for samples and evaluation (timesteps = ancestral DDPM)
    eta: float = 0.0  # ddpm: DDIM noise (0 = deterministic DDIM, 1 = DDPM-like variance)
    steps_grid: list[int] = field(default_factory=lambda: [10, 50, 1000])  # ddpm: quality-vs-steps grid


@dataclass(frozen=True)
class Config:
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Ranges checked after types: (key, predicate, what is allowed).
_RANGES = [
    ("data.image_size", lambda v: v >= 4, "an integer >= 4"),
    ("data.val_fraction", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("data.test_fraction", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("vae.hidden", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive integers"),
    ("vae.channels", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive integers"),
    ("vae.latent_dim", lambda v: v >= 1, "an integer >= 1"),
    ("vae.beta", lambda v: v >= 0, "a number >= 0"),
    ("vae.kl_warmup_epochs", lambda v: v >= 0, "an integer >= 0"),
    ("gan.latent_dim", lambda v: v >= 1, "an integer >= 1"),
    ("gan.width", lambda v: v >= 1, "an integer >= 1"),
    ("gan.n_critic", lambda v: v is None or v >= 1, "an integer >= 1 or null"),
    ("gan.gp_weight", lambda v: v >= 0, "a number >= 0"),
    ("gan.lr", lambda v: v > 0, "a number > 0"),
    ("gan.beta1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("gan.beta2", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("gan.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("gan.eval_every", lambda v: v >= 0, "an integer >= 0"),
    ("gan.fid_samples", lambda v: v >= 10, "an integer >= 10"),
    ("ddpm.timesteps", lambda v: v >= 2, "an integer >= 2"),
    ("ddpm.channels", lambda v: v >= 1, "an integer >= 1"),
    ("ddpm.channel_mults", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive integers"),
    ("ddpm.res_blocks", lambda v: v >= 1, "an integer >= 1"),
    ("ddpm.ema_decay", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("ddpm.snapshot_steps", lambda v: v >= 1, "an integer >= 1"),
    ("train.epochs", lambda v: v >= 1, "an integer >= 1"),
    ("train.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("train.lr", lambda v: v > 0, "a number > 0"),
    ("classifier.epochs", lambda v: v >= 1, "an integer >= 1"),
    ("classifier.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("classifier.lr", lambda v: v > 0, "a number > 0"),
    ("classifier.channels", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive integers"),
    ("classifier.features", lambda v: v >= 2, "an integer >= 2"),
    ("evaluate.iw_samples", lambda v: v >= 1, "an integer >= 1"),
    ("evaluate.num_samples", lambda v: v >= 10, "an integer >= 10"),
    ("evaluate.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("sample.n", lambda v: v >= 1, "an integer >= 1"),
    ("sample.interpolation_steps", lambda v: v >= 2, "an integer >= 2"),
    ("sample.interpolation_pairs", lambda v: v >= 1, "an integer >= 1"),
    ("evaluate.bound_strata", lambda v: v >= 0, "an integer >= 0"),
    ("sample.class_samples", lambda v: v >= 1, "an integer >= 1"),
    ("sample.steps", lambda v: v >= 1, "an integer >= 1"),
    ("sample.eta", lambda v: v >= 0, "a number >= 0"),
    ("sample.steps_grid", lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of positive integers"),
]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _describe(inner[0]) + " or null"
    if origin is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[tp]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"params key '{key}' = {value!r} is invalid: expected {_describe(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise bad
    if origin is typing.Union:
        return None if value is None else _coerce(key, value, typing.get_args(tp)[0])
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        # YAML reads '1e-3' as a string; accept numeric strings, since that is what users write.
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except ValueError:
            raise bad from None
        # inf would pass open-ended ranges (lr > 0) and NaN fails them only by accident of how it compares.
        if not math.isfinite(number):
            raise bad
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this module, not user input


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"params key '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown params key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed under '{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(names))}"
        )
    values = {}
    for name in names & set(raw):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], f"{prefix}{name}.")
        else:
            values[name] = _coerce(prefix + name, raw[name], tp)
    return cls(**values)


def _lookup(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _missing(cls: type, raw: dict[str, Any], prefix: str = "") -> list[str]:
    """Declared keys absent from `raw` (a whole absent section is named once)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            out += _missing(hints[f.name], raw[f.name], f"{prefix}{f.name}.")
    return out


def config_from_dict(raw: dict[str, Any], require_all: bool = False) -> Config:
    """Validate `raw`; absent keys take the dataclass defaults unless `require_all` (params.yaml)."""
    cfg = _build(Config, raw or {}, "")
    missing = _missing(Config, raw or {}) if require_all else []
    if missing:
        raise ConfigError(
            f"params key(s) missing: {', '.join(missing)}: every key must be set in params.yaml "
            "(see the committed one for each key's meaning and default)"
        )
    for key, ok, allowed in _RANGES:
        value = _lookup(cfg, key)
        if not ok(value):
            raise ConfigError(f"params key '{key}' = {value!r} is out of range: expected {allowed}")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"params key 'device' = {cfg.device!r} is invalid: expected auto, cpu, cuda or cuda:N")
    if cfg.data.name == "image_folder" and not cfg.data.path:
        raise ConfigError("data.name is image_folder but 'data.path' is empty: set it to a folder of images")
    return cfg


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Config:
    """Read params.yaml, which must set every key; `overrides` maps dotted keys to values."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found: run from the repository root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    # Built-in defaults would silently stand in for a key deleted from params.yaml and retrain with it.
    return config_from_dict(raw, require_all=True)
