"""What a user waiting on a stage sees, with one labelled time convention everywhere.

Epoch lines (train, classifier, perceptual) end with `(epoch 0.4 s, ETA 38 s)`: that epoch's own seconds and
the time left at the mean pace of the epochs this process has run. Steps of evaluate and sample print a line
when they start and `... 3.1 s` when they end: that step's own seconds. On a terminal, a bar with its own
ETA runs inside each epoch (tqdm, on stderr); in logs only the plain lines appear.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Pace:
    """Epochs `done + 1 .. total` of one process: the note that ends each epoch's line."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.began = total, done, time.perf_counter()

    def note(self, epoch: int, seconds: float) -> str:
        ran = epoch - self.done
        left = (time.perf_counter() - self.began) / ran * (self.total - epoch) if ran > 0 else 0.0
        eta = f", ETA {duration(left)}" if epoch < self.total else ""
        return f"(epoch {duration(seconds)}{eta})"


def bar(items: Iterable[Any], desc: str, show: bool = True) -> Iterable[Any]:
    """A bar inside an epoch where stderr is a terminal (and `show`); the items as they are elsewhere."""
    if not (show and sys.stderr.isatty()):
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False)


@contextlib.contextmanager
def step(stage: str, what: str) -> Iterator[None]:
    """`stage: what ...` now, `stage: what ... 3.1 s` when the block ends."""
    print(f"{stage}: {what} ...", flush=True)
    began = time.perf_counter()
    yield
    print(f"{stage}: {what} ... {duration(time.perf_counter() - began)}", flush=True)
