"""DVC stage `classifier`: train the domain classifier on the prepared data.

Writes models/classifier.pt (weights + the params and data md5 they belong to) and
metrics/classifier.json (train/val/test accuracy and loss). Its features and class probabilities
are the space the sample-quality metrics (FID, IS, precision/recall, density/coverage) use.
"""

import time

from genlab import atomic, paths
from genlab.config import load_config, stage_view
from genlab.data import load_prepared
from genlab.errors import exit_on_error
from genlab.quality.classifier import save_classifier, train_classifier
from genlab.runtime import resolve_device


def run() -> None:
    cfg = load_config(paths.PARAMS)
    device = resolve_device(cfg.device)
    data = load_prepared(paths.PREPARED_DIR)
    began = time.perf_counter()
    model, metrics = train_classifier(cfg, data, device)
    seconds = time.perf_counter() - began
    save_classifier(model, paths.CLASSIFIER, stage_view(cfg, "classifier"), data.checksum, metrics)
    atomic.write_json(paths.CLASSIFIER_METRICS, metrics)
    print(
        f"classifier test/accuracy {metrics['test']['accuracy']:.4f} test/loss {metrics['test']['loss']:.4f} "
        f"val/accuracy {metrics['val']['accuracy']:.4f} ({cfg.data.name}, {seconds:.1f}s on {device})"
    )


if __name__ == "__main__":
    exit_on_error(run)
