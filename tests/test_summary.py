"""The end-of-run summary's words: each rule at its boundaries, and what a run without a number leaves out."""

from __future__ import annotations

import pandas as pd
import pytest

from genlab.core import paths
from genlab.reporting.summary import copy_word, findings, floor_word, progress, render


@pytest.mark.parametrize(
    ("value", "sd", "word"),
    [
        (5.0, 0.5, "at the real-data floor"),  # |5 - 4| <= 2 * hypot(0.5, 0.5)
        (7.9, 0.1, "2.0x the floor, near it"),  # 7.9 / 4 = 1.975 < 2
        (8.0, 0.1, "2.0x the floor, well above it"),
        (19.9, 0.1, "5.0x the floor, well above it"),  # 4.975 < 5
        (20.0, 0.1, "5.0x the floor, far above it"),
    ],
)
def test_a_distance_is_read_against_the_floor_and_its_spread(value, sd, word):
    assert floor_word(value, sd, 4.0, 0.5 if word.startswith("at") else 0.1) == word


def test_copy_z_below_minus_3_means_copying():
    assert copy_word(-3.01).endswith("copies its training data")
    assert copy_word(-3.0).startswith("as close") and copy_word(3.0).startswith("as close")
    assert copy_word(3.01).startswith("farther")


def _history(values):
    return pd.DataFrame({"epoch": range(1, len(values) + 1), "val_loss": values})


def test_training_is_still_improving_settled_or_worse_by_the_last_tenth_against_the_one_before():
    falling = [100 - i for i in range(40)]  # last 4 epochs 4 lower than the 4 before; 5 % of 39 is 1.95
    assert progress(_history(falling)).endswith("still improving, more epochs would help")
    flat = [100 - i for i in range(30)] + [70.0] * 10
    assert progress(_history(flat)).endswith("settled at these settings")
    rising = [100 - i for i in range(30)] + [71.0 + i for i in range(10)]
    assert progress(_history(rising)).endswith("got worse at the end (overfitting or an unstable run)")
    assert "val_loss 66.5 -> 62.5 over the last 8 of 40 points (40 epochs)" in progress(_history(falling))
    # A GAN has no val_loss: its sparse val_domain_fid tells instead; too few points say nothing.
    gan = pd.DataFrame({"epoch": range(1, 9), "val_domain_fid": [None, 40, None, 30, None, 25, None, 24]})
    assert progress(gan).startswith("val_domain_fid 25 -> 24 over the last 2 of 4 points (8 epochs)")
    assert progress(gan.head(6)) is None and progress(pd.DataFrame({"epoch": [1]})) is None


def test_findings_name_only_the_numbers_the_run_has():
    vae = {"domain_fid": 20.0, "domain_fid_std": 3.0, "domain_fid_floor": 4.0, "domain_fid_floor_std": 2.0,
           "domain_rfid": 4.5, "domain_rfid_std": 0.5, "precision": 0.8, "recall": 0.7, "domain_copy_z": -5.0,
           "recon_accuracy": 0.9, "real_accuracy": 0.975, "elbo": -89.1, "bpd": 2.01}  # fmt: skip
    topics = [topic for topic, _ in findings(vae, None)]
    assert topics == ["samples", "samples", "memorisation", "reconstructions", "reconstructions", "likelihood"]
    text = dict(findings(vae, None))
    assert text["memorisation"] == "copy Z -5.0: " + copy_word(-5.0)
    assert text["likelihood"] == "test ELBO -89.10 nats/image (2.010 bits/dim)"
    tokenizer = {"domain_rfid": 4.5, "domain_fid_floor": 4.0, "psnr": 20.0}
    assert [t for t, _ in findings(tokenizer, _history([3, 2, 1, 1]))] == ["reconstructions", "training"]
    ddpm = {"bpd": 1.5, "bpd_std": 0.01}
    assert findings(ddpm, None) == [("likelihood", "test bound 1.500 ± 0.010 bits/dim")]


def test_render_says_where_the_results_are_and_what_to_try_next():
    text = render("vae on digits", [("samples", "FID 1")], paths.model_paths("prior"), "http://x/#/run")
    lines = text.splitlines()
    assert lines[0] == "Summary: vae on digits" and lines[1] == "  samples  FID 1"
    assert "samples-prior/ (figures), metrics/prior/eval.json" in text and "MLflow:  http://x/#/run" in text
    assert "stages/report.py --group --html" in text
    # the prior is the tokens pipeline's: a bare `dvc exp run` would rerun the default experiment instead
    assert "dvc exp run pipelines/tokens/dvc.yaml -S seed=1" in text
    assert "python -m genlab.reporting.replicates --pipeline pipelines/tokens/dvc.yaml --seeds" in text
    default = render("vae on digits", [], paths.model_paths(), None, seed=4)
    assert "dvc exp run dvc.yaml -S seed=5 " in default and "replicates --seeds" in default
