"""DVC stage `evaluate`: test-split metrics of the trained model -> metrics/eval.json + MLflow test/*."""

import torch

from genlab import atomic, paths, stage, tracking
from genlab.config import load_config
from genlab.data import load_prepared
from genlab.errors import CheckpointError
from genlab.runtime import generator, resolve_device, seed_everything

# How each data convention's numbers should be read; recorded beside the metrics in MLflow.
CONVENTIONS = {
    "dynamic": "test images binarised once with a seeded draw: exact Bernoulli log-likelihoods (published MNIST NLL convention)",
    "none/bernoulli": "grey levels in [0,1] scored with Bernoulli cross-entropy: comparable with tutorial VAEs, not a normalised likelihood",
    "none/gaussian": "pixels on their discrete grid scored with a discretised Gaussian: a true discrete log-likelihood",
}


def run() -> None:
    cfg = load_config(paths.PARAMS)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    family, saved = stage.load_model(device)
    data = load_prepared(paths.PREPARED_DIR)
    if data.checksum != saved["data_md5"]:
        raise CheckpointError(
            f"{paths.MODEL} was trained on data {saved['data_md5']} but {paths.PREPARED_DIR} holds {data.checksum}: "
            "retrain with `dvc repro train`"
        )
    trained_cfg = saved["config"]
    binarize = trained_cfg["data"]["binarize"]
    gen = generator(device, cfg.seed + 3)
    bs = cfg.evaluate.batch_size
    test = data.test.images

    def batches():
        for start in range(0, len(test), bs):
            x = data.to_unit(test[start : start + bs].to(device))
            yield torch.bernoulli(x, generator=gen) if binarize == "dynamic" else x

    results = family.test_metrics(batches(), gen, cfg)
    convention = "dynamic" if binarize == "dynamic" else f"none/{trained_cfg.get('vae', {}).get('likelihood', '?')}"
    atomic.write_json(paths.EVAL_METRICS, {"test": results})
    print(" ".join(f"test/{k} {v:.4f}" for k, v in results.items()))

    tracker = tracking.attach(stage.read_run_id())
    tracker.log_metrics({f"test/{k}": v for k, v in results.items()})
    tracker.set_tags({"genlab.data_convention": CONVENTIONS.get(convention, convention)})
    tracker.log_artifact(paths.EVAL_METRICS, "metrics")


if __name__ == "__main__":
    stage.main(run)
