"""One training process for tests/test_data.py's memory test:
python tests/rss_worker.py PREPARED EPOCHS PAGE_BUDGET vae|classifier

Trains the tiny Bernoulli VAE (batches of 64, binarised), or a tiny domain classifier as the classifier stage does
(then its accuracy on every split), for EPOCHS on PREPARED, mapped as the stages map it, its batches read (not
mapped) past PAGE_BUDGET bytes of images; then prints its peak resident memory in KiB: VmHWM, as ru_maxrss would
include the RSS of the parent it was forked from.
"""

import sys
from pathlib import Path

from genlab.config.experiment import config_from_dict
from genlab.core.runtime import resolve_device
from genlab.data import load_prepared, prepared
from genlab.evaluation.classifier import train_classifier

from families import TINY_FAMILIES, train_run


def main(folder: str, epochs: str, budget: str, what: str) -> None:
    prepared.PAGE_BUDGET = int(budget)
    data = load_prepared(Path(folder))
    if what == "classifier":
        classifier = {"epochs": int(epochs), "channels": [4], "features": 8}
        train_classifier(config_from_dict({"classifier": classifier}), data, resolve_device("cpu"))
    else:
        train = {"epochs": int(epochs), "batch_size": 64}
        vae = {**TINY_FAMILIES["vae"], "likelihood": "bernoulli"}  # the cheapest per pixel
        train_run(config_from_dict({"vae": vae, "data": {"binarize": "dynamic"}, "train": train}), data)
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


if __name__ == "__main__":
    main(*sys.argv[1:])
