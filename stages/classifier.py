"""DVC stages `classifier` and `perceptual`: train a small CNN classifier on the prepared data.

    python stages/classifier.py                       # the domain classifier: models/classifier.pt
    python stages/classifier.py --section perceptual  # the perceptual network: models/perceptual.pt
    python stages/classifier.py --section perceptual --name tokenizer --family flowmo   # models/tokenizer-perceptual.pt

Each file holds the weights + the params and data md5 they belong to, beside metrics/<section>.json
(train/val/test accuracy and loss). The domain classifier's features and class probabilities are the
space the sample-quality metrics (FID, IS, precision/recall, density/coverage) use; the perceptual
network, trained with other params and streams, gives a family its perceptual loss. It is trained only for
a family that declares it (`Family.upstream`); for any other the stage writes an empty stand-in in seconds
(DVC needs the output), so the default VAE experiment trains no network it never uses.
"""

import argparse
import time
from pathlib import Path

from genlab.config.experiment import FAMILY_NAMES, load_config, needs_stage, stage_view
from genlab.core import atomic, paths
from genlab.core.runtime import resolve_device, use_threads
from genlab.data import load_prepared
from genlab.evaluation.classifier import save_classifier, save_unused, train_classifier
from genlab.pipeline.stage import run_stage


def outputs(section: str, name: str) -> tuple[Path, Path]:
    """The network file and its metrics file: one domain classifier for every model, a perceptual network
    per model that uses one (paths.ModelPaths)."""
    if section == "classifier":
        return paths.CLASSIFIER, paths.CLASSIFIER_METRICS
    where = paths.model_paths(name)
    return where.perceptual, where.perceptual_metrics


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("classifier", "perceptual"), default="classifier",
                        help="which network to train")  # fmt: skip
    parser.add_argument("--name", default=paths.DEFAULT_MODEL, help="perceptual: the model it serves")
    parser.add_argument("--family", choices=FAMILY_NAMES, help="perceptual: that model's family (default: active)")
    args = parser.parse_args()
    section = args.section
    cfg = load_config(paths.PARAMS)
    use_threads(cfg.threads)
    model_path, metrics_path = outputs(section, args.name)
    family = args.family or cfg.model.family
    if section == "perceptual" and not needs_stage(family, section):
        reason = f"model.family={family} trains without a perceptual loss, so none was trained"
        save_unused(model_path, section, reason)
        atomic.write_json(metrics_path, {"trained": False, "reason": reason})
        print(f"perceptual: not trained ({reason}) -> {model_path} holds an empty stand-in")
        return
    device = resolve_device(cfg.device)
    data = load_prepared(paths.PREPARED_DIR)
    began = time.perf_counter()
    model, metrics = train_classifier(cfg, data, device, section)
    seconds = time.perf_counter() - began
    save_classifier(model, model_path, stage_view(cfg, section, family), data.checksum, metrics, section)
    atomic.write_json(metrics_path, metrics)
    print(
        f"{section} test/accuracy {metrics['test']['accuracy']:.4f} test/loss {metrics['test']['loss']:.4f} "
        f"val/accuracy {metrics['val']['accuracy']:.4f} ({cfg.data.name}, {seconds:.1f}s on {device})"
    )


if __name__ == "__main__":
    run_stage(run)
