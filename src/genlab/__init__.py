"""genlab: a reproducible experiment pipeline for deep generative image models (docs/architecture.md)."""

import os

# PyTorch's OpenMP threads on Linux (GNU libgomp) spin ~300,000 times at every barrier before they sleep.
# When another job holds a core, each small kernel then waits out a descheduled thread: 22x slower beside
# one busy job on 2 cores, against 1.1x with 1,000 spins, at +10% alone (bench/contention.py). Read when
# torch loads libgomp, so set before genlab imports torch; a value the user set wins. Waiting only:
# the same threads compute the same numbers.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
