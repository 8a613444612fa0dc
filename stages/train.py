"""DVC stage `train`: fit the model family on the prepared data, tracked in MLflow.

python stages/train.py [--name NAME] [--family FAMILY]   # see genlab.pipeline.stage.stage_args

The steps are genlab.pipeline.train's; this script adds the process around them (torchrun, signals).
"""

import os
import signal
import sys

from genlab.core import machine
from genlab.core.runtime import use_threads
from genlab.pipeline.stage import run_stage, stage_args, stage_config
from genlab.pipeline.train import open_run, publish, restore_finished, set_up
from genlab.tracking import store
from genlab.training import distributed, resume


def run() -> None:
    args = stage_args(__doc__.splitlines()[0])
    cfg = stage_config(args.family)
    use_threads(cfg.threads)
    if cfg.train.processes > 1 and not distributed.launched():
        # This process becomes torchrun, which starts the workers (each runs this script) and, on a
        # signal or a failed worker, stops them all: nothing is left running behind DVC's back.
        command = distributed.launch_command(cfg.train.processes, sys.argv)
        print(f"train.processes = {cfg.train.processes}: {' '.join(command[1:])}", flush=True)
        os.execv(sys.executable, command)
    # torchrun stops the other workers with SIGTERM when one fails: end through `active()`, which marks the run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    world, device = distributed.join(cfg.device, cfg.train.processes)
    try:
        setup = set_up(cfg, args.name, device, world)
        if not world.main:  # the other workers train and leave tracking and every file to rank 0
            setup.fit(state=world.broadcast(None))
            return
        fingerprint = machine.fingerprint(device)
        if restore_finished(setup, fingerprint) is not None:
            return
        tracker, state = open_run(setup, fingerprint)
        print(f"MLflow run {tracker.run_id} in {store.display_uri(tracker.uri)}")
        with tracker.active():
            history = setup.fit(tracker, state)
            publish(setup, tracker, history, fingerprint)
        resume.finished(setup.where, tracker.run_id, setup.inputs)
    finally:
        distributed.leave()


if __name__ == "__main__":
    run_stage(run)
