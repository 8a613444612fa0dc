"""Fixed output paths, shared by the stages, dvc.yaml and the tests (DVC outs need fixed paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARAMS = Path("params.yaml")
PIPELINE = Path("dvc.yaml")  # the default experiment's pipeline
TOKENS_PIPELINE = Path("pipelines/tokens/dvc.yaml")  # seed 004's two models: tokenizer and prior
VALIDATED_DIR = Path("validated")  # the validate stage's per-stage views of params.yaml
PREPARED_DIR = Path("data/prepared")
TOKENS_DIR = Path("data/tokens")  # the tokenize stage's token sequences (pipelines/tokens/dvc.yaml)
CLASSIFIER = Path("models/classifier.pt")
CLASSIFIER_METRICS = Path("metrics/classifier.json")
PERCEPTUAL = Path("models/perceptual.pt")  # the default model's perceptual network (stage `perceptual`)
PERCEPTUAL_METRICS = Path("metrics/perceptual.json")
EXPECTED = Path("metrics/expected.json")  # seed bands for the CI reproduction check
REPORTS_DIR = Path("reports")
DEFAULT_MODEL = "model"


def stage_view(stage: str, family: str | None = None) -> Path:
    """validated/<stage>.yaml (the active family) or validated/<family>/<stage>.yaml (a fixed family)."""
    return VALIDATED_DIR / (f"{family}/{stage}.yaml" if family else f"{stage}.yaml")


@dataclass(frozen=True)
class ModelPaths:
    """Every file of one trained model. The default model keeps the top-level layout; a named one
    (`--name tokenizer` on the train/evaluate/sample stages) gets models/<name>.pt, metrics/<name>/,
    checkpoints-<name>/ and samples-<name>/, so two trained models coexist in one pipeline."""

    name: str
    model: Path
    checkpoint: Path
    training_run: Path  # the unfinished run the checkpoint belongs to, until it finishes
    train_metrics: Path
    record: Path  # the training history + the names of its curves: train's cached output, the history stage's input
    history: Path
    curves: Path
    machine: Path  # fingerprint of the machine that trained the model
    eval_metrics: Path
    samples: Path
    perceptual: Path  # the perceptual network of this model (stage `perceptual`), when its family uses one
    perceptual_metrics: Path
    classifier: Path = CLASSIFIER  # the domain classifier (stage `classifier`): one for every model
    pipeline: Path = PIPELINE  # the dvc.yaml whose stages make it: what `dvc exp run` must name to rerun it


def model_paths(name: str = DEFAULT_MODEL) -> ModelPaths:
    if name == DEFAULT_MODEL:
        return ModelPaths(
            name,
            Path("models/model.pt"),
            Path("checkpoints/train.pt"),
            Path("checkpoints/run.json"),
            Path("metrics/train.json"),
            Path("models/model-history.json"),
            Path("metrics/train_history.csv"),
            Path("metrics/curves"),
            Path("metrics/machine.json"),
            Path("metrics/eval.json"),
            Path("samples"),
            PERCEPTUAL,
            PERCEPTUAL_METRICS,
        )
    # Beside the default model's directories, never inside them: DVC tracks `checkpoints` and `samples`
    # whole as the default chain's outputs, and another model's file there would rerun that chain.
    return ModelPaths(
        name,
        Path(f"models/{name}.pt"),
        Path(f"checkpoints-{name}/train.pt"),
        Path(f"checkpoints-{name}/run.json"),
        Path(f"metrics/{name}/train.json"),
        Path(f"models/{name}-history.json"),
        Path(f"metrics/{name}/train_history.csv"),
        Path(f"metrics/{name}/curves"),
        Path(f"metrics/{name}/machine.json"),
        Path(f"metrics/{name}/eval.json"),
        Path(f"samples-{name}"),
        Path(f"models/{name}-perceptual.pt"),
        Path(f"metrics/{name}/perceptual.json"),
        pipeline=TOKENS_PIPELINE,  # the only pipeline with named models
    )


# The default model's files, for the code that handles only it (the CI rerun, the report).
MODEL_FILES = model_paths()
