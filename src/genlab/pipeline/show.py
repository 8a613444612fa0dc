"""`make show`: `dvc exp show` narrowed to what tells this project's experiments apart.

    python -m genlab.pipeline.show [dvc exp show options]     # e.g. --md, --sort-by test.domain_fid, -A

DVC lists every param and metric (hundreds of columns; the first ones the classifier's and the perceptual
network's). This keeps the experiment, its time, the seed, the data, the epochs, the active family's
params (model.family in params.yaml) and the test numbers the end-of-run summary reads.
"""

from __future__ import annotations

import os
import re
import sys

from genlab.models import DEFAULT_FAMILY

KEY_METRICS = ("elbo", "bpd", "domain_fid", "domain_rfid", "precision", "recall",
               "domain_copy_z", "psnr", "bits_per_token")  # fmt: skip


def columns(family: str) -> str:
    """The regex of the columns kept: DVC matches it against each column's name."""
    metrics = "|".join(KEY_METRICS)
    return rf"^(Experiment|Created|seed|data\.name|train\.epochs|{re.escape(family)}\..*|test\.({metrics}))$"


def active_family(text: str) -> str:
    from ruamel.yaml import YAML  # as DVC reads params.yaml; a params file with an error still shows its runs

    return (YAML(typ="safe").load(text) or {}).get("model", {}).get("family", DEFAULT_FAMILY)


def main(argv: list[str]) -> None:
    with open("params.yaml", encoding="utf-8") as f:
        family = active_family(f.read())
    os.execvp("dvc", ["dvc", "exp", "show", "--drop", ".*", "--keep", columns(family), *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
