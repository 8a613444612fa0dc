"""The bidirectional transformer of a MaskGIT prior (Chang et al. 2022) over discrete token sequences.

Inputs are token ids in [0, V) plus one [MASK] id V; outputs are logits over the V real tokens at every
position, so the network can never predict [MASK]. Class conditioning, when asked for, prepends one class
token to the sequence, as MaskGIT and TiTok's generator do: every position reads the class through attention
as it reads any other token, and the token embeddings stay free of a class offset. That costs one position;
adding the class embedding to every token instead would save it but mixes the class into each token's
identity. The class table has one extra "null class" row, id num_classes, for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MLP_RATIO = 4
INIT_STD = 0.02  # embeddings and positions, as BERT and TiTok's generator


class MaskedTokenTransformer(nn.Module):
    """Pre-norm transformer encoder without a causal mask: (N, L) tokens, (N,) labels → (N, L, V) logits."""

    def __init__(
        self,
        sequence_length: int,
        vocabulary: int,
        width: int,
        depth: int,
        heads: int,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.sequence_length = sequence_length
        self.vocabulary = vocabulary
        self.num_classes = num_classes
        self.token_embedding = nn.Embedding(vocabulary + 1, width)  # + [MASK]
        self.position_embedding = nn.Parameter(torch.zeros(1, sequence_length, width))
        # The class token needs no position: its own embedding table already sets it apart.
        self.class_embedding = nn.Embedding(num_classes + 1, width) if num_classes else None
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=MLP_RATIO * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Pre-norm blocks leave the residual stream unnormalised, hence the final LayerNorm.
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.readout = nn.Linear(width, vocabulary)
        tables = [self.token_embedding.weight, self.position_embedding]
        if self.class_embedding is not None:
            tables.append(self.class_embedding.weight)
        for table in tables:
            nn.init.trunc_normal_(table, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    @property
    def mask_id(self) -> int:
        """The [MASK] input id: one past the real vocabulary."""
        return self.vocabulary

    @property
    def null_class(self) -> int | None:
        """The label meaning "no class" (classifier-free guidance), or None for an unconditional network."""
        return self.num_classes if self.num_classes else None

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, L, V) for (N, L) int64 tokens that may hold `mask_id`; labels (N,) or None.

        A class-conditional network given no labels uses the null class; an unconditional one refuses labels.
        """
        if tokens.shape[1] != self.sequence_length:
            raise ValueError(f"expected sequences of {self.sequence_length} tokens, got {tokens.shape[1]}")
        x = self.token_embedding(tokens) + self.position_embedding
        if self.class_embedding is not None:
            if labels is None:
                labels = tokens.new_full((tokens.shape[0],), self.num_classes)
            x = torch.cat([self.class_embedding(labels)[:, None], x], dim=1)
        elif labels is not None:
            raise ValueError("this network is unconditional (num_classes = 0) but was given labels")
        x = self.encoder(x)
        return self.readout(x[:, -self.sequence_length :])

    def logits_fn(self, labels: torch.Tensor | None = None) -> Callable[[torch.Tensor, bool], torch.Tensor]:
        """genlab.processes.masked_tokens' `logits_fn(tokens, conditional)` for fixed labels: conditional=False
        swaps in the null class, which classifier-free guidance needs."""

        def logits(tokens: torch.Tensor, conditional: bool) -> torch.Tensor:
            return self(tokens, labels if conditional else None)

        return logits
