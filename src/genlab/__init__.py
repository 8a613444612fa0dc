"""genlab: a reproducible experiment pipeline for deep generative image models.

Packages in layers, top to bottom; a module imports its own layer and those below (tests/test_architecture.py,
docs/architecture.md):

    pipeline/    what the stage scripts share, the train stage's steps, make show, the dvc plots template, the CI rerun
    reporting/   comparing finished runs: tables with spreads, verdicts, the page, the end-of-run summary
    evaluation/  the model file and its run, upstream models, the classifier (trained by the loop), scoring, latents
    training/    the one loop and its optimisation, distributed workers, sources, resume
    tracking/    the MLflow store, the model flavour, the team server
    config/      params.yaml read as DVC does, the shared sections, Config assembled from the registries
    models/      the Family contract, the registry, one folder per family (params section + networks)
    data/ processes/ quality/    datasets | generative processes | metrics on tensors
    core/        errors, safe files, checkpoints, device and seeds, progress, machine, paths, params keys
"""

import os

# PyTorch's OpenMP threads on Linux (GNU libgomp) spin ~300,000 times at every barrier before they sleep.
# When another job holds a core, each small kernel then waits out a descheduled thread: 22x slower beside
# one busy job on 2 cores, against 1.1x with 1,000 spins, at +10% alone (bench/contention.py). Read when
# torch loads libgomp, so set before genlab imports torch; a value the user set wins. Waiting only:
# the same threads compute the same numbers.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
