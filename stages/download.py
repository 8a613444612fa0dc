"""DVC stage `download`: fetch and verify the dataset, write prepared uint8 tensors + manifest."""

from genlab import paths
from genlab.config import load_config
from genlab.data import prepare
from genlab.errors import exit_on_error


def run() -> None:
    cfg = load_config(paths.PARAMS)
    manifest = prepare(cfg, paths.PREPARED_DIR)
    sizes = ", ".join(f"{k} {v}" for k, v in manifest["split_sizes"].items())
    print(f"{cfg.data.name}: {sizes} images of shape {tuple(manifest['image_shape'])} -> {paths.PREPARED_DIR}")


if __name__ == "__main__":
    exit_on_error(run)
