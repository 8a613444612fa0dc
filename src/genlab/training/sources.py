"""What the loop and the evaluate stage draw batches from: images, or the token sequences of a tokenizer.

A family declares which (`FamilyConfig.TOKENS_OF`): by default the prepared images; with an upstream tokenizer
named there, the `tokenize` stage's data/tokens, which must have been made by the very tokenizer file attached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from genlab.core import paths
from genlab.core.errors import DataError
from genlab.data import PreparedData
from genlab.data.prepared import Rows
from genlab.data.tokens import load_tokens
from genlab.models import Family


@dataclass(frozen=True)
class Source:
    """Stored train/val/test arrays (uint8 images, or token ids with the label as last column) and the map
    from a stored batch to the model's input, which may draw noise; batches are gathered by `rows`, which
    reads a large mapped dataset without making it resident."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    to_input: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    rows: Rows = field(default_factory=Rows)


def input_levels(data: PreparedData, binarize: str) -> int:
    """How many discrete values a model input pixel can take."""
    return 2 if binarize == "dynamic" else data.levels


def image_source(data: PreparedData, binarize: str) -> Source:
    """uint8 images -> model input in [0, 1], dynamically binarised (a fresh draw per visit) if asked."""
    if binarize == "dynamic":
        to_input = lambda u8, gen: torch.bernoulli(data.to_unit(u8), generator=gen)  # noqa: E731
    else:
        to_input = lambda u8, gen: data.to_unit(u8)  # noqa: E731
    return Source(data.train.images, data.val.images, data.test.images, to_input, data.rows)


def token_source(tokenizer_md5: str) -> Source:
    """The token sequences in data/tokens (label appended), refused unless made by the tokenizer of that md5."""
    tokens = load_tokens(paths.TOKENS_DIR)
    if tokens.tokenizer_md5 != tokenizer_md5:
        raise DataError(
            f"{paths.TOKENS_DIR} was made by a tokenizer of md5 {tokens.tokenizer_md5}, not by the one attached "
            f"({tokenizer_md5}): tokenize again with `dvc repro {paths.TOKENS_PIPELINE}`"
        )
    return Source(tokens.stored("train"), tokens.stored("val"), tokens.stored("test"), lambda stored, gen: stored)


def source_for(family: Family, data: PreparedData, binarize: str, upstream_md5: dict[str, str]) -> Source:
    """The batches `family` trains and is tested on (its section's `TOKENS_OF`)."""
    tokenizer = family.config_class.TOKENS_OF
    return token_source(upstream_md5[tokenizer]) if tokenizer else image_source(data, binarize)
