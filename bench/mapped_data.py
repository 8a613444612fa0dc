"""Training on prepared data larger than memory: peak RSS of a training epoch for datasets of several sizes.

    PYTHONPATH=src .venv/bin/python bench/mapped_data.py --gb 1 8          # writes bench/out/mapped_<gb>gb/

For each size, writes a synthetic prepared dataset through genlab's own streaming writer (`write_prepared`:
random 3x64x64 images of 17 grey levels, generated a chunk at a time, so the writer's memory is bounded too),
then trains one epoch of a small Bernoulli MLP VAE on it (batches of 64) in a child process under
`/usr/bin/time -v`, and prints a Markdown row: dataset size, images, epoch seconds, peak RSS, and the peak
RSS of a process that only imports genlab and loads (maps and verifies) the data. The data files are left in
bench/out/ for a rerun (delete them after: they are as large as asked). GPU: add --device cuda.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from genlab.data.prepared import FORMAT_VERSION, MANIFEST_FILE, write_prepared
from genlab.data.splits import Split

OUT = Path(__file__).resolve().parent / "out"
SHAPE = (3, 64, 64)
HELD_OUT = 1000  # val and test images each


class Synthetic:
    """Pseudo-random images made on demand: row i is the same whichever chunk asks for it."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        first = int(index[0])
        gen = torch.Generator().manual_seed(first)  # rows come in runs of consecutive indices from the writer
        rows = torch.randint(0, 17, (len(index), *SHAPE), generator=gen, dtype=torch.uint8)
        assert torch.equal(index, torch.arange(first, first + len(index))), "the writer asks for runs"
        return rows


def write(folder: Path, gb: float) -> int:
    n = int(gb * 2**30) // (SHAPE[0] * SHAPE[1] * SHAPE[2])
    if (folder / MANIFEST_FILE).exists():
        return n
    sizes = {"train": n - 2 * HELD_OUT, "val": HELD_OUT, "test": HELD_OUT}
    source = Split(Synthetic(n), torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0)))
    starts = {"train": 0, "val": sizes["train"], "test": sizes["train"] + HELD_OUT}
    parts = {name: (source, torch.arange(starts[name], starts[name] + sizes[name])) for name in sizes}
    manifest = {"format_version": FORMAT_VERSION, "image_shape": list(SHAPE), "split_sizes": sizes, "max_value": 16}
    began = time.perf_counter()
    write_prepared(folder, parts, manifest)
    print(f"wrote {folder} ({n} images, {gb} GiB) in {time.perf_counter() - began:.0f} s", flush=True)
    return n


def child(folder: str, device: str, train: bool) -> None:
    from genlab.config.experiment import config_from_dict
    from genlab.core.runtime import seed_everything
    from genlab.data import load_prepared
    from genlab.models import DataSpec, build_family
    from genlab.training.loop import NullTracker, fit
    from genlab.training.sources import image_source

    data = load_prepared(folder)
    if not train:
        return
    params = {
        "vae": {"arch": "mlp", "hidden": [64], "latent_dim": 8, "likelihood": "bernoulli"},
        "data": {"binarize": "dynamic"},
        "train": {"epochs": 1, "batch_size": 64},
    }
    cfg = config_from_dict(params)
    seed_everything(cfg.seed, "model_init")
    family = build_family("vae", cfg.family, DataSpec(data.image_shape, 2), torch.device(device))
    began = time.perf_counter()
    fit(family, image_source(data, "dynamic"), cfg.train, cfg.seed, key="bench", tracker=NullTracker())
    print(f"epoch_seconds {time.perf_counter() - began:.1f}")


def measured(folder: Path, device: str, train: bool) -> tuple[float, str]:
    """(peak RSS in GiB, the child's stdout) of a child run under /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", str(folder), "--device", device]
    done = subprocess.run(cmd + (["--train"] if train else []), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"child failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return rss_kib / 2**20, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.device, args.train)
    if not shutil.which("/usr/bin/time"):
        sys.exit("needs /usr/bin/time (GNU time: apt install time)")
    print("| prepared data | images | epoch | peak RSS, training | peak RSS, load only |")
    print("|---|---|---|---|---|")
    for gb in args.gb:
        folder = OUT / f"mapped_{gb:g}gb"
        n = write(folder, gb)
        loaded, _ = measured(folder, args.device, train=False)
        trained, out = measured(folder, args.device, train=True)
        epoch = re.search(r"epoch_seconds ([\d.]+)", out)[1]
        print(f"| {gb:g} GiB | {n} | {epoch} s | {trained:.2f} GiB | {loaded:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
