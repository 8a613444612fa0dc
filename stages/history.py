"""DVC stage `history`: the training record -> metrics/train_history.csv and metrics/curves/ (genlab.pipeline.history).

python stages/history.py [--name NAME]
"""

import argparse

from genlab.core import paths
from genlab.core.errors import exit_on_error
from genlab.pipeline.history import write_history


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=paths.DEFAULT_MODEL, help="the model's name (default: the top-level model)")
    where = paths.model_paths(parser.parse_args().name)
    table = write_history(where)
    print(f"{where.history}: {len(table)} epochs; {where.curves}/: {len(list(where.curves.glob('*.csv')))} curves")


if __name__ == "__main__":
    exit_on_error(run)
