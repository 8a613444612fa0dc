"""DVC stage `download`: fetch and verify the dataset, write prepared uint8 tensors + manifest."""

from genlab.config.experiment import load_config
from genlab.core import paths
from genlab.data import prepare
from genlab.pipeline.stage import run_stage


def run() -> None:
    cfg = load_config(paths.PARAMS)
    manifest = prepare(cfg, paths.PREPARED_DIR)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["split_sizes"].items())
    print(f"{cfg.data.name}: {sizes} images of shape {tuple(manifest['image_shape'])} -> {paths.PREPARED_DIR}")


if __name__ == "__main__":
    run_stage(run)
