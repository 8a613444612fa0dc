"""The shared training loop, checkpoints, config validation and the CI rerun comparison, in-process."""

from __future__ import annotations

import errno
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from genlab.config.experiment import config_from_dict, load_config
from genlab.core import checkpoint
from genlab.core.errors import CheckpointError, ConfigError, DivergenceError, StorageError
from genlab.core.runtime import stream, stream_seed
from genlab.tracking.store import repo_root
from genlab.training.loop import NullTracker, lr_factor

from families import TINY_FAMILIES, build_from, train_run, train_run_optimisers

SMALL = {"vae": TINY_FAMILIES["vae"], "train": {"epochs": 4, "batch_size": 128}}


def _run(cfg, data, ckpt: Path | None, resume_state=None):
    return train_run(cfg, data, ckpt, resume_state)


def test_same_params_give_identical_history(digits):
    cfg = config_from_dict(SMALL)
    assert _run(cfg, digits, None) == _run(cfg, digits, None)
    other = config_from_dict({**SMALL, "seed": 1})
    assert _run(other, digits, None) != _run(cfg, digits, None)


def test_resume_with_more_epochs_continues_a_constant_lr_run_bit_for_bit(digits, tmp_path):
    constant = {**SMALL, "train": {**SMALL["train"], "lr_schedule": "constant"}}
    full = _run(config_from_dict(constant), digits, None)
    ckpt = tmp_path / "train.pt"
    _run(config_from_dict({**constant, "train": {**constant["train"], "epochs": 2}}), digits, ckpt)
    state = checkpoint.load(ckpt)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed = _run(config_from_dict({**constant, "train": {**constant["train"], "resume": True}}), digits, ckpt, state)
    assert resumed == full


class _Killed(Exception):
    pass


class _KillAtEpoch(NullTracker):
    """Stands in for a kill: raises while logging epoch `epoch`, after that epoch's checkpoint was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def log_metrics(self, metrics, step=None):
        if step == self.epoch:
            raise _Killed


def test_killed_cosine_run_resumes_on_the_same_schedule(digits, tmp_path):
    cfg = config_from_dict({**SMALL, "train": {**SMALL["train"], "lr_schedule": "cosine"}})
    full = _run(cfg, digits, None)
    ckpt = tmp_path / "train.pt"
    with pytest.raises(_Killed):
        train_run(cfg, digits, ckpt, tracker=_KillAtEpoch(3))
    state = checkpoint.load(ckpt)
    assert state["epoch"] == 3
    assert _run(cfg, digits, ckpt, state) == full


@pytest.mark.parametrize(("schedule", "expected"), [("constant", [1, 1, 1]), ("cosine", [1, 0.5, 0])])
def test_lr_factor_at_start_middle_and_end(schedule, expected):
    assert [lr_factor(schedule, step, 10) for step in (0, 5, 10)] == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule_sets_every_optimisers_lr(digits):
    cfg = config_from_dict(
        {**SMALL, "vae": {**SMALL["vae"], "lr": 0.01}, "train": {**SMALL["train"], "lr_schedule": "cosine"}}
    )
    seen = train_run_optimisers(cfg, digits)
    steps = cfg.train.epochs * math.ceil(len(digits.train.images) / cfg.train.batch_size)
    ((group,),) = [opt.param_groups for opt in seen]
    assert group["initial_lr"] == 0.01
    assert group["lr"] == pytest.approx(0.01 * lr_factor("cosine", steps - 1, steps))  # the last step's lr


def test_resume_with_other_params_is_refused(digits, tmp_path):
    ckpt = tmp_path / "train.pt"
    _run(config_from_dict({**SMALL, "train": {**SMALL["train"], "epochs": 1}}), digits, ckpt)
    other = config_from_dict({**SMALL, "vae": {**SMALL["vae"], "beta": 2.0}})
    with pytest.raises(CheckpointError, match="other params"):
        _run(other, digits, ckpt, checkpoint.load(ckpt))


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(digits, tmp_path):
    ckpt = tmp_path / "train.pt"
    _run(config_from_dict({**SMALL, "train": {**SMALL["train"], "epochs": 3}}), digits, ckpt)
    fewer = config_from_dict({**SMALL, "train": {**SMALL["train"], "epochs": 2, "resume": True}})
    with pytest.raises(CheckpointError, match=r"train\.epochs = 2 .* 3 epochs"):
        _run(fewer, digits, ckpt, checkpoint.load(ckpt))


class Recorder:
    """A tracker that keeps every point, and can die at its first call for one step."""

    def __init__(self, die_at: int | None = None):
        self.metrics: list[tuple[str, int, float]] = []
        self.images: list[tuple[str, int]] = []
        self.die_at = die_at

    def log_metrics(self, metrics, step=None):
        self.metrics += [(k, step, v) for k, v in metrics.items()]

    def log_images(self, images, step):
        if step == self.die_at:
            self.die_at = None
            raise _Killed
        self.images += [(k, step) for k in images]

    def metric_steps(self, key):
        return {s for k, s, _ in self.metrics if k == key}


@pytest.mark.parametrize("killed", ["after logging, before the checkpoint", "after the checkpoint, before logging"])
def test_a_killed_and_resumed_run_logs_each_step_exactly_once(digits, tmp_path, monkeypatch, killed):
    cfg = config_from_dict(SMALL)  # 4 epochs; the kill comes in the third

    def fit_with(tracker, ckpt, resume_state=None):
        return train_run(cfg, digits, ckpt, resume_state, tracker=tracker)

    uninterrupted = Recorder()
    fit_with(uninterrupted, tmp_path / "full.pt")
    ckpt = tmp_path / "train.pt"
    recorder = Recorder(die_at=3 if killed.startswith("after the checkpoint") else None)
    if killed.startswith("after logging"):
        real_save = checkpoint.save

        def save(path, state):
            if state["epoch"] == 3:
                raise _Killed
            real_save(path, state)

        monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(_Killed):
        fit_with(recorder, ckpt)
    monkeypatch.undo()
    fit_with(recorder, ckpt, checkpoint.load(ckpt))

    def points(r):
        return sorted((k, s, v) for k, s, v in r.metrics if k != "time/epoch_seconds")

    assert points(recorder) == points(uninterrupted)
    assert sorted(s for k, s, _ in recorder.metrics if k == "time/epoch_seconds") == [1, 2, 3, 4]
    assert sorted(recorder.images) == sorted(uninterrupted.images)
    assert {s for _, s in uninterrupted.images} == {0, 1, 2, 3, 4}  # step 0: the untrained model, logged once


def test_snapshot_images_are_logged_about_twenty_times_a_run_and_at_its_last_epoch(digits):
    from genlab.training.loop import SNAPSHOTS, snapshot_due

    assert [e for e in range(1, 101) if snapshot_due(e, 100)] == list(range(5, 101, 5))
    assert [e for e in range(1, 66) if snapshot_due(e, 65)] == [*range(4, 65, 4), 65]  # FlowMo's 60 + 5
    assert all(snapshot_due(e, SNAPSHOTS) for e in range(1, SNAPSHOTS + 1))
    recorder = Recorder()
    train_run(config_from_dict({**SMALL, "train": {**SMALL["train"], "epochs": 25}}), digits, None, tracker=recorder)
    steps = sorted({s for _, s in recorder.images})
    assert steps == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]  # step 0: the untrained model
    assert sorted(recorder.metric_steps("time/epoch_seconds")) == list(range(1, 26))  # metrics: every epoch


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(digits, tmp_path, monkeypatch, family):
    cfg = config_from_dict({**SMALL, "model": {"family": family}, "gan": TINY_FAMILIES["gan"]})
    family = build_from(cfg, digits)
    real_step = family.train_step

    def step(x, epoch, gen, update):
        out = real_step(x, epoch, gen, update)
        return {k: v * math.nan for k, v in out.items()} if epoch == 3 else out

    monkeypatch.setattr(family, "train_step", step)
    ckpt = tmp_path / "train.pt"
    with pytest.raises(DivergenceError, match="epoch 3.*last good checkpoint"):
        train_run(cfg, digits, ckpt, family=family)
    state = checkpoint.load(ckpt)
    assert state["epoch"] == 2
    assert all(math.isfinite(v) for row in state["history"] for v in row.values())


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3072 vs 2966"),  # torch.save's
    ],
)
def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_last_one(
    digits, tmp_path, monkeypatch, failure
):
    cfg = config_from_dict(SMALL)
    ckpt = tmp_path / "train.pt"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the third checkpoint's write runs out of space halfway
        saves.append(f)
        if len(saves) == 3:
            f.write(b"half a checkpoint")
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(
        StorageError, match=rf"disk full while writing {re.escape(str(ckpt))} .*the previous .* is intact"
    ):
        train_run(cfg, digits, ckpt)
    assert checkpoint.load(ckpt)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["train.pt"]  # no temporary file left behind


def test_saving_the_same_state_twice_writes_the_same_bytes(tmp_path):
    """DVC compares outputs by md5: a rerun with identical weights must not look like a new model."""
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    checkpoint.save(tmp_path / "a.pt", state)
    checkpoint.save(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert checkpoint.load(tmp_path / "b.pt")["epoch"] == 3


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        checkpoint.save(tmp_path / "train.pt", {})


def test_corrupted_or_missing_checkpoint_raises_checkpoint_error(tmp_path):
    bad = tmp_path / "train.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")
    torch.save({"format_version": 99}, bad)
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.load(bad)


class _Foreign:
    """Not a tensor or plain data: a weights-only load refuses it."""


@pytest.mark.parametrize("content", ["garbage", "foreign pickle", "truncated", "empty"])
def test_unreadable_model_file_advises_retraining_never_an_unsafe_load(tmp_path, content):
    model = tmp_path / "model.pt"
    if content == "garbage":
        model.write_bytes(b"not a model")
    elif content == "foreign pickle":
        torch.save({"format_version": checkpoint.FORMAT_VERSION, "model": _Foreign()}, model)
    elif content == "truncated":
        torch.save({"format_version": checkpoint.FORMAT_VERSION, "w": torch.zeros(100)}, model)
        model.write_bytes(model.read_bytes()[:300])
    else:
        model.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(model, what="model file")
    message = str(info.value)
    assert "retrain with `dvc repro train`" in message and str(model) in message, message
    assert "weights_only" not in message and "Weights only" not in message, message


@pytest.mark.parametrize(
    "raw,words",
    [
        ({"vae": {"latent_dim": 2.5}}, ["vae.latent_dim", "an integer"]),
        ({"vae": {"arch": "resnet"}}, ["vae.arch", "'mlp'", "'conv'"]),
        ({"data": {"binarize": True}}, ["data.binarize", "'none'", "'dynamic'"]),
        ({"train": {"batch_size": 0}}, ["train.batch_size", "an integer in [1, "]),
        ({"trian": {}}, ["trian", "allowed"]),
        ({"data": {"name": "image_folder"}}, ["data.path"]),
        ({"device": "tpu"}, ["device", "cuda"]),
        ({"train": {"resume": "yes"}}, ["train.resume", "true or false"]),
        ({"vae": {"lr": "nan"}}, ["vae.lr", "a finite number"]),
        ({"gan": {"lr": math.inf}}, ["gan.lr", "a finite number"]),
        ({"vae": {"beta": ".inf"}}, ["vae.beta", "a finite number"]),
        ({"ddpm": {"eta": -math.inf}}, ["ddpm.eta", "a finite number"]),
        ({"train": {"grad_clip": 0}}, ["train.grad_clip", "> 0"]),
        ({"seed": -5}, ["seed", "[0, 4294967295]"]),
    ],
)
def test_bad_params_raise_config_error_naming_the_key(raw, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_a_batch_larger_than_the_training_split_is_refused(digits, tmp_path):
    cfg = config_from_dict({**SMALL, "train": {**SMALL["train"], "batch_size": 100_000}})
    with pytest.raises(ConfigError, match=r"train\.batch_size = 100000 exceeds the \d+ training examples"):
        train_run(cfg, digits, tmp_path / "train.pt")
    assert not (tmp_path / "train.pt").exists()


def test_committed_params_yaml_is_valid(tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.model.family == "vae"  # a quoted number is refused now: tests/test_params_reading.py


def test_params_yaml_must_set_every_key(tmp_path):
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    del raw["vae"]["lr"], raw["gan"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"missing: vae\.lr, gan: every key must be set"):
        load_config(params)
    params.write_text("")
    with pytest.raises(ConfigError, match=r"missing: seed, device, threads, data, model, "):
        load_config(params)
    assert config_from_dict({"train": {"epochs": 2}}).vae.lr == 1e-3  # code and saved models may be partial


def test_named_streams_are_distinct_across_names_and_seeds():
    assert stream_seed(0, "batch_order") == stream_seed(0, "batch_order")
    # Offsets (seed + 1) would make seed 0's noise seed 1's batch order; hashed names never do.
    seeds = {stream_seed(s, n) for s in range(4) for n in ("batch_order", "train_noise", "snapshot")}
    assert len(seeds) == 12 and all(0 <= v < 2**63 for v in seeds)
    a, b = stream(0, "x").initial_seed(), stream(1, "x").initial_seed()
    assert a != b and torch.randn(3, generator=stream(5, "y")).equal(torch.randn(3, generator=stream(5, "y")))


def test_repo_root_strips_dvc_temp_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("GENLAB_ROOT", raising=False)
    assert repo_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd") == tmp_path.resolve()
    assert repo_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("GENLAB_ROOT", str(tmp_path / "elsewhere"))
    assert repo_root(tmp_path) == (tmp_path / "elsewhere").resolve()


def test_bf16_autocast_changes_the_numbers_but_stays_within_a_percent_of_fp32(digits):
    """train.precision: bf16 runs the forward passes in bfloat16 (weights and optimiser in float32)."""
    runs = {
        p: train_run(config_from_dict({**SMALL, "train": {**SMALL["train"], "precision": p}}), digits)
        for p in ("fp32", "bf16")
    }
    assert runs["bf16"] != runs["fp32"], "bf16 left every number unchanged: autocast did not run"
    for key in ("val_elbo", "val_kl", "train_elbo"):
        fp32, bf16 = runs["fp32"][-1][key], runs["bf16"][-1][key]
        assert abs(bf16 - fp32) <= 0.01 * abs(fp32) + 0.05, (key, fp32, bf16)


def test_run_names_put_the_changed_params_first():
    from genlab.config.experiment import stage_view
    from genlab.tracking.store import run_name

    committed = config_from_dict({})
    changed = config_from_dict({"vae": {"beta": 2.0, "latent_dim": 2}})
    view = stage_view(changed, "train")
    name = run_name(changed, {"dvc.exp_name": "brisk-owl"}, view, stage_view(committed, "train"))
    assert name == "latent_dim=2 beta=2.0 | brisk-owl | vae-digits"
    plain = run_name(
        committed, {"genlab.model_name": "tokenizer"}, stage_view(committed, "train"), stage_view(committed, "train")
    )
    assert re.fullmatch(r"\d\d:\d\d:\d\d \d\d \w{3} 20\d\d \| tokenizer vae-digits", plain)  # the time first


def test_a_stage_starts_with_deterministic_kernels_and_without_torchvision_or_dynamo():
    """Every stage imports these and seeds; torchvision and torch._dynamo add seconds to each stage's start."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from genlab import models\n"
        "from genlab.config import experiment\n"
        "from genlab.core import visualise\n"
        "from genlab.evaluation import model_file\n"
        "from genlab.tracking import store\n"
        "from genlab.training import loop\n"
        "from genlab.core.runtime import seed_everything\n"
        "seed_everything(0, 'model_init')\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_epoch_lines_say_the_epochs_own_seconds_and_the_time_left_at_the_pace_so_far(monkeypatch):
    from genlab.core import progress

    assert [progress.duration(s) for s in (0.04, 59.9, 125, 3 * 3600 + 61)] == ["0.0 s", "59.9 s", "2 min 05 s",
                                                                                "3 h 01 min"]  # fmt: skip
    clock = iter([100.0, 130.0, 160.0, 0.0, 0.0])  # Pace starts at 100; epochs 11 and 12 end at 130 and 160
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    pace = progress.Pace(total=20, done=10)  # resumed after 10 epochs: the pace is this process's own
    assert pace.note(11, 29.0) == "(epoch 29.0 s, ETA 4 min 30 s)"  # 30 s per epoch, 9 to go
    assert pace.note(12, 28.0) == "(epoch 28.0 s, ETA 4 min 00 s)"
    assert progress.Pace(total=3).note(3, 1.0) == "(epoch 1.0 s)"  # the last epoch: nothing left


def test_the_trainers_steps_apart_an_epoch_writes_nothing_then_record_checkpoints_before_it_logs(digits, tmp_path):
    from genlab.config.experiment import stage_view
    from genlab.training.loop import Trainer, resume_key
    from genlab.training.sources import image_source

    cfg = config_from_dict(SMALL)
    ckpt = tmp_path / "train.pt"
    checkpointed_when_logged = []

    class Watcher(Recorder):
        def log_metrics(self, metrics, step=None):
            checkpointed_when_logged.append((step, checkpoint.load(ckpt)["epoch"] if ckpt.exists() else None))
            super().log_metrics(metrics, step)

    def trainer(state=None, tracker=None):
        return Trainer(
            build_from(cfg, digits),
            image_source(digits, cfg.data.binarize),
            cfg.train,
            cfg.seed,
            key=resume_key(stage_view(cfg, "train")),
            tracker=tracker or Watcher(),
            checkpoint_path=ckpt,
            resume_state=state,
        )

    first = trainer()
    assert list(first.epochs_left()) == [1, 2, 3, 4]
    row, logged = first.epoch(1)
    assert not ckpt.exists() and checkpointed_when_logged == []  # the epoch itself writes and logs nothing
    assert row["epoch"] == 1 and {"train_loss", "val_loss"} <= set(row)
    assert logged["train/loss"] == row["train_loss"] and logged["time/epoch_seconds"] > 0
    first.record(1, row, logged)
    assert checkpointed_when_logged == [(1, 1)]  # the metrics went out after the checkpoint was on disk
    assert first.finish() == [row]

    resumed = trainer(checkpoint.load(ckpt), NullTracker())
    assert list(resumed.epochs_left()) == [2, 3, 4] and resumed.history == [row]
    assert resumed.epoch(2)[0] == _run(cfg, digits, None)[1]  # it goes on as the uninterrupted run did


def test_the_train_stages_steps_run_in_process_and_set_up_writes_nothing(tmp_path, monkeypatch):
    from genlab.data import prepare
    from genlab.pipeline.history import write_history
    from genlab.pipeline.train import restore_finished, set_up, write_outputs

    cfg = config_from_dict({**SMALL, "train": {"epochs": 2, "batch_size": 128}})
    monkeypatch.chdir(tmp_path)
    prepare(cfg, Path("data/prepared"))
    before = sorted(Path().rglob("*"))
    setup = set_up(cfg, "model", torch.device("cpu"))
    assert sorted(Path().rglob("*")) == before
    assert setup.family.name == "vae" and setup.upstream_md5 == {} and setup.scorer is None
    history = setup.fit()  # no tracker: no checkpoint, nothing logged
    assert sorted(Path().rglob("*")) == before and [row["epoch"] for row in history] == [1, 2]
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert restore_finished(setup, {}) is None  # only a DVC rerun restores
    write_outputs(setup, history, {"cpu": "test"})
    where = setup.where
    summary = yaml.safe_load(where.train_metrics.read_text())
    assert summary["epochs"] == 2 and summary["val"]["loss"] == history[-1]["val_loss"]
    assert where.model.is_file() and not where.history.exists()  # the history stage's file, drawn from the record:
    assert write_history(where).to_dict("records") == history
    assert {p.stem for p in where.curves.glob("*.csv")} == set(setup.family.curves)
