"""DVC stage `tokenize` (pipelines/tokens/dvc.yaml): a trained tokenizer's token sequences of every split.

    python stages/tokens.py [--tokenizer models/tokenizer.pt]    # not tokenize.py: it would shadow the stdlib

Writes data/tokens/ (token ids and labels per split, and a manifest naming the tokenizer file's md5, its
MLflow run and the data's md5), the training data of a token prior (`maskgit`). Tokens come from the
tokenizer's EMA encoder, deterministically.
"""

import argparse

import genlab  # noqa: F401  (first: it sets OpenMP's spin count, read when torch loads)

# isort: split
import torch

from genlab.config.experiment import load_config
from genlab.core import paths
from genlab.core.errors import CheckpointError
from genlab.core.runtime import resolve_device, use_threads
from genlab.data import FORMAT_VERSION, load_prepared
from genlab.data.checksums import md5_file
from genlab.data.tokens import tokenize_splits, write_tokens
from genlab.evaluation.model_file import load_model, model_run_id
from genlab.models.base import Tokenizer
from genlab.pipeline.stage import run_stage


@torch.no_grad()
def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="models/tokenizer.pt", help="the trained tokenizer's model file")
    path = parser.parse_args().tokenizer
    cfg = load_config(paths.PARAMS)
    use_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_prepared(paths.PREPARED_DIR)
    tokenizer, saved = load_model(path, device, cfg)
    if not isinstance(tokenizer, Tokenizer):
        raise CheckpointError(
            f"{path} holds a {tokenizer.name} model, which makes no tokens: train a tokenizer (flowmo)"
        )
    if saved["data_md5"] != data.checksum:
        raise CheckpointError(f"{path} was trained on data {saved['data_md5']}, not {data.checksum}: retrain it")
    tokens = tokenize_splits(tokenizer, data, device)
    labels = {split: getattr(data, split).labels for split in tokens}
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer_file": str(path),
        "tokenizer_md5": md5_file(path),
        "tokenizer_run": model_run_id(path),
        "data_md5": data.checksum,
        "sequence_length": tokenizer.sequence_length,
        "vocabulary": tokenizer.vocabulary,
        "split_sizes": {split: len(t) for split, t in tokens.items()},
    }
    write_tokens(paths.TOKENS_DIR, tokens, labels, manifest)
    print(
        f"{path}: {tokenizer.sequence_length} tokens of {tokenizer.vocabulary} values per image -> {paths.TOKENS_DIR}"
    )


if __name__ == "__main__":
    run_stage(run)
