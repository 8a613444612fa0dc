"""The real pipeline end to end: dvc + MLflow on a tiny config in a temporary git copy."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from genlab.core import paths
from genlab.data.checksums import md5_file

from conftest import Project, assert_one_point_per_step, in_chromium

pytestmark = pytest.mark.slow
EPOCHS = 3
STEPS = list(range(1, EPOCHS + 1))  # epochs count from 1: console, CSV, MLflow steps and DVC plots agree
IMAGE_STEPS = {0, *STEPS}  # + the untrained model at step 0, where MLflow's image cards open


def _image_steps(client, run_id: str) -> dict[str, set[int]]:
    steps: dict[str, set[int]] = {}
    for item in client.list_artifacts(run_id, "images"):
        match = re.match(r"images/(\w+)\+step\+(\d+)\+.*(?<!compressed)\.png$", item.path)
        if match:
            steps.setdefault(match[1], set()).add(int(match[2]))
    return steps


def test_dvc_repro_writes_outputs_and_a_complete_mlflow_run(reproduced, repro_output):
    project, printed = reproduced, repro_output  # the session's one repro of the tiny experiment, then committed
    root = project.root
    for rel in [
        "data/prepared/images.u8",
        "data/prepared/labels.i64",
        "data/prepared/manifest.json",
        "models/model.pt",
        "models/classifier.pt",
        "metrics/classifier.json",
        "metrics/train.json",
        "metrics/train_history.csv",
        "metrics/eval.json",
        *(
            f"samples/{n}.png"
            for n in (
                "samples",
                "reconstructions",
                "interpolation_linear",
                "interpolation_slerp",
                "latent_map",
                "class_histogram",
                "curves",
            )
        ),
    ]:
        assert (root / rel).is_file(), rel

    history = pd.read_csv(root / "metrics/train_history.csv")
    assert list(history["epoch"]) == STEPS
    elbo = pd.read_csv(root / "metrics/curves/elbo.csv")
    assert list(elbo.columns) == ["epoch", "train", "val"] and elbo["val"].tolist() == history["val_elbo"].tolist()
    test = json.loads((root / "metrics/eval.json").read_text())["test"]
    assert test["elbo"] == pytest.approx(-(test["recon"] + test["kl"]))
    assert test["iw_nll"] <= -test["elbo"]  # the importance-weighted bound is the tighter one
    for name in (
        "domain_fid",
        "domain_fid_floor",
        "domain_fid_inf",
        "domain_kid",
        "domain_kid_floor",
        "domain_is",
        "precision",
        "recall",
        "density",
        "coverage",
        "domain_copy_z",
        "domain_copy_share",
        "psnr",
        "ssim",
        "domain_rfid",
        "domain_rkid",
        "recon_accuracy",
        "real_accuracy",
    ):
        assert test[name] == test[name] and test[f"{name}_std"] >= 0, name  # present, not NaN, with a spread
    assert min(test["domain_fid_std"], test["domain_kid_std"], test["psnr_std"]) > 0
    assert test["num_samples"] == 100 and test["bootstrap_resamples"] == 50 and 1 <= test["domain_is"] <= 10
    assert 0 <= test["recon_accuracy"] <= 1 and test["real_accuracy"] > 0.5

    client = project.mlflow()
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.data.tags["genlab.model_md5"] == md5_file(root / "models/model.pt")  # how evaluate/sample find it
    for split in ("train", "val"):
        for name in ("loss", "elbo", "recon", "kl", "bpd"):
            metric = client.get_metric_history(run_id, f"{split}/{name}")
            assert sorted(m.step for m in metric) == STEPS, f"{split}/{name}"
            assert metric[-1].value == pytest.approx(history[f"{split}_{name}"].iloc[-1])
    for name, value in test.items():
        assert run.data.metrics[f"test/{name}"] == pytest.approx(value)
    assert _image_steps(client, run_id) == {"samples": IMAGE_STEPS, "reconstructions": IMAGE_STEPS}

    head = project.run("git", "rev-parse", "HEAD~1").stdout.strip()  # the commit the repro ran on
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    tags = run.data.tags
    assert tags["genlab.git_commit"] == head and tags["mlflow.source.git.commit"] == head
    assert tags["genlab.git_dirty"] == "false"
    assert tags["genlab.data_md5"] == manifest["prepared_md5"]
    assert (tags["genlab.family"], tags["genlab.dataset"]) == ("vae", "digits")
    machine = json.loads((root / "metrics/machine.json").read_text())  # which machine kind made these numbers
    assert tags["machine.aten_capability"] == machine["aten_capability"] and tags["machine.threads"] == str(
        machine["threads"]
    )
    assert run.data.params["vae.latent_dim"] == "3" and run.data.params["train.epochs"] == str(EPOCHS)
    # Only the params the run read: the active family's training keys, no gan.*, ddpm.* or evaluation knobs.
    assert not any(k.startswith(("gan.", "ddpm.", "evaluate.", "sample.", "classifier.")) for k in run.data.params)
    assert "vae.iw_samples" not in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for d in ("model_file", "samples", "environment") for a in client.list_artifacts(run_id, d)
    }
    assert {"model_file/model.pt", "samples/latent_map.png", "environment/requirements.txt", "summary.md"} <= artifacts
    # The pipeline ends with the run's summary: printed, and on the run's page (its description).
    summary = Path(client.download_artifacts(run_id, "summary.md", str(root / "summary"))).read_text()
    assert summary.startswith(f"Summary: vae on digits, {EPOCHS} epochs, seed 0") and summary in printed
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}/model-metrics"
    assert f"MLflow:  {page}" in summary
    assert "FID" in summary and "real-data floor" in summary and summary in tags["mlflow.note.content"]
    # The model as an MLflow model: loadable without the repository, registered as a version per family and dataset.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    images = logged.sample(5)
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    (version,) = client.search_model_versions("name='genlab-vae-digits'")
    assert version.run_id == run_id
    freeze = client.download_artifacts(run_id, "environment/requirements.txt", str(root / "freeze"))
    assert "torch==" in Path(freeze).read_text()
    assert run.info.status == "FINISHED"

    # Nothing changed: a second repro runs no stage. A stage reruns only when a key it reads changes.
    again = project.run("dvc", "repro").stdout
    assert "Running stage" not in again, again
    for change, reruns in [
        ({"sample": {"n": 9}}, {"sample"}),
        ({"gan": {"width": 16}, "ddpm": {"sampler_steps": 3}}, set()),  # other families' keys: nothing
        ({"vae": {"iw_samples": 8}}, {"evaluate", "sample"}),  # an evaluation knob: no retraining (sample: summary)
        ({"classifier": {"epochs": 1}}, {"classifier", "train", "evaluate", "sample"}),
    ]:
        project.set_params(change)
        out = project.run("dvc", "repro").stdout
        ran = set(re.findall(r"Running stage '(\w+)'", out)) - {"validate"}
        assert ran == reruns, (change, out)


def test_an_untouched_fresh_clone_retrains_to_a_clean_checkout_and_a_clean_run(reproduced, tmp_path):
    """`make run` on a fresh clone: no DVC cache, so train retrains; its outputs hold no random run id, so
    dvc.lock stays as committed and the run is not dirty. The README's reset recipe then restores an
    experiment's workspace, and neither command mentions pipelines/tokens, which never ran."""
    project = reproduced  # results committed
    clone = Project(tmp_path / "clone")
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    assert "Running stage 'train'" in clone.run("dvc", "repro").stdout
    assert clone.run("git", "status", "--porcelain").stdout == ""
    client = clone.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert run.data.tags["genlab.git_dirty"] == "false"
    assert "samples/samples.png" in {a.path for a in client.list_artifacts(run.info.run_id, "samples")}

    samples = (clone.root / "samples/samples.png").read_bytes()
    exp = clone.run("dvc", "exp", "run", "dvc.yaml", "-S", "sample.n=9")
    assert (clone.root / "samples/samples.png").read_bytes() != samples
    reset = clone.run("bash", "-c", "git checkout . && dvc checkout dvc.yaml")
    for out in (exp, reset):
        assert "No file hash info" not in out.stdout + out.stderr, out.stderr
    assert (clone.root / "samples/samples.png").read_bytes() == samples
    assert "Running stage" not in clone.run("dvc", "repro").stdout.replace("Running stage 'validate'", "")
    assert clone.run("git", "status", "--porcelain").stdout == ""


def test_exp_run_is_listed_by_exp_show_and_logged_to_the_main_store(reproduced):
    reproduced.run("dvc", "exp", "run", "-S", "vae.latent_dim=2")
    rows = json.loads(reproduced.run("dvc", "exp", "show", "--json").stdout)
    found = []
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data", {})
                latent = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("vae", {}).get("latent_dim")
                if latent == 2:
                    found.append(data["metrics"]["metrics/eval.json"]["data"]["test"]["elbo"])
    assert len(found) == 1, json.dumps(rows)[:2000]
    reproduced.run("dvc", "metrics", "diff")

    client = reproduced.mlflow()
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    exp_runs = [r for r in runs if r.data.tags.get("dvc.exp_name")]
    assert len(runs) == 2 and len(exp_runs) == 1
    assert exp_runs[0].data.params["vae.latent_dim"] == "2"
    assert exp_runs[0].data.metrics["test/elbo"] == pytest.approx(found[0])

    # The sample figures are image plots: the two experiments' grids side by side on one page.
    name = exp_runs[0].data.tags["dvc.exp_name"]
    reproduced.run("dvc", "plots", "diff", "HEAD", name, "-o", "plots_out")
    page = (reproduced.root / "plots_out" / "index.html").read_text()
    grids = {rev: reproduced.root / "plots_out" / "static" / f"{rev}_samples_samples.png" for rev in ("HEAD", name)}
    assert all(f'src="static/{path.name}"' in page for path in grids.values()), page[:2000]
    assert grids["HEAD"].read_bytes() != grids[name].read_bytes()  # each experiment's own grid
    # Offline too: with genlab's template (make setup) the page inlines Vega, and Chromium draws every curve
    # and image with the network refused.
    reproduced.run(sys.executable, "-m", "genlab.pipeline.offline_plots")
    reproduced.run("dvc", "plots", "diff", "HEAD", name, "-o", "plots_out")
    drawn, images, broken = in_chromium(
        reproduced.root / "plots_out" / "index.html",
        """[document.querySelectorAll(".vega-embed canvas, .vega-embed svg").length,
            document.images.length, [...document.images].filter(e => !e.naturalWidth).length]""",
        settle_s=1,
    )
    curves = len(list((reproduced.root / "metrics" / "curves").glob("*.csv")))
    assert drawn >= curves > 0 and images >= 2 and broken == 0, (drawn, curves, images, broken)


def test_four_queued_experiments_two_at_a_time_all_land_complete_in_the_main_store(reproduced):
    betas = ("0.5", "1.5", "2.0", "3.0")
    for beta in betas:
        reproduced.run("dvc", "exp", "run", "--queue", "-S", f"vae.beta={beta}")
    status = reproduced.run_queue(jobs=2)
    assert status.count("Success") == 4, status
    client = reproduced.mlflow()
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    queued = [r for r in runs if r.data.tags.get("dvc.exp_name")]
    assert sorted(r.data.params["vae.beta"] for r in queued) == list(betas)
    for run in runs:  # the SQLite store, written by two experiments at once, holds every run whole
        assert run.info.status == "FINISHED" and "test/elbo" in run.data.metrics
        assert_one_point_per_step(client, run, EPOCHS)


def test_killed_training_resumes_to_the_same_final_metrics(project):
    project.set_params({"train": {"epochs": 40}})
    project.stage("download")
    project.stage("train")
    expected = {p: (project.root / p).read_text() for p in ("metrics/train.json", "models/model-history.json")}
    for p in expected:
        (project.root / p).unlink()
    ckpt, marker = project.root / "checkpoints" / "train.pt", project.root / "checkpoints" / "run.json"
    finished = json.loads(marker.read_text())  # the final checkpoint stays, marked finished: nothing to resume
    assert finished["finished"] and torch.load(ckpt, weights_only=True)["run_id"] == finished["run_id"]

    proc = project.popen("python", "stages/train.py")
    while proc.poll() is None and not (
        ckpt.exists() and json.loads(marker.read_text())["run_id"] != finished["run_id"]
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    assert proc.returncode == -signal.SIGKILL and 1 <= killed_at < 40, proc.stdout.read()
    assert not (project.root / "metrics/train.json").exists()

    project.set_params({"train": {"resume": True}})
    out = project.stage("train").stdout
    assert f"resuming from checkpoints/train.pt after epoch {killed_at}" in out
    for path, text in expected.items():
        assert (project.root / path).read_text() == text, path

    client = project.mlflow()
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    resumed = [r for r in runs if "genlab.resumed_from_epoch" in r.data.tags]
    assert len(runs) == 2 and len(resumed) == 1
    assert resumed[0].info.status == "FINISHED"
    assert_one_point_per_step(client, resumed[0], 40)


def _kill_when(proc, ready, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    proc.kill()
    proc.wait()
    assert running and ready(), f"train did not reach {what} while running: {proc.stdout.read()}"


def test_resume_continues_only_its_own_run_and_closes_killed_ones(project):
    root, client = project.root, project.mlflow()
    ckpt, marker = root / "checkpoints" / "train.pt", root / "checkpoints" / "run.json"

    def run(run_id):
        return client.get_run(run_id)

    def marked_run():
        try:
            return json.loads(marker.read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    project.stage("download")
    project.stage("train")  # run A: finished, 3 epochs
    first = marked_run()
    # Run B is killed before its first checkpoint (an epoch of batch size 1 takes seconds).
    project.set_params({"train": {"epochs": 40, "batch_size": 1}})
    proc = project.popen("python", "stages/train.py")
    _kill_when(proc, lambda: marked_run() not in (None, first), "it recorded its run")
    killed = marked_run()
    assert not ckpt.exists()

    project.set_params({"train": {"epochs": EPOCHS, "batch_size": 128, "resume": True}})
    out = project.stage("train").stdout
    assert "starting a new run" in out, out
    new = marked_run()
    assert len({first, killed, new}) == 3
    a, b, c = run(first), run(killed), run(new)
    assert a.info.status == "FINISHED" and a.data.params["train.epochs"] == str(EPOCHS)
    assert_one_point_per_step(client, a, EPOCHS)
    assert b.info.status == "KILLED" and new in b.data.tags["genlab.closed_reason"]
    assert c.info.status == "FINISHED" and "genlab.resumed_from_epoch" not in c.data.tags
    assert_one_point_per_step(client, c, EPOCHS)

    # Run D is killed after a few epochs; it resumes only to at least as many epochs as it holds.
    project.set_params({"train": {"epochs": 40, "resume": False}})
    proc = project.popen("python", "stages/train.py")

    def own_epoch_2():  # run C's final checkpoint stays until run D replaces it
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else {}
        return state.get("run_id") not in (None, new) and state["epoch"] >= 2

    _kill_when(proc, own_epoch_2, "epoch 2")
    killed_at, d = torch.load(ckpt, weights_only=True)["epoch"], marked_run()
    assert 2 <= killed_at < 40
    project.set_params({"train": {"epochs": 1, "resume": True}})
    proc = project.stage("train", check=False)
    assert proc.returncode == 2 and f"train.epochs = 1 but the checkpoint holds {killed_at} epochs" in proc.stderr
    assert ckpt.exists() and run(d).info.status == "RUNNING"

    project.set_params({"train": {"epochs": 45}})
    assert f"after epoch {killed_at}" in project.stage("train").stdout
    resumed = run(d)
    assert resumed.info.status == "FINISHED" and resumed.data.params["train.epochs"] == "40"
    assert resumed.data.tags["genlab.epochs_after_resume"] == "45"
    assert_one_point_per_step(client, resumed, 45)
    assert len(json.loads((root / "models/model-history.json").read_text())["history"]) == 45


def _same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_a_kill_between_train_and_dvc_lock_restores_the_outputs_instead_of_a_duplicate_run(project):
    """The window bench/faults.py found: train finished (run FINISHED, outputs written) but DVC was killed
    before writing dvc.lock, so DVC runs train again. That rerun restores the outputs; only new inputs retrain."""
    project.run("dvc", "repro", "train")
    outputs = ("metrics/train.json", "models/model-history.json", "metrics/machine.json")
    expected = {p: (project.root / p).read_bytes() for p in outputs}
    weights = torch.load(project.root / "models/model.pt", weights_only=True)["model"]

    def forget_train_in_lock():  # = the kill came after train's command, before DVC recorded it
        lock = yaml.safe_load((project.root / "dvc.lock").read_text())
        del lock["stages"]["train"]
        (project.root / "dvc.lock").write_text(yaml.safe_dump(lock))

    forget_train_in_lock()  # DVC's run cache (saved right after the command) restores the outputs itself...
    assert "Stage 'train' is cached" in project.run("dvc", "repro", "train").stdout
    assert {p: (project.root / p).read_bytes() for p in outputs} == expected
    forget_train_in_lock()  # ...and where it has none (a kill before DVC saved it; --no-run-cache), genlab does
    out = project.run("dvc", "repro", "--no-run-cache", "train").stdout
    assert "already finished training from these params, data and code" in out and "epoch 1/" not in out, out
    assert {p: (project.root / p).read_bytes() for p in outputs} == expected
    restored = torch.load(project.root / "models/model.pt", weights_only=True)["model"]
    assert _same_tensors(restored, weights)
    client = project.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert run.info.status == "FINISHED"
    assert_one_point_per_step(client, run, EPOCHS)

    # Changed code is a new input: DVC's rerun trains a new run.
    with open(project.root / "src/genlab/training/loop.py", "a") as f:
        f.write("\n# changed\n")
    forget_train_in_lock()
    assert "epoch 3/3" in project.run("dvc", "repro", "train").stdout
    assert len(client.search_runs([client.get_experiment_by_name("genlab").experiment_id])) == 2


def test_bad_params_fail_with_the_key_named_and_overwrite_nothing(reproduced):
    kept = {p: (reproduced.root / p).read_bytes() for p in ("metrics/train.json", "models/model.pt")}
    ckpt = {p: (reproduced.root / p).read_bytes() for p in ("checkpoints/train.pt", "checkpoints/run.json")}
    for override, words in [
        ({"vae": {"latent_dim": "big"}}, ["vae.latent_dim", "an integer"]),
        ({"train": {"epoch": 3}}, ["train.epoch", "epochs"]),
        ({"data": {"name": "imagenet"}}, ["data.name", "mnist", "cifar10"]),
        ({"vae": {"lr": -1}}, ["vae.lr", "> 0"]),
        ({"train": {"batch_size": 100000}}, ["train.batch_size = 100000 exceeds the", "training examples"]),
    ]:
        backup = (reproduced.root / "params.yaml").read_text()
        reproduced.set_params(override)
        proc = reproduced.stage("train", check=False)
        assert proc.returncode == 2, proc.stderr
        assert all(w in proc.stderr for w in words), proc.stderr
        assert "Traceback" not in proc.stderr
        (reproduced.root / "params.yaml").write_text(backup)
    for path, data in kept.items():
        assert (reproduced.root / path).read_bytes() == data, path

    # Under DVC, a check only train can make (the batch against the split it reads) fails before train's first
    # side effect: the finished run's checkpoint stays, no MLflow run is created, and the printed recovery works.
    backup = (reproduced.root / "params.yaml").read_text()
    reproduced.set_params({"train": {"batch_size": 100000}})
    failed = reproduced.run("dvc", "repro", check=False)
    assert failed.returncode != 0 and "exceeds the" in failed.stderr and "`dvc checkout train`" in failed.stderr
    assert not (reproduced.root / "models/model.pt").exists()  # DVC removed it before running train
    assert {p: (reproduced.root / p).read_bytes() for p in ckpt} == ckpt
    client = reproduced.mlflow()
    assert len(client.search_runs([client.get_experiment_by_name("genlab").experiment_id])) == 1
    (reproduced.root / "params.yaml").write_text(backup)
    reproduced.run("dvc", "checkout", "train")
    assert (reproduced.root / "models/model.pt").read_bytes() == kept["models/model.pt"]

    # A model file of another family, or from a newer genlab: evaluate says which and writes nothing.
    kept_eval = (reproduced.root / "metrics/eval.json").read_bytes()
    reproduced.set_params({"model": {"family": "gan"}})
    proc = reproduced.stage("evaluate", check=False)
    assert proc.returncode == 2 and "holds a vae model but the family asked for is gan" in proc.stderr, proc.stderr
    (reproduced.root / "params.yaml").write_text(backup)
    model = reproduced.root / "models/model.pt"
    torch.save({**torch.load(model, weights_only=True), "format_version": 2}, model)
    proc = reproduced.stage("evaluate", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "written by a newer genlab (format 2; this code reads 1)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and (reproduced.root / "metrics/eval.json").read_bytes() == kept_eval


def _gan_checks(project, history, test, run, client):
    root = project.root
    # gan.eval_every = 2 in the tiny config: domain FID after epochs 2 and 3 (the last).
    assert history["val_domain_fid"].notna().tolist() == [False, True, True]
    fid_curve = pd.read_csv(root / "metrics/curves/domain_fid.csv")
    assert list(fid_curve.columns) == ["epoch", "val"] and list(fid_curve["epoch"]) == [2, 3]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/domain_fid")) == [2, 3]
    assert run.data.params["gan.loss"] == "hinge" and run.data.tags.get("dvc.exp_name")


def _ddpm_checks(project, history, test, run, client):
    parts = test["prior_bpd"] + test["diffusion_bpd"] + test["decoder_bpd"]
    assert test["bpd"] == pytest.approx(parts, rel=1e-6) and test["bpd_stderr"] > 0 and test["bound_strata"] == 4
    assert "17-level" in run.data.tags["genlab.data_convention"]


def _flowmo_checks(project, history, test, run, client):
    """1A (epochs 1-2) then 1B (epoch 3) in one run; a perceptual network trained for it (the VAE had none), once:
    switching to the VAE and back trains nothing: DVC's run cache restores each family's perceptual network, model,
    evaluation and samples (the history stage redraws the per-epoch files from the restored record)."""
    root = project.root
    assert list(history["train_stage"]) == [0, 0, 2]
    # val rFID and PSNR every flowmo.eval_every (10) 1A epochs, so only after 1B's epoch; the sample distance from
    # 1A's last
    assert list(history["val_domain_rfid"].notna()) == list(history["val_psnr"].notna()) == [False, False, True]
    assert list(history["val_sample_distance"].notna()) == [False, True, True]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/psnr")] == [3]
    assert json.loads((root / "metrics/train.json").read_text())["selected_epoch"] == 3  # the only 1B epoch's weights
    assert json.loads((root / "metrics/perceptual.json").read_text())["test"]["accuracy"] > 0
    assert test["perceptual"] == test["perceptual"] and test["domain_rfid_std"] > 0
    assert test["bits_per_pixel"] == pytest.approx(4 * 6 / 64) and 1 <= test["token_perplexity"] <= 8
    assert run.data.tags["genlab.upstream.perceptual_md5"] and run.data.tags["genlab.upstream.classifier_md5"]
    files = {p: (root / p).read_bytes() for p in ("metrics/train_history.csv", "metrics/eval.json", "models/model.pt")}
    for family in ("vae", "flowmo"):
        out = project.run("dvc", "exp", "run", "-S", f"model.family={family}").stdout
        assert "Stage 'perceptual' is cached" in out and "Stage 'train' is cached" in out
        assert _ran(out) <= {"history"}, out
    assert {p: (root / p).read_bytes() for p in files} == files


# What `dvc exp run -S model.family=<family>` must leave beyond what every family leaves, for each family of
# the registry trained by dvc.yaml (the default, vae, by test_dvc_repro_writes_outputs_and_a_complete_mlflow_run;
# a family on a tokenizer's tokens by the two-stage test): -S settings, metrics in the history (train and val), test
# metrics with a spread / present / absent, figures present / absent, snapshot images, its own checks.
FAMILY_RUNS = {
    "gan": dict(
        settings=["gan.loss=hinge"],
        history=("d_loss", "g_loss", "d_real", "d_fake"),
        spread=(),
        present=("d_loss", "g_loss", "domain_fid", "domain_is", "precision", "recall"),
        absent=("elbo", "psnr", "domain_rfid"),  # no likelihood, no encoder
        figures=("samples", "interpolation_linear", "interpolation_slerp", "class_histogram", "curves"),
        no_figures=("reconstructions",),
        images={"samples"},
        checks=_gan_checks,
    ),
    "ddpm": dict(
        settings=[],
        history=("loss",),
        spread=(),
        present=("domain_fid", "precision", "recall", "bpd"),
        absent=(),
        figures=("samples", "trajectory", "steps_grid", "interpolation_slerp", "class_histogram", "curves"),
        no_figures=(),
        images={"samples"},
        checks=_ddpm_checks,
    ),
    "flowmo": dict(
        settings=[],
        history=("flow", "perceptual", "entropy", "commitment", "perplexity", "used_fraction"),
        spread=("domain_rfid", "domain_rkid", "domain_fid_floor", "psnr", "ssim", "recon_accuracy", "real_accuracy"),
        present=("perceptual", "bits_per_pixel", "token_perplexity"),
        absent=("domain_fid", "domain_copy_z", "elbo"),  # a tokenizer neither generates nor has a likelihood
        figures=("reconstructions", "rho_grid", "steps_grid", "noise_draws", "token_usage", "curves"),
        no_figures=("samples",),
        images={"reconstructions"},
        checks=_flowmo_checks,
    ),
}


def test_every_family_trained_by_dvc_yaml_has_an_end_to_end_run():
    from genlab.models import DEFAULT_FAMILY, SECTIONS

    by_dvc_yaml = {f for f, section in SECTIONS.items() if section.TOKENS_OF is None} - {DEFAULT_FAMILY}
    assert set(FAMILY_RUNS) == by_dvc_yaml


@pytest.mark.parametrize("family", sorted(FAMILY_RUNS))
def test_each_family_runs_end_to_end_through_dvc(reproduced, family):
    """`dvc exp run -S model.family=<family>` from the committed (VAE) experiment: only a family with a perceptual
    loss trains the perceptual stage; history, curves, test metrics, figures and the MLflow run with its snapshot
    images; then `dvc plots show`."""
    from genlab.config.experiment import needs_stage
    from genlab.models import FAMILIES

    spec, root = FAMILY_RUNS[family], reproduced.root
    settings = [a for s in [f"model.family={family}", *spec["settings"]] for a in ("-S", s)]
    ran = _ran(reproduced.run("dvc", "exp", "run", *settings).stdout)
    assert {"train", "evaluate", "sample"} <= ran and ("perceptual" in ran) == needs_stage(family, "perceptual")
    history = pd.read_csv(root / "metrics/train_history.csv")
    assert list(history["epoch"]) == STEPS
    for name in spec["history"]:
        assert history[f"train_{name}"].notna().all() and history[f"val_{name}"].notna().all(), name
    curves = {p.stem for p in (root / "metrics/curves").glob("*.csv")}
    assert curves == set(FAMILIES[family].curves) & {c[4:] for c in history.columns if c.startswith(("train_", "val_"))}
    test = json.loads((root / "metrics/eval.json").read_text())["test"]
    for name in spec["spread"]:
        assert test[name] == test[name] and test[f"{name}_std"] >= 0, name  # present, not NaN, with a spread
    assert set(spec["present"]) <= set(test) and not set(spec["absent"]) & set(test)
    for name in spec["figures"]:
        assert (root / f"samples/{name}.png").is_file(), name
    for name in spec["no_figures"]:
        assert not (root / f"samples/{name}.png").exists(), name

    client = reproduced.mlflow()
    query = f"tags.`genlab.family` = '{family}'"
    (run,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id], query)
    assert _image_steps(client, run.info.run_id) == {name: IMAGE_STEPS for name in spec["images"]}
    last = history.iloc[-1]
    for name in spec["history"]:
        assert run.data.metrics[f"val/{name}"] == pytest.approx(last[f"val_{name}"]), name
    for name in (*spec["present"], *spec["spread"]):
        assert run.data.metrics[f"test/{name}"] == pytest.approx(test[name]), name
    reproduced.run("dvc", "plots", "show", "-o", "plots_out")
    spec["checks"](reproduced, history, test, run, client)


def test_bad_params_stop_dvc_before_it_deletes_any_output(reproduced):
    root = reproduced.root
    kept = ["models/model.pt", "metrics/train.json", "metrics/train_history.csv", "data/prepared"]
    files = sorted(
        p for rel in [*kept, "metrics/curves"] for p in [root / rel, *(root / rel).rglob("*")] if p.is_file()
    )
    before = {p: p.read_bytes() for p in files}
    for setting, key in [
        ("train.epochs=0", "train.epochs"),
        ("vae.lr=nan", "vae.lr"),
        ("vae.lr=.inf", "vae.lr"),
        ("data.val_fraction=0", "data.val_fraction"),
        ("model.family=foo", "model.family"),
    ]:
        proc = reproduced.run("dvc", "exp", "run", "-S", setting, check=False)
        assert proc.returncode != 0, setting
        assert key in proc.stdout + proc.stderr, (setting, proc.stdout, proc.stderr)
        assert {p: p.read_bytes() for p in files if p.exists()} == before, setting
        assert all(p.exists() for p in files), setting
        reproduced.run("git", "checkout", "params.yaml")  # dvc leaves the bad value in the workspace


def test_two_trained_models_coexist_in_one_pipeline(reproduced):
    """A second train/evaluate/sample chain, named and with a fixed family, beside the default model (trained)."""
    project = reproduced
    default, second = paths.model_paths(), paths.model_paths("gan")
    renames = {
        getattr(default, f).as_posix(): getattr(second, f).as_posix()
        for f in ("model", "train_metrics", "record", "history", "curves", "machine", "eval_metrics", "samples")
    }

    def rename(entry):
        if isinstance(entry, dict):
            return {rename(k): v for k, v in entry.items()}
        return renames.get(entry, entry)

    dvc = yaml.safe_load((project.root / "dvc.yaml").read_text())
    for stage in ("train", "history", "evaluate", "sample"):
        chain = dict(dvc["stages"][stage])
        chain["cmd"] += " --name gan" + ("" if stage == "history" else " --family gan")
        chain["deps"] = [
            paths.stage_view(stage, "gan").as_posix() if d == paths.stage_view(stage).as_posix() else rename(d)
            for d in chain["deps"]
        ]
        for kind in ("outs", "metrics"):
            if kind in chain:
                chain[kind] = [rename(o) for o in chain[kind]]
        dvc["stages"][f"{stage}_gan"] = chain
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    new_chain = {"train_gan", "history_gan", "evaluate_gan", "sample_gan"}
    assert _ran(project.run("dvc", "repro").stdout) == new_chain  # the new chain only
    root = project.root
    for rel in (
        "models/model.pt",
        "models/gan.pt",
        "metrics/eval.json",
        "metrics/gan/eval.json",
        "samples-gan/samples.png",
    ):
        assert (root / rel).is_file(), rel
    assert "elbo" in json.loads((root / "metrics/eval.json").read_text())["test"]
    assert "d_loss" in json.loads((root / "metrics/gan/eval.json").read_text())["test"]
    client = project.mlflow()
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    pairs = sorted((r.data.tags["genlab.model_name"], r.data.tags["genlab.family"]) for r in runs)
    assert pairs == [("gan", "gan"), ("model", "vae")]
    assert "Running stage" not in project.run("dvc", "repro").stdout
    # The second model's stages read gan.*, the first's vae.*: an edit of one reruns only its chain.
    project.set_params({"gan": {"width": 16}})
    out = project.run("dvc", "repro").stdout
    assert _ran(out) == new_chain, out


def _ran(out: str) -> set[str]:
    """The stages `dvc repro` / `dvc exp run` ran (validate, which always runs after an edit, left out)."""
    return set(re.findall(r"Running stage '(?:[^':]*:)?(\w+)'", out)) - {"validate"}


TWO_STAGE = "pipelines/tokens/dvc.yaml"


def test_two_stage_tokenizer_and_prior_through_dvc(project):
    """FlowMo -> tokens -> MaskGIT: a prior change retrains only the prior, a tokenizer change both."""
    project.set_params({"flowmo": {"pretrain_epochs": 2}, "train": {"epochs": 2}})
    project.commit("tiny two-stage params")
    project.run("dvc", "repro", TWO_STAGE)
    root = project.root
    manifest = json.loads((root / "data/tokens/manifest.json").read_text())
    assert manifest["sequence_length"] == 8 and manifest["vocabulary"] == 8
    test = json.loads((root / "metrics/prior/eval.json").read_text())["test"]
    assert test["bits_per_token"] > 0 and test["raw_bits_per_token"] == pytest.approx(3.0)
    assert test["bits_per_pixel"] == pytest.approx(test["bits_per_token"] * 8 / 64)
    for name in ("domain_fid", "domain_is", "precision", "recall"):
        assert test[name] == test[name], name
    for name in ("samples", "class_histogram", "curves"):
        assert (root / f"samples-prior/{name}.png").is_file(), name
    assert not (root / "samples-prior/interpolation_linear.png").exists()  # token sequences have no straight line
    for name in ("reconstructions", "rho_grid", "steps_grid", "noise_draws", "token_usage", "curves"):
        assert (root / f"samples-tokenizer/{name}.png").is_file(), name  # the tokenizer's figures, as the root's
    # The tokenizer's own perceptual network, while the default experiment (a VAE) has none
    assert json.loads((root / "metrics/tokenizer/perceptual.json").read_text())["test"]["accuracy"] > 0
    assert not (root / "models/perceptual.pt").exists()

    client = project.mlflow()
    runs = {
        r.data.tags["genlab.model_name"]: r
        for r in client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    }
    assert set(runs) == {"tokenizer", "prior"}
    prior = runs["prior"]
    assert prior.data.tags["mlflow.parentRunId"] == runs["tokenizer"].info.run_id == manifest["tokenizer_run"]
    assert prior.data.tags["genlab.upstream.tokenizer_md5"] == manifest["tokenizer_md5"]
    assert _image_steps(client, prior.info.run_id) == {"samples": {0, 1, 2}}
    assert not any(k.startswith("flowmo.") for k in prior.data.params) and prior.data.params["maskgit.depth"] == "1"

    project.commit("two-stage results")
    out = project.run("dvc", "exp", "run", TWO_STAGE, "-S", "maskgit.depth=2").stdout
    assert _ran(out) == {"train_prior", "history_prior", "evaluate_prior", "sample_prior"}, out
    out = project.run("dvc", "exp", "run", TWO_STAGE, "-S", "flowmo.decoder_width=32").stdout
    assert {"train_tokenizer", "sample_tokenizer", "tokenize", "train_prior"} <= _ran(out), out


def test_inputs_left_out_of_an_image_folder_are_listed_and_tagged_on_the_run(project):
    from PIL import Image

    folder = project.root / "my_images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (10, 10), 20 * i).save(folder / cls / f"{i}.png")
    (folder / "b" / "broken.png").write_bytes(b"not a png")
    (folder / "c").mkdir()
    project.set_params(
        {
            "data": {"name": "image_folder", "path": "my_images", "image_size": 8},
            "train": {"epochs": 1, "batch_size": 4},
        }
    )
    failed = project.stage("download", check=False)
    assert (
        failed.returncode == 2 and "b/broken.png (not an image Pillow can read), c/ (no usable image)" in failed.stderr
    )
    project.set_params({"data": {"skip_unreadable": True}})
    assert "left out 2 input(s)" in project.stage("download").stdout
    manifest = json.loads((project.root / "data/prepared/manifest.json").read_text())
    assert manifest["skipped_files"] == {"b/broken.png": "not an image Pillow can read"}
    assert manifest["empty_class_folders"] == ["c"]
    project.stage("train")
    client = project.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert run.data.tags["genlab.data_left_out"] == "2"


def test_a_failing_stage_says_how_to_restore_what_dvc_removed(project):
    from PIL import Image

    project.run("dvc", "repro", "download")
    prepared = project.root / "data" / "prepared"
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}
    (project.root / "imgs" / "a").mkdir(parents=True)
    Image.new("L", (10, 10)).save(project.root / "imgs" / "a" / "0.png")
    (project.root / "imgs" / "a" / "1.png").write_bytes(b"broken")
    project.set_params({"data": {"name": "image_folder", "path": "imgs"}})
    failed = project.run("dvc", "repro", "download", check=False)
    assert failed.returncode != 0 and "a/1.png (not an image Pillow can read)" in failed.stderr
    assert "`dvc checkout download` restores" in failed.stderr
    assert not prepared.exists()  # what DVC does before running a stage's command

    project.run("git", "checkout", "params.yaml")
    project.run("dvc", "checkout", "download")
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before


def test_a_colleague_pulls_a_trained_experiment_from_a_dvc_remote_instead_of_retraining(reproduced, tmp_path):
    """dvc push + dvc exp push to a local directory remote and a git remote; a fresh clone pulls both."""
    project = reproduced
    origin, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    project.run("git", "init", "-q", "--bare", str(origin))
    project.run("git", "remote", "add", "origin", str(origin))
    project.run("dvc", "remote", "add", "-d", "store", str(store))
    project.commit("baseline results with a DVC remote")
    project.run("git", "push", "-q", "origin", "main")
    project.run("dvc", "push")
    baseline = (project.root / "models/model.pt").read_bytes()
    project.run("dvc", "exp", "run", "-n", "small-z", "-S", "vae.latent_dim=2")
    project.run("dvc", "exp", "push", "origin", "small-z")  # git refs to origin, its outputs to the DVC remote

    colleague = Project(tmp_path / "colleague")
    project.run("git", "clone", "-q", "-b", "main", str(origin), str(colleague.root))
    colleague.run("dvc", "pull", "dvc.yaml")  # the default pipeline (pipelines/tokens has its own)
    out = colleague.run("dvc", "repro").stdout
    assert "Running stage 'train'" not in out and "Running stage 'evaluate'" not in out, out
    assert (colleague.root / "models/model.pt").read_bytes() == baseline
    colleague.run("dvc", "exp", "pull", "origin", "small-z")
    assert "small-z" in colleague.run("dvc", "exp", "show", "--csv").stdout
    # (`dvc exp apply` would also check out pipelines/tokens' outputs, never run here, and fail on them.)
    colleague.run("dvc", "exp", "branch", "small-z", "small-z")
    colleague.run("git", "checkout", "-q", "small-z")
    colleague.run("dvc", "checkout", "dvc.yaml")
    assert "latent_dim: 2" in (colleague.root / "params.yaml").read_text()
    assert "Running stage 'train'" not in colleague.run("dvc", "repro").stdout  # its model came from the remote
