"""The run comparison report, on a throw-away MLflow store with three runs tagged like genlab's."""

from __future__ import annotations

import importlib.util
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from genlab.core.errors import ConfigError, GenlabError
from genlab.reporting import replicates
from genlab.reporting.report import build_report, format_number, to_markdown

from conftest import in_chromium

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

# Experiment "replicates": (vae.beta, seed, commit, status, test metrics), oldest first. beta=1.0 seed 0 runs
# twice at one commit (the newer run counts); beta=0.5 spans two commits; beta=2.0 has one seed; the
# FAILED beta=4.0 run is left out. test/fid differs beyond seed noise, test/elbo does not.
REPLICATES = [
    ("1.0", "0", "a", "FINISHED", {"test/fid": 10.9, "test/elbo": -95.0}),
    ("1.0", "1", "a", "FINISHED", {"test/fid": 11.0, "test/elbo": -91.0}),
    ("1.0", "2", "a", "FINISHED", {"test/fid": 12.0, "test/elbo": -92.0}),
    ("0.5", "0", "a", "FINISHED", {"test/fid": 7.0, "test/elbo": -91.5}),
    ("0.5", "1", "b", "FINISHED", {"test/fid": 8.0, "test/elbo": -90.5}),
    ("0.5", "2", "b", "FINISHED", {"test/fid": 9.5, "test/elbo": -92.0}),
    ("2.0", "0", "b", "FINISHED", {"test/fid": 13.0, "test/elbo": -89.0}),
    ("4.0", "0", "b", "FAILED", {"test/fid": 99.0, "test/elbo": -99.0}),
    ("1.0", "0", "a", "FINISHED", {"test/fid": 10.0, "test/elbo": -90.0}),
]
FID = {"1.0": [11.0, 12.0, 10.0], "0.5": [7.0, 8.0, 9.5], "2.0": [13.0]}  # what each group counts
ELBO = {"1.0": [-91.0, -92.0, -90.0], "0.5": [-91.5, -90.5, -92.0], "2.0": [-89.0]}


def _log_replicates(client, root: Path) -> None:
    from mlflow.entities import Metric, Param

    experiment = client.create_experiment("replicates", artifact_location=(root / "replicates").as_uri())
    for i, (beta, seed, commit, status, test) in enumerate(REPLICATES):
        tags = {"genlab.git_commit": commit * 40, "genlab.family": "vae", "genlab.dataset": "digits"}
        run = client.create_run(experiment, run_name=f"beta={beta}", start_time=1_700_000_000_000 + i, tags=tags)
        params = {"seed": seed, "vae.beta": beta, "train.epochs": "2"}
        # A per-run spread (reported, never tested) and a setting (equal in every run).
        test = {**test, "test/fid_std": 0.1 * (i + 1), "test/num_samples": 359.0}
        metrics = [Metric(k, v, 0, 0) for k, v in test.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id, status)


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
        for figure in FIGURES.get(name, ()):
            client.log_artifact(run_id, str(_png(root / name / figure, i)), "samples")
        client.set_terminated(run_id, "FINISHED")
    _log_replicates(client, root)
    return uri


FIGURES = {"exp-a": ("samples.png", "reconstructions.png"), "exp-b": ("samples.png",)}  # exp-c logged none


def _png(path: Path, shade: int) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20 + shade, 10), color=60 * shade).save(path)
    return path


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
    from genlab.reporting import report
    from genlab.tracking import store

    assert report.EXPERIMENT == store.EXPERIMENT


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


def test_groups_pool_seeds_of_finished_runs(store, tmp_path):
    build_report(store, experiment="replicates", group=True, out_dir=tmp_path)
    for f in ("groups.csv", "groups.md", "verdicts.csv", "verdicts.md", "runs.csv"):
        assert (tmp_path / f).stat().st_size > 0, f
    groups = pd.read_csv(tmp_path / "groups.csv", dtype={"vae.beta": str, "seeds": str})
    # Ordered by each group's oldest run; seed and the constant train.epochs define no group.
    assert list(groups["group"]) == ["beta=1.0", "beta=0.5", "beta=2.0"]
    assert list(groups["vae.beta"]) == ["1.0", "0.5", "2.0"] and "seed" not in groups and "train.epochs" not in groups
    assert list(groups["n"]) == [3, 3, 1] and list(groups["seeds"]) == ["0 1 2", "0 1 2", "0"]
    assert list(groups["commits"]) == [1, 2, 1] and list(groups["reruns"]) == [1, 0, 0]
    for i, beta in enumerate(["1.0", "0.5"]):
        assert groups.loc[i, "test/elbo_mean"] == pytest.approx(statistics.mean(ELBO[beta]))
        assert groups.loc[i, "test/fid_mean"] == pytest.approx(statistics.mean(FID[beta]))
        assert groups.loc[i, "test/fid_sd"] == pytest.approx(statistics.stdev(FID[beta]))  # ddof=1
        assert groups.loc[i, "test/fid_n"] == 3
    assert groups.loc[2, "test/fid_mean"] == 13.0 and math.isnan(groups.loc[2, "test/fid_sd"])  # n=1: no sd, not 0
    assert groups.loc[0, "test/num_samples_sd"] == 0.0
    md = (tmp_path / "groups.md").read_text()
    assert md.splitlines()[0].startswith("| group | n | seeds | commits | reruns | test/elbo (mean ± sd) |")
    assert "| beta=2.0 | 1 | 0 | 1 | 0 | -89 ± n/a | 13 ± n/a |" in md
    assert "| beta=1.0 | 3 | 0 1 2 | 1 | 1 | -91 ± 1 | 11 ± 1 |" in md


def test_verdicts_match_scipy_welch(store, tmp_path):
    from scipy import stats

    build_report(store, experiment="replicates", group=True, out_dir=tmp_path)
    verdicts = pd.read_csv(tmp_path / "verdicts.csv").set_index(["group", "metric"])
    assert set(verdicts["baseline"]) == {"beta=1.0"}  # default: the group of the oldest run
    assert {m for _, m in verdicts.index} == {"test/elbo", "test/fid", "test/num_samples"}  # no *_std
    ref = stats.ttest_ind(FID["0.5"], FID["1.0"], equal_var=False)
    ci = ref.confidence_interval(0.95)
    fid = verdicts.loc[("beta=0.5", "test/fid")]
    assert fid["diff"] == pytest.approx(statistics.mean(FID["0.5"]) - statistics.mean(FID["1.0"]))
    assert (fid["ci_low"], fid["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert (fid["p"], fid["dof"]) == (pytest.approx(ref.pvalue), pytest.approx(ref.df))
    assert ref.pvalue < 0.05 and fid["significant"]
    half = (ci.high - ci.low) / 2
    assert fid["verdict"] == (  # 2.833 ± 2.629 rounded to two digits of the half-width
        f"beta=0.5 lower test/fid than beta=1.0 by 2.8 ± {half:.1f} (95 % CI, Welch p = {ref.pvalue:.2g}, n = 3 + 3)"
    )
    elbo = verdicts.loc[("beta=0.5", "test/elbo")]
    assert elbo["p"] == pytest.approx(stats.ttest_ind(ELBO["0.5"], ELBO["1.0"], equal_var=False).pvalue)
    assert not elbo["significant"] and "no difference in test/elbo beyond seed noise" in elbo["verdict"]
    single = verdicts.loc[("beta=2.0", "test/fid")]
    assert single["verdict"] == "beta=2.0 vs beta=1.0: needs ≥ 2 seeds per group to compare test/fid (n = 3 + 1)"
    assert math.isnan(single["p"]) and math.isnan(single["ci_low"])
    assert "equal in every run" in verdicts.loc[("beta=0.5", "test/num_samples"), "verdict"]
    assert [replicates._fmt(x, 0) for x in (-0.04, -0.6, 2.5)] == ["0", "-1", "2"]
    # A stricter alpha turns the same difference into seed noise, with a 99.9 % interval.
    build_report(store, experiment="replicates", group=True, alpha=0.001, out_dir=tmp_path)
    strict = pd.read_csv(tmp_path / "verdicts.csv").set_index(["group", "metric"]).loc[("beta=0.5", "test/fid")]
    assert "no difference in test/fid beyond seed noise" in strict["verdict"] and "99.9 % CI" in strict["verdict"]
    assert strict["ci_high"] - strict["ci_low"] > ci.high - ci.low


def test_baseline_selection(store, tmp_path):
    table = build_report(store, experiment="replicates", baseline=["vae.beta=0.5"], out_dir=tmp_path)
    assert len(table) == 9  # the runs table still lists every run, failed and rerun included
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert set(verdicts["baseline"]) == {"beta=0.5"} and set(verdicts["group"]) == {"beta=1.0", "beta=2.0"}
    build_report(store, experiment="replicates", baseline=["vae.beta=1"], out_dir=tmp_path)  # 1 finds "1.0"
    assert set(pd.read_csv(tmp_path / "verdicts.csv")["baseline"]) == {"beta=1.0"}
    bad = {
        "vae.beta=3.0": r"selects no group; it must select one of: beta=1\.0; beta=0\.5; beta=2\.0",
        "vae.lr=0.1": r"'vae.lr' does not tell the groups apart.*differ in: vae.beta",
        "seed=0": "cannot select by seed",
        "vae.beta": "expected KEY=VALUE",
    }
    for spec, message in bad.items():
        with pytest.raises(GenlabError, match=message):
            build_report(store, experiment="replicates", baseline=[spec], out_dir=tmp_path / "out")
    with pytest.raises(GenlabError, match="--alpha 1.5: expected a significance level between 0 and 1"):
        build_report(store, experiment="replicates", group=True, alpha=1.5, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_queue_helper_builds_dvc_commands(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    commands = replicates.main(["--seeds", "0", "1", "2", "-S", "vae.beta=0.5", "-n", "b05", "--dry-run"])
    assert commands == [
        ["dvc", "exp", "run", "--queue", "dvc.yaml", "-S", f"seed={k}", "-S", "vae.beta=0.5", "-n", f"b05-seed{k}"]
        for k in (0, 1, 2)
    ]
    out = capsys.readouterr().out.splitlines()[0]
    assert out == "dvc exp run --queue dvc.yaml -S seed=0 -S vae.beta=0.5 -n b05-seed0"
    tokens = replicates.main(
        ["--pipeline", "pipelines/tokens/dvc.yaml", "--seeds", "1", "-S", "maskgit.depth=6", "--dry-run"]
    )
    assert tokens == [
        ["dvc", "exp", "run", "--queue", "pipelines/tokens/dvc.yaml", "-S", "seed=1", "-S", "maskgit.depth=6"]
    ]
    with pytest.raises(GenlabError, match="--pipeline pipelines/dvc.yaml: no such file in .*; expected dvc.yaml or"):
        replicates.main(["--pipeline", "pipelines/dvc.yaml", "--seeds", "1", "--dry-run"])
    bad = {
        ("--seeds", "-1"): r"'-1' is not a seed: expected an integer in \[0, 4294967295\]",
        ("--seeds", "1.5"): "'1.5' is not a seed",
        ("--seeds", "1", "01"): "a seed is repeated",
        ("--seeds", "1", "-S", "seed=2"): "give seeds with --seeds",
        ("--seeds", "1", "-S", "vae.beta"): "expected KEY=VALUE",
    }
    for argv, message in bad.items():
        with pytest.raises(GenlabError, match=message):
            replicates.main([*argv, "--dry-run"])
    with pytest.raises(ConfigError, match="vae.bta"):  # params.yaml with the overrides is validated up front
        replicates.main(["--seeds", "0", "-S", "vae.bta=0.5", "--dry-run"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GenlabError, match="not inside a DVC repository"):
        replicates.main(["--seeds", "0", "--dry-run"])


def test_cli_group(store, tmp_path, capsys):
    args = ["--tracking-uri", store, "--out", str(tmp_path), "--experiment", "replicates"]
    _cli_module().run([*args, "--baseline", "vae.beta=1.0", "--metrics", "test/fid"])
    out = capsys.readouterr().out
    assert "beta=0.5 lower test/fid than beta=1.0 by" in out and "needs ≥ 2 seeds" in out
    assert "groups.csv, groups.md, verdicts.csv, verdicts.md" in out


def _page(path: Path) -> str:
    text = path.read_text()
    assert "http://" not in text and "https://" not in text and "src=" not in text.replace('src="data:', "")
    return text


def test_html_page_has_a_row_and_the_grids_of_every_run(store, tmp_path):
    table = build_report(store, out_dir=tmp_path, html=True)
    page = _page(tmp_path / "runs.html")
    metrics = page.split('<table id="metrics">')[1].split("</table>")[0]
    assert metrics.count("<tr>") == 1 + len(table) == 4  # header + one row per run
    figures = page.split('<table id="figures">')[1].split("</table>")[0]
    rows = figures.split("<tbody>")[1].split("<tr>")[1:]
    assert [row.count("<img") for row in rows] == [2, 1, 0]  # exp-a both grids, exp-b samples, exp-c none
    assert [row.count(">none<") for row in rows] == [0, 1, 2]
    assert 'id="curves"' in page  # val/elbo of exp-a and exp-b overlaid
    assert '<table id="groups">' not in page


def test_html_page_folds_spreads_and_shows_groups_and_verdicts(store, tmp_path):
    build_report(store, experiment="replicates", baseline=["vae.beta=1.0"], metrics=["test/fid*"], out_dir=tmp_path,
                 html=True)  # fmt: skip
    page = _page(tmp_path / "runs.html")
    head = page.split('<table id="metrics">')[1].split("</thead>")[0]
    assert "<th>test/fid ± sd</th>" in head and "test/fid_std" not in head
    assert "<td>10.90 ± 0.1</td>" in page  # the first run: test/fid 10.9, test/fid_std 0.1
    assert '<table id="groups">' in page and "beta=0.5 lower test/fid than beta=1.0 by" in page
    assert 'id="curves"' not in page and "no run logged a per-epoch metric" in page


def test_cli_html_logs_the_report_to_a_comparison_run(store, tmp_path, capsys):
    from mlflow import MlflowClient

    _cli_module().run(["--tracking-uri", store, "--out", str(tmp_path), "--dataset", "digits", "--html"])
    assert "runs.html" in capsys.readouterr().out
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("genlab-reports")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    digits = build_report(store, dataset="digits", out_dir=tmp_path / "again").attrs["run_ids"]
    assert run.data.tags["genlab.compared_runs"] == ",".join(digits)
    stored = {Path(a.path).name: a.file_size for a in client.list_artifacts(run.info.run_id, "report")}
    assert stored == {f.name: f.stat().st_size for f in tmp_path.iterdir() if f.is_file()}
    assert set(stored) == {"runs.csv", "runs.md", "runs.png", "runs.html"}
    assert len(build_report(store, out_dir=tmp_path / "after")) == 3  # the comparison run is not a run compared


def test_html_page_in_a_real_browser(store, tmp_path):
    """Every image of the page loads and the metrics table has one row per run, as Chromium renders it offline."""
    table = build_report(store, out_dir=tmp_path, html=True)
    images, rows, grids = in_chromium(
        tmp_path / "runs.html",
        """[[...document.images].map(e => [e.complete, e.naturalWidth]),
            document.querySelectorAll("#metrics tbody tr").length,
            [...document.querySelectorAll("#figures img")].map(e => e.naturalWidth)]""",
    )
    assert len(images) == 4 and all(done and width > 0 for done, width in images), images
    assert rows == len(table) == 3
    assert grids == [20, 20, 21]  # the logged PNGs, decoded: exp-a's two (20 px wide), exp-b's one (21 px)


def test_make_show_keeps_the_active_familys_params_and_the_key_test_numbers():
    import re

    from genlab.pipeline.show import active_family, columns

    assert active_family((REPO / "params.yaml").read_text()) == "vae"
    assert active_family("model: {family: gan}\n") == "gan" and active_family("") == "vae"
    keep = re.compile(columns("gan"))
    kept = ["Experiment", "Created", "seed", "data.name", "train.epochs", "gan.loss", "gan.width", "test.domain_fid",
            "test.precision", "test.domain_copy_z"]  # fmt: skip
    dropped = ["vae.beta", "classifier.epochs", "test.domain_fid_std", "test.domain_kid", "train.loss", "my_seed"]
    assert [c for c in kept + dropped if keep.search(c)] == kept
