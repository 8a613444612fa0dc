"""The domain classifier: shapes per dataset shape, determinism, accuracy, its file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from genlab.config.experiment import load_config
from genlab.core.errors import CheckpointError, DataError
from genlab.data import load_prepared, prepare
from genlab.evaluation.classifier import (
    load_classifier,
    num_classes,
    save_classifier,
    train_classifier,
)
from genlab.models.classifier import DomainClassifier, embed

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _params(**overrides):
    """The repository's params.yaml (the pipeline's defaults), with dotted-key overrides."""
    return load_config(REPO / "params.yaml", {"device": "cpu", **overrides})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    prepare(_params(), out)
    return load_prepared(out)


@pytest.fixture(scope="module")
def tiny_run(digits):
    cfg = _params(**{"classifier.epochs": 1})
    return cfg, *train_classifier(cfg, digits, CPU)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_output_shapes_for_each_dataset_shape(shape):
    torch.manual_seed(0)
    model = DomainClassifier(shape, num_classes=10, channels=[8, 16], features=24).train(False)
    x = torch.rand(5, *shape)
    assert model(x).shape == (5, 10)
    feats = model.features(x)
    assert feats.shape == (5, 24) and feats.dtype == torch.float32 and (feats >= 0).all()  # after the ReLU
    probs = model.probabilities(x)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5))

    u8 = (x * 255).round().to(torch.uint8)
    f_u8, p_u8 = embed(model, u8, batch_size=2)  # uint8 is read on the 0..max_value grid
    f_fl, p_fl = embed(model, u8.float() / 255, batch_size=3)
    assert f_u8.shape == (5, 24) and p_u8.shape == (5, 10)
    assert torch.allclose(f_u8, f_fl, atol=1e-6) and torch.allclose(p_u8, p_fl, atol=1e-6)
    with pytest.raises(DataError, match="shape"):
        embed(model, torch.rand(2, shape[0], shape[1] + 1, shape[2]))


def test_a_deep_stack_stops_pooling_at_one_pixel():
    model = DomainClassifier((1, 8, 8), 10, channels=[4, 4, 4, 4, 4], features=8)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.conv) == 3  # 8 -> 4 -> 2 -> 1


def test_num_classes_come_from_the_manifest(digits):
    assert num_classes(digits) == 10


def test_training_is_deterministic(digits, tiny_run):
    cfg, model, metrics = tiny_run
    again, metrics_again = train_classifier(cfg, digits, CPU)
    assert metrics == metrics_again
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert set(metrics) == {"epochs", "train", "val", "test"}
    assert set(metrics["test"]) == {"accuracy", "loss"} and 0 <= metrics["test"]["accuracy"] <= 1


def test_labelled_batches_are_each_split_s_pixels_and_labels_gathered_by_index(digits):
    from genlab.evaluation.classifier import labelled_source

    source = labelled_source(digits)
    for stored, split in zip((source.train, source.val, source.test), (digits.train, digits.val, digits.test)):
        assert len(stored) == len(split)
        index = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:70]
        rows = source.rows.gather(stored, index)
        assert rows.dtype == torch.uint8
        assert torch.equal(rows[:, :-1], split.images[index].flatten(1))
        assert torch.equal(rows[:, -1].long(), split.labels[index])
    assert source.rows.gather(source.val, torch.arange(0)).shape == (0, digits.train.images[0].numel() + 1)


def test_save_load_round_trip_and_other_data_is_refused(digits, tiny_run, tmp_path):
    cfg, model, metrics = tiny_run
    path = tmp_path / "classifier.pt"
    save_classifier(model, path, cfg.to_dict(), digits.checksum, metrics)
    loaded = load_classifier(path, CPU, data_md5=digits.checksum)
    assert not loaded.training and loaded.metrics == metrics
    f, p = embed(model, digits.test.images)
    f2, p2 = embed(loaded, digits.test.images)
    assert torch.equal(f, f2) and torch.equal(p, p2)

    with pytest.raises(CheckpointError, match="dvc repro classifier"):
        load_classifier(path, CPU, data_md5="0" * 32)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.pt", CPU)


def test_load_rebuilds_from_the_stored_params_not_todays(digits, tmp_path):
    cfg = _params(**{"classifier.channels": [4], "classifier.features": 6})
    model = DomainClassifier(digits.image_shape, 10, [4], 6, digits.max_value)
    save_classifier(model, tmp_path / "c.pt", cfg.to_dict(), digits.checksum)
    loaded = load_classifier(tmp_path / "c.pt")
    assert loaded.num_features == 6 and loaded.max_value == digits.max_value


def test_default_params_reach_95_percent_on_digits(digits):
    """With params.yaml's classifier section (about 10 s on 2 CPU cores)."""
    _, metrics = train_classifier(_params(), digits, CPU)
    assert metrics["test"]["accuracy"] >= 0.95, metrics


@pytest.mark.slow
def test_stage_writes_the_model_and_metrics(project):
    project.set_params({"classifier": {"epochs": 1}})
    project.stage("download")
    out = project.stage("classifier")
    assert "classifier test/accuracy" in out.stdout
    metrics = json.loads((project.root / "metrics/classifier.json").read_text())
    data = load_prepared(project.root / "data/prepared")
    model = load_classifier(project.root / "models/classifier.pt", CPU, data_md5=data.checksum)
    assert model.metrics == metrics and model.num_classes == 10
    assert not list((project.root / "models").glob(".*.tmp"))


def test_an_upstream_classifier_is_attached_with_its_md5_and_a_changed_file_is_refused(digits, tmp_path):
    from genlab.core import paths
    from genlab.evaluation import upstream

    from families import make_family

    path = tmp_path / "classifier.pt"
    where = dataclasses.replace(paths.MODEL_FILES, classifier=path)
    params = _params(**{"classifier.channels": [4], "classifier.features": 6}).to_dict()
    save_classifier(DomainClassifier(digits.image_shape, 10, [4], 6, digits.max_value), path, params, digits.checksum)
    gan = make_family("gan")
    assert [(needed.name, needed.stage) for needed in gan.upstream] == [("classifier", "classifier")]
    md5s = upstream.attach(gan, where, CPU, digits.checksum, _params())
    assert set(md5s) == {"classifier"} and gan.upstreams["classifier"].num_features == 6
    with pytest.raises(CheckpointError, match="trained on data"):
        upstream.attach(make_family("gan"), where, CPU, "0" * 32, _params())
    torch.manual_seed(1)  # other weights, the same params: another file
    save_classifier(DomainClassifier(digits.image_shape, 10, [4], 6, digits.max_value), path, params, digits.checksum)
    with pytest.raises(CheckpointError, match=r"changed since the gan model was trained .* retrain"):
        upstream.attach(make_family("gan"), where, CPU, digits.checksum, _params(), recorded=md5s)


def test_only_a_family_with_a_perceptual_loss_gets_a_perceptual_network(tmp_path):
    """The perceptual stage's view: the full section for FlowMo; one and the same stand-in view for every
    family without a perceptual loss, so that switching among them or editing perceptual.* reruns nothing."""
    from genlab.config.experiment import FAMILY_NAMES, stage_view
    from genlab.evaluation.classifier import save_unused

    cfg = _params(**{"perceptual.epochs": 3})
    views = {family: stage_view(cfg, "perceptual", family) for family in FAMILY_NAMES}
    assert views["flowmo"]["perceptual"]["epochs"] == 3
    assert {str(v) for f, v in views.items() if f != "flowmo"} == {str({"perceptual": {"needed": False}})}
    path = tmp_path / "perceptual.pt"
    save_unused(path, "perceptual", "model.family=vae trains without a perceptual loss")
    with pytest.raises(CheckpointError, match="holds no network: model.family=vae trains without"):
        load_classifier(path)


def test_the_classifier_trains_through_the_one_loop_and_a_resumed_run_ends_with_the_same_weights(digits, tmp_path):
    from genlab.config.sections import TrainConfig
    from genlab.core import checkpoint
    from genlab.core.runtime import seed_everything
    from genlab.evaluation.classifier import LabelledImages, build_classifier, labelled_source
    from genlab.training.loop import NullTracker, Trainer

    cfg = _params(**{"classifier.epochs": 2})
    ccfg, ckpt = cfg.classifier, tmp_path / "classifier-run.pt"

    def trainer(state=None):
        seed_everything(cfg.seed, "classifier_init")
        model = build_classifier(ccfg, digits.image_shape, num_classes(digits), digits.max_value)
        schedule = TrainConfig(epochs=2, batch_size=ccfg.batch_size, lr_schedule="cosine")
        return model, Trainer(
            LabelledImages(model, ccfg.lr), labelled_source(digits), schedule, cfg.seed, key="classifier",
            tracker=NullTracker(), checkpoint_path=ckpt, resume_state=state, order="classifier_order",
        )  # fmt: skip

    _, first = trainer()
    first.record(1, *first.epoch(1))  # a run stopped after its first epoch...
    model, resumed = trainer(checkpoint.load(ckpt))
    for epoch in resumed.epochs_left():  # ...and resumed by the loop's own resume code
        resumed.record(epoch, *resumed.epoch(epoch))
    reference, _ = train_classifier(cfg, digits, CPU)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
