"""The run comparison report, on a throw-away MLflow store with three runs tagged like genlab's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from genlab.errors import GenlabError
from genlab.report import build_report, format_number, to_markdown

REPO = Path(__file__).resolve().parents[1]

# name -> (tags, params, test metrics, val/elbo per epoch)
RUNS = {
    "exp-a": (
        {"genlab.dataset": "digits", "genlab.family": "vae"},
        {"vae.latent_dim": "4"},
        {"test/elbo": -24.2783, "test/bpd": 0.5473},
        [-30.0, -26.5, -25.125],
    ),
    "exp-b": (
        {"genlab.dataset": "digits", "genlab.family": "vae"},
        {"vae.latent_dim": "8"},
        {"test/elbo": -22.5, "test/bpd": 0.5071},
        [-29.0, -23.75],
    ),
    "exp-c": (
        {"genlab.dataset": "mnist", "genlab.family": "gan"},
        {"vae.latent_dim": "8"},
        {"test/fid": 12.345678},
        [],
    ),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("genlab", artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other", artifact_location=(root / "other").as_uri())
    for i, (name, (tags, params, test, val_elbo)) in enumerate(RUNS.items()):
        run = client.create_run(
            experiment,
            run_name=name,
            start_time=1_700_000_000_000 + i * 60_000,
            tags={**tags, "dvc.exp_name": name, "genlab.git_commit": f"{i}" * 40, "genlab.git_dirty": "false"},
        )
        run_id = run.info.run_id
        all_params = {"seed": "0", "train.epochs": str(max(len(val_elbo), 1)), **params}
        metrics = [Metric("val/elbo", v, 0, step) for step, v in enumerate(val_elbo)]
        metrics += [Metric(k, v, 0, 0) for k, v in test.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in all_params.items()])
        client.set_terminated(run_id, "FINISHED")
    return uri


def test_all_runs_key_params_and_files(store, tmp_path):
    table = build_report(store, out_dir=tmp_path)
    assert list(table["dvc_exp"]) == ["exp-a", "exp-b", "exp-c"]  # oldest first
    assert list(table["run_name"]) == ["exp-a", "exp-b", "exp-c"]
    assert list(table["commit"]) == ["00000000", "11111111", "22222222"]
    assert set(table["status"]) == {"FINISHED"} and set(table["dirty"]) == {"false"}
    # Key params: those that differ, plus train.epochs; seed is the same everywhere.
    assert "vae.latent_dim" in table and "train.epochs" in table and "seed" not in table
    assert [c for c in table.columns if "/" in c] == ["test/bpd", "test/elbo", "test/fid", "val/elbo"]
    for f in ("runs.csv", "runs.md", "runs.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_holds_the_logged_values(store, tmp_path):
    build_report(store, out_dir=tmp_path)
    csv = pd.read_csv(tmp_path / "runs.csv").set_index("dvc_exp")
    for name, (_, params, test, val_elbo) in RUNS.items():
        for key, value in test.items():
            assert csv.loc[name, key] == value, (name, key)
        if val_elbo:
            assert csv.loc[name, "val/elbo"] == val_elbo[-1]  # the final epoch's value
        else:
            assert pd.isna(csv.loc[name, "val/elbo"])
        assert str(csv.loc[name, "vae.latent_dim"]) == params["vae.latent_dim"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"dataset": "digits"}, ["exp-a", "exp-b"]),
        ({"family": "gan"}, ["exp-c"]),
        ({"dvc_exp": "exp-b"}, ["exp-b"]),
        ({"dvc_exp": "exp-%"}, ["exp-a", "exp-b", "exp-c"]),
        ({"dataset": "digits", "dvc_exp": "exp-a"}, ["exp-a"]),
    ],
)
def test_filters(store, tmp_path, filters, expected):
    table = build_report(store, out_dir=tmp_path, **filters)
    assert list(table["dvc_exp"]) == expected


def test_metric_selection_and_markdown(store, tmp_path):
    table = build_report(store, dataset="digits", metrics=["val/elbo", "test/e*"], out_dir=tmp_path)
    assert [c for c in table.columns if "/" in c] == ["val/elbo", "test/elbo"]
    assert "test/fid" not in table  # absent from the digits runs, so not a default column either
    assert "vae.latent_dim" in table  # differs between exp-a and exp-b
    md = (tmp_path / "runs.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("| run | run_name | dvc_exp |") and len(lines) == 2 + 2
    assert "| -25.12 | -24.28 |" in md  # rounded to 4 significant digits
    with pytest.raises(GenlabError, match="no selected run has a metric matching 'test/nope'"):
        build_report(store, metrics=["test/nope"], out_dir=tmp_path / "x")


def test_no_match_is_a_clear_error_and_writes_nothing(store, tmp_path):
    with pytest.raises(GenlabError, match="no run in experiment 'genlab'.*dataset=cifar10"):
        build_report(store, dataset="cifar10", out_dir=tmp_path / "out")
    with pytest.raises(GenlabError, match="experiment 'nope'.*genlab, other"):
        build_report(store, experiment="nope", out_dir=tmp_path / "out")
    with pytest.raises(GenlabError, match="no run in experiment 'other'.*empty"):
        build_report(store, experiment="other", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_format_number():
    assert [format_number(v) for v in (1000.0, -24.27835, 0.54729, 2.96601, 12345.678, float("nan"), 3)] == [
        "1000",
        "-24.28",
        "0.5473",
        "2.966",
        "12345.7",
        "",
        "3",
    ]
    assert to_markdown(pd.DataFrame({"a|b": ["x|y"], "m": [0.5]})).splitlines()[2] == "| x\\|y | 0.5 |"


def test_experiment_default_matches_tracking():
    from genlab import report, tracking

    assert report.EXPERIMENT == tracking.EXPERIMENT


def _cli_module():
    spec = importlib.util.spec_from_file_location("report_stage", REPO / "stages" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(store, tmp_path, capsys):
    args = ["--tracking-uri", store, "--out", str(tmp_path)]
    _cli_module().run([*args, "--family", "vae", "--metrics", "test/*"])
    assert "2 run(s)" in capsys.readouterr().out and (tmp_path / "runs.png").is_file()
    assert list(pd.read_csv(tmp_path / "runs.csv")["dvc_exp"]) == ["exp-a", "exp-b"]
    # As a program: a GenlabError is one line on stderr and exit status 2.
    bad = subprocess.run(
        [sys.executable, "stages/report.py", *args, "--dvc-exp", "missing"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: no run in experiment 'genlab'"), bad.stderr
