"""DVC stages `classifier` and `perceptual`: train a small CNN classifier on the prepared data.

    python stages/classifier.py                       # the domain classifier: models/classifier.pt
    python stages/classifier.py --section perceptual  # the perceptual network: models/perceptual.pt

Each file holds the weights + the params and data md5 they belong to, beside metrics/<section>.json
(train/val/test accuracy and loss). The domain classifier's features and class probabilities are the
space the sample-quality metrics (FID, IS, precision/recall, density/coverage) use; the perceptual
network, trained with other params and streams, gives a family its perceptual loss.
"""

import argparse
import time

from genlab import atomic, paths
from genlab.config import load_config, stage_view
from genlab.data import load_prepared
from genlab.errors import exit_on_error
from genlab.quality.classifier import save_classifier, train_classifier
from genlab.runtime import resolve_device

OUTPUTS = {
    "classifier": (paths.CLASSIFIER, paths.CLASSIFIER_METRICS),
    "perceptual": (paths.PERCEPTUAL, paths.PERCEPTUAL_METRICS),
}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(OUTPUTS), default="classifier", help="which network to train")
    section = parser.parse_args().section
    cfg = load_config(paths.PARAMS)
    device = resolve_device(cfg.device)
    data = load_prepared(paths.PREPARED_DIR)
    began = time.perf_counter()
    model, metrics = train_classifier(cfg, data, device, section)
    seconds = time.perf_counter() - began
    model_path, metrics_path = OUTPUTS[section]
    save_classifier(model, model_path, stage_view(cfg, section), data.checksum, metrics, section)
    atomic.write_json(metrics_path, metrics)
    print(
        f"{section} test/accuracy {metrics['test']['accuracy']:.4f} test/loss {metrics['test']['loss']:.4f} "
        f"val/accuracy {metrics['val']['accuracy']:.4f} ({cfg.data.name}, {seconds:.1f}s on {device})"
    )


if __name__ == "__main__":
    exit_on_error(run)
