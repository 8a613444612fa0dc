"""One worker of a data-parallel fit() for tests/test_distributed.py, started by torchrun.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py PREPARED OUT PARAMS_JSON

Trains the family of PARAMS_JSON (a params override, over the tiny families) on the first 256 training
images of PREPARED with the worker's World, then writes OUT/rank<r>.pt: the final state, the history,
the averaged gradients of the first update, and the validation metrics of the final weights reduced
over the workers and computed by this worker alone.
"""

import json
import sys
from pathlib import Path

import torch

from genlab.config.experiment import config_from_dict
from genlab.data import load_prepared
from genlab.training import distributed
from genlab.training.distributed import World
from genlab.training.loop import NullTracker, evaluate_split, fit
from genlab.training.sources import image_source

from families import TINY_FAMILIES, build_from

TRAIN_IMAGES = 256


def main(prepared: str, out: str, override: str) -> None:
    params = json.loads(override)
    cfg = config_from_dict({**TINY_FAMILIES, **params})
    world, _ = distributed.join("cpu", cfg.train.processes)
    data = load_prepared(Path(prepared))
    family = build_from(cfg, data)
    names = {id(p): f"{m}.{n}" for m, module in family.modules.items() for n, p in module.named_parameters()}
    first: dict[str, torch.Tensor] = {}
    average = World.average_gradients

    def recording(self, params, weight):  # keeps what the first update steps with
        params = list(params)
        average(self, params, weight)
        if not first:
            first.update({names[id(p)]: p.grad.clone() for p in params if p.grad is not None})

    World.average_gradients = recording
    distributed.sync_batchnorm(family.modules.values(), torch.device("cpu"), world)
    full = image_source(data, cfg.data.binarize)
    source = type(full)(full.train[:TRAIN_IMAGES], full.val, full.test, full.to_input)
    history = fit(family, source, cfg.train, cfg.seed, key="test", checkpoint_path=None, tracker=NullTracker(),
                  world=world)  # fmt: skip
    val = {
        "reduced": evaluate_split(family, source.val, source.to_input, 99, cfg.seed, world, batch_size=48),
        "alone": evaluate_split(family, source.val, source.to_input, 99, cfg.seed, batch_size=48),
    }
    torch.save(
        {"state": family.state_dict(), "history": history, "grads": first, "val": val},
        Path(out) / f"rank{world.rank}.pt",
    )
    distributed.leave()


if __name__ == "__main__":
    main(*sys.argv[1:])
