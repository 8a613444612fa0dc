"""Token sequences of a trained tokenizer: what the `tokenize` stage writes and a token prior trains on.

data/tokens/ holds, per split, the token ids (N, L) int64 and the labels, in the prepared-data format
(dataset.pt + manifest.json with its md5), and the manifest names the tokenizer file's md5 and the data's,
so a prior trained on them can prove which tokenizer made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genlab.data.prepared import SPLITS, PreparedData, read_tensors, write_tensors
from genlab.core.errors import DataError
from genlab.core.paths import TOKENS_PIPELINE

_FIX = f"run `dvc repro {TOKENS_PIPELINE}` (or `python stages/tokens.py`) to tokenize again"


@dataclass(frozen=True)
class TokenData:
    tokens: dict[str, torch.Tensor]  # split -> (N, L) int64 token ids
    labels: dict[str, torch.Tensor]  # split -> (N,) int64 class labels
    manifest: dict

    @property
    def tokenizer_md5(self) -> str:
        return self.manifest["tokenizer_md5"]

    def stored(self, split: str) -> torch.Tensor:
        """What a token prior trains on: (N, L + 1), the label appended as the last column, so that one
        index picks a sequence and its class together."""
        return torch.cat([self.tokens[split], self.labels[split][:, None]], dim=1)


@torch.no_grad()
def tokenize_splits(tokenizer, data: PreparedData, device: torch.device, batch: int = 500) -> dict[str, torch.Tensor]:
    """Every split's token ids (N, L) on the CPU, from `tokenizer.tokenize` (a genlab Tokenizer) in batches."""
    tokens = {}
    for split in SPLITS:
        images = getattr(data, split).images
        tokens[split] = torch.cat(
            [tokenizer.tokenize(data.to_unit(images[i : i + batch].to(device))).cpu() for i in range(0, len(images), batch)]
        )
    return tokens


def write_tokens(out_dir: str | Path, tokens: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], manifest: dict) -> dict:
    tensors = {f"{split}_{part}": t for split in SPLITS for part, t in (("tokens", tokens[split]), ("labels", labels[split]))}
    return write_tensors(out_dir, tensors, manifest, "token dataset")


def load_tokens(out_dir: str | Path) -> TokenData:
    tensors, manifest = read_tensors(out_dir, "token data", _FIX)
    try:
        tokens = {split: tensors[f"{split}_tokens"] for split in SPLITS}
        labels = {split: tensors[f"{split}_labels"] for split in SPLITS}
    except KeyError as exc:
        raise DataError(f"token data in {out_dir} lacks {exc}: {_FIX}") from None
    for split in SPLITS:
        if tokens[split].shape[1:] != (manifest["sequence_length"],) or int(tokens[split].max()) >= manifest["vocabulary"]:
            raise DataError(f"token data in {out_dir}: split {split} does not match its manifest: {_FIX}")
    return TokenData(tokens, labels, manifest)
