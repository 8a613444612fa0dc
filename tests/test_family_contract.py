"""One contract test over every registered family: what the loop and the stages rely on.

Each family gets its tiny row from tests/families.py; registering a family without one fails here.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from genlab.models import FAMILIES
from genlab.models.base import Encoder, ExtraFigures, Generative, Reconstructor, Tokenizer

from families import TINY_FAMILIES, Stepper, batch, make_family

NAMES = sorted(FAMILIES)
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weights(family) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in m.parameters()] for k, m in family.modules.items()}


def moved(before, family) -> set[str]:
    return {
        k for k, m in family.modules.items() if any(not torch.equal(a, b) for a, b in zip(before[k], m.parameters()))
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread


def test_every_registered_family_has_a_tiny_config_and_a_config_class():
    assert set(TINY_FAMILIES) == set(FAMILIES)
    for name, cls in FAMILIES.items():
        assert cls.name == name and cls.config_class.STAGES == ("train",)


@pytest.mark.parametrize("name", NAMES)
def test_train_step_moves_every_network_and_eval_step_moves_none(name):
    family = make_family(name)
    x, step = batch(family, 16), Stepper(family)
    before = weights(family)
    family.train(False)
    out = family.eval_step(x, 1, gen(0))
    assert moved(before, family) == set(), "eval_step changed weights"
    assert set(out) <= set(family.metric_names) | set(family.eval_only_metrics)
    for i in range(6):  # enough steps for families that update some networks only every few steps
        metrics = step(x, gen(i))
    assert moved(before, family) == set(family.modules), f"not every network trained: {moved(before, family)}"
    assert list(metrics) == list(family.metric_names)
    assert all(v.dim() == 0 and not v.requires_grad and math.isfinite(v.item()) for v in metrics.values())
    scored = {"domain_fid", "domain_rfid", "psnr"}  # added by the in-training scorer
    assert set(family.curves) <= set(family.metric_names) | set(family.eval_only_metrics) | scored


@pytest.mark.parametrize("name", NAMES)
def test_optimizers_cover_every_trainable_parameter(name):
    """Every trainable weight has an optimiser (a family with stages may give a network several)."""
    family = make_family(name)
    specs = family.optimizers()
    trainable = {id(p) for m in family.modules.values() for p in m.parameters() if p.requires_grad}
    for spec in specs.values():
        owned = [id(p) for p in spec.params]
        assert len(owned) == len(set(owned)) and set(owned) <= trainable
    assert {id(p) for spec in specs.values() for p in spec.params} == trainable
    assert set(family.ema_of) <= set(specs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_snapshots_samples_and_reconstructions_are_images_in_unit_range(name, shape):
    family = make_family(name, shape=shape, levels=256)
    family.train(False)
    for key, images in family.snapshot(torch.rand(4, *shape), gen(4)).items():
        assert images.shape[1:] == shape and images.min() >= 0 and images.max() <= 1, key
    if isinstance(family, Reconstructor):
        x = torch.rand(3, *shape)
        recon = family.reconstruct(x, gen(5))
        assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    if not isinstance(family, Generative):
        return
    z = family.prior(3, gen(1))
    images = family.generate(z)
    assert images.shape == (3, *shape) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(family.generate(z), images, rtol=0, atol=0)  # deterministic in z
    a, b = family.sample(3, gen(2)), family.sample(3, gen(2))
    assert torch.equal(a, b) and not torch.equal(a, family.sample(3, gen(3)))


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_work(name):
    family = make_family(name)
    family.train(False)
    x = torch.rand(5, 1, 8, 8)
    if isinstance(family, Encoder):
        z = family.encode(x)
        assert z.dim() == 2 and len(z) == 5 and family.generate(z).shape == x.shape
    if isinstance(family, Reconstructor):
        a, b = family.reconstruct(x, gen(1)), family.reconstruct(x, gen(1))
        assert a.shape == x.shape and torch.equal(a, b), "the same generator must give the same reconstruction"
        pairs = family.paired_reconstructions(x, gen(1))
        assert pairs.shape == (10, 1, 8, 8) and torch.equal(pairs[0::2], x)
    if isinstance(family, Tokenizer):
        tokens = family.tokenize(x)
        assert tokens.shape == (5, family.sequence_length) and tokens.dtype == torch.int64
        assert tokens.min() >= 0 and tokens.max() < family.vocabulary
        assert family.detokenize(tokens, gen(2)).shape == x.shape
    if isinstance(family, ExtraFigures):
        assert callable(family.figures)
    assert isinstance(family, (Generative, Reconstructor)), "a family must generate or reconstruct"


@pytest.mark.parametrize("name", NAMES)
def test_test_metrics_are_finite_numbers(name):
    family = make_family(name)
    family.train(False)
    metrics = family.test_metrics([batch(family, 6, 1), batch(family, 4, 2)], gen(5))
    assert metrics and all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_identical_outputs(name):
    a, b = make_family(name, seed=1), make_family(name, seed=2)
    step = Stepper(a)
    for i in range(3):
        step(batch(a, 8, 10 + i), gen(i))
    b.load_state_dict(a.state_dict())
    a.train(False), b.train(False)
    for key, images in a.snapshot(torch.rand(4, 1, 8, 8, generator=gen(9)), gen(6)).items():
        torch.testing.assert_close(
            images, b.snapshot(torch.rand(4, 1, 8, 8, generator=gen(9)), gen(6))[key], rtol=0, atol=0
        )


@pytest.mark.parametrize("name", NAMES)
def test_same_seeds_give_identical_training(name):
    def run():
        family = make_family(name, seed=3)
        step, g = Stepper(family), gen(7)
        losses = [{k: v.item() for k, v in step(batch(family, 8, i), g).items()} for i in range(3)]
        family.train(False)
        return losses, family.snapshot(torch.rand(2, 1, 8, 8, generator=gen(9)), gen(8))

    (l1, s1), (l2, s2) = run(), run()
    assert l1 == l2 and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_the_registry_pairs_each_params_section_with_its_network_code():
    """A family's params section (torch-free) is the one its class builds from, and declares its upstream."""
    from genlab.models import SECTIONS

    assert list(SECTIONS) == list(FAMILIES)
    for name, cls in FAMILIES.items():
        assert cls.name == name and cls.config_class is SECTIONS[name]
        assert cls.upstream == SECTIONS[name].UPSTREAM


def test_params_defaults_agree_with_the_network_codes_own():
    """The params sections repeat a few defaults of the processes (which import torch): the same values."""
    from genlab.models.flowmo import params as flowmo_params
    from genlab.models.maskgit import params as maskgit_params
    from genlab.processes import masked_tokens, rectified_flow

    for name in ("UNIFORM_SHARE", "POSTTRAIN_STEPS", "STEPS", "RHO", "GUIDANCE"):
        assert getattr(flowmo_params, name) == getattr(rectified_flow, name), name
    assert maskgit_params.CHOICE_TEMPERATURE == masked_tokens.CHOICE_TEMPERATURE


def test_validating_params_loads_no_torch():
    """`import genlab.config.experiment` (the validate stage's whole need) loads neither torch nor any network code."""
    import subprocess
    import sys

    code = "import sys, genlab.config.experiment; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_what_a_family_needs_is_declared_consistently():
    """`UPSTREAM`, `TOKENS_OF` and `SCORED_BY` are all the pipeline knows of a family's needs: a trained network
    names a stage with params of its own, a tokenizer a params key holding its file, a scorer its keys."""
    from genlab.config.experiment import Config, stage_view
    from genlab.models import SECTIONS

    stages = {field.name for field in dataclasses.fields(Config)}
    for name, section in SECTIONS.items():
        keys = {field.name for field in dataclasses.fields(section)}
        declared = {needed.name: needed for needed in section.UPSTREAM}
        assert len(declared) == len(section.UPSTREAM), f"{name}: an upstream declared twice"
        for needed in section.UPSTREAM:
            assert needed.stage in stages if needed.stage else needed.name in keys, (name, needed)
        if section.TOKENS_OF:
            assert section.TOKENS_OF in declared and declared[section.TOKENS_OF].stage is None, name
        if section.SCORED_BY:
            assert declared[section.SCORED_BY].stage and {"eval_every", "fid_samples"} <= keys, name
            assert {"eval_every", "fid_samples"} <= set(stage_view(Config(), "train", name)[name]), name


def test_nothing_outside_a_family_names_it_or_its_own_upstreams():
    """The pipeline, loop and stages go by the declarations: no string constant outside `models/<family>/` and
    the registry equals a family's name or the name of an upstream no stage trains (a tokenizer)."""
    import ast
    from pathlib import Path

    from genlab.models import SECTIONS

    root = Path(__file__).resolve().parents[1]
    names = set(SECTIONS) | {u.name for s in SECTIONS.values() for u in s.UPSTREAM if u.stage is None}
    found = []
    files = [*root.joinpath("src/genlab").rglob("*.py"), *root.joinpath("stages").glob("*.py")]
    for file in files:
        rel = file.relative_to(root)
        if rel.parts[:3] == ("src", "genlab", "models") and (len(rel.parts) > 4 or rel.name == "__init__.py"):
            continue  # a family's own folder; the registry
        tree = ast.parse(file.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None
        }
        found += [
            f"{rel}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
        ]
    assert not found, f"family or upstream names written outside the family: {found}"


_NEW_FAMILY = """
import json, sys
sys.path.insert(0, sys.argv[1])
from genlab import models
from examples.ae.params import AEConfig
models.REGISTRY["ae"] = (AEConfig, "examples.ae.family:AE")  # the one line a new family adds to the registry
models.SECTIONS["ae"] = AEConfig  # (derived from REGISTRY when genlab.models is imported; it already was)

import torch
from genlab.config.experiment import config_from_dict, reference_markdown, stage_view
from genlab.data import load_prepared, prepare
from genlab.models import DataSpec, build_family
from genlab.training.loop import NullTracker, fit, resume_key
from genlab.training.sources import image_source

cfg = config_from_dict({"model": {"family": "ae"}, "ae": {"latent_dim": 4}, "train": {"epochs": 3, "batch_size": 128}})
data = load_prepared(sys.argv[2])
family = build_family("ae", cfg.family, DataSpec(data.image_shape, data.levels), torch.device("cpu"))
history = fit(family, image_source(data, "none"), cfg.train, cfg.seed, key=resume_key(stage_view(cfg, "train")),
              tracker=NullTracker())
print(json.dumps({"val_loss": [row["val_loss"] for row in history], "train_view": stage_view(cfg, "train")["ae"],
                  "documented": "`ae.latent_dim`" in reference_markdown()}))
"""


def test_a_new_family_is_two_files_and_a_registry_line(tmp_path):
    """The plain autoencoder of tests/examples/ae (a params section and a Family, 73 lines), registered with one
    line, is a family like the others: params validated and documented, a train-stage view, trained by the loop."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from genlab.config.experiment import config_from_dict
    from genlab.data import prepare

    prepare(config_from_dict({}), tmp_path)
    tests = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", _NEW_FAMILY, str(tests), str(tmp_path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["train_view"] == {"hidden": 256, "latent_dim": 4, "lr": 1e-3} and result["documented"]
    losses = result["val_loss"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
