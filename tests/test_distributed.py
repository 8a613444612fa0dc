"""Data-parallel training (genlab.training.distributed) with real torchrun workers on gloo, and the precision and
compile knobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from genlab.config.experiment import config_from_dict
from genlab.core.errors import ConfigError
from genlab.core.runtime import Rngs
from genlab.data import load_prepared, prepare
from genlab.training.distributed import World
from genlab.training.loop import Optimisation, compile_networks, evaluate_split
from genlab.training.sources import image_source

from conftest import REPO, assert_one_point_per_step
from families import TINY_FAMILIES, build_from, make_family, train_run

WORKER = REPO / "tests" / "distributed_worker.py"
TRAIN_IMAGES = 256  # distributed_worker.TRAIN_IMAGES
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(config_from_dict({}), out)
    return out


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _workers(prepared: Path, out: Path, params: dict, launchers: list[list[str]]) -> list[dict]:
    """Start each launcher command (torchrun options) on the worker script; return every rank's results."""
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run"]
    args = [str(WORKER), str(prepared), str(out), json.dumps(params)]
    procs = [
        subprocess.Popen([*command, *options, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for options in launchers
    ]
    for proc in procs:
        log = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, log
    size = params["train"]["processes"]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(size)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v for m, sd in state["modules"].items() for k, v in sd.items()}


def _full_batch_reference(cfg, data) -> tuple[dict, dict]:
    """One process, one Adam step per global batch on the gradient of the batch mean loss, with each half of
    the batch drawing its noise from the stream of the worker that trains on it: (final state, first gradients)."""
    family = build_from(cfg, data)
    names = {id(p): f"{m}.{n}" for m, module in family.modules.items() for n, p in module.named_parameters()}
    source = image_source(data, cfg.data.binarize)
    train = source.train[:TRAIN_IMAGES]
    rngs = [Rngs(cfg.seed, CPU, rank) for rank in range(2)]
    optimisation = Optimisation(family, cfg.train)
    first: dict[str, torch.Tensor] = {}
    for epoch in range(1, cfg.train.epochs + 1):
        family.train(True)
        order = torch.randperm(TRAIN_IMAGES, generator=rngs[0].order)
        for start in range(0, TRAIN_IMAGES, cfg.train.batch_size):
            batch = order[start : start + cfg.train.batch_size]
            total: dict[str, torch.Tensor] = {}
            for shard, rng in zip(batch.tensor_split(2), rngs):
                losses, _ = family.losses(source.to_input(train[shard], rng.noise), epoch, rng.noise)
                for name, loss in losses.items():
                    total[name] = total.get(name, 0) + loss * len(shard) / len(batch)
            for name, loss in total.items():
                optimisation.update(name, loss)
                if not first:
                    params = [p for g in optimisation.optimizers[name].param_groups for p in g["params"]]
                    first = {names[id(p)]: p.grad.clone() for p in params if p.grad is not None}
    return family.state_dict(), first


# Adam divides each gradient by its running RMS, which magnifies float rounding in near-zero gradients
# (~1e-5 after one DDPM step, up to ~lr after eight); the VAE's stay within 1e-5 over eight steps.
@pytest.mark.parametrize(("family", "epochs", "batch_size", "atol"), [("vae", 2, 64, 1e-5), ("ddpm", 1, 256, 5e-5)])
def test_two_workers_make_the_full_batch_update_and_reduce_metrics_exactly(
    prepared, tmp_path, family, epochs, batch_size, atol
):
    params = {
        "model": {"family": family},
        "train": {"epochs": epochs, "batch_size": batch_size, "processes": 2, "lr_schedule": "constant"},
    }
    ranks = _workers(prepared, tmp_path / "out", params, [["--standalone", "--nproc_per_node=2"]])

    # The workers stay identical: same weights, same reduced history.
    for name, value in _tensors(ranks[0]["state"]).items():
        assert torch.equal(value, _tensors(ranks[1]["state"])[name]), name
    assert ranks[0]["history"] == ranks[1]["history"]
    # Gradients averaged over the two halves = the gradient of the whole batch; so are the weights after it.
    state, grads = _full_batch_reference(config_from_dict({**TINY_FAMILIES, **params}), load_prepared(prepared))
    assert grads.keys() == ranks[0]["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    reference = _tensors(state)
    for name, value in _tensors(ranks[0]["state"]).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=atol, msg=name)
    # Validation metrics reduced over the workers' batches equal one process evaluating them all.
    for rank in ranks:
        assert rank["val"]["reduced"].keys() == rank["val"]["alone"].keys()
        for k, v in rank["val"]["reduced"].items():
            assert v == pytest.approx(rank["val"]["alone"][k], rel=1e-6), k


def test_two_nodes_meet_through_torchrun_rendezvous_on_loopback(prepared, tmp_path):
    """Two launchers (`--nnodes 2`, one worker each) find each other at a c10d rendezvous endpoint: the GAN,
    whose BatchNorm statistics are per worker on CPU and whose running buffers are averaged every epoch."""
    endpoint = f"127.0.0.1:{_free_port()}"
    node = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=t"]
    params = {
        "model": {"family": "gan"},
        "gan": {"eval_every": 0},
        "train": {"epochs": 2, "batch_size": 64, "processes": 2},
    }
    ranks = _workers(prepared, tmp_path / "out", params, [node, node])
    first, second = _tensors(ranks[0]["state"]), _tensors(ranks[1]["state"])
    assert any("running_mean" in name for name in first)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 2


def test_each_worker_takes_a_disjoint_contiguous_shard_of_the_global_batch():
    batch = torch.arange(10)
    for size in (1, 2, 3, 4):
        shards = [World(rank, size).shard(batch) for rank in range(size)]
        assert torch.equal(torch.cat(shards), batch)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_worker_noise_streams_differ_and_worker_zero_keeps_the_single_process_stream():
    one, zero, other = Rngs(0, CPU), Rngs(0, CPU, rank=0), Rngs(0, CPU, rank=1)
    draws = [torch.randn(4, generator=r.noise) for r in (one, zero, other)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(one.order.get_state(), other.order.get_state())  # every worker draws the same batch order


def test_global_batch_must_divide_among_the_workers():
    with pytest.raises(ConfigError, match=r"train.batch_size' = 63 does not divide among train.processes = 2"):
        config_from_dict({"train": {"batch_size": 63, "processes": 2}})
    assert config_from_dict({"train": {"batch_size": 64, "processes": 2}}).train.processes == 2


def test_fp16_on_cpu_is_refused_before_training(digits):
    cfg = config_from_dict({**TINY_FAMILIES, "train": {"epochs": 1, "batch_size": 128, "precision": "fp16"}})
    with pytest.raises(ConfigError, match="train.precision = fp16 needs a CUDA device.*use bf16"):
        train_run(cfg, digits)


def test_validation_noise_depends_on_the_batch_not_on_the_worker(digits):
    """evaluate_split with batches dealt to two workers' worth of turns draws the same noise per batch."""
    cfg = config_from_dict({**TINY_FAMILIES, "model": {"family": "ddpm"}})
    family = build_from(cfg, digits)
    source = image_source(digits, "none")
    twice = [evaluate_split(family, source.val, source.to_input, 1, 0, batch_size=48) for _ in range(2)]
    assert twice[0] == twice[1]
    other_epoch = evaluate_split(family, source.val, source.to_input, 2, 0, batch_size=48)
    assert other_epoch != twice[0]


def test_compiled_networks_give_the_eager_losses(digits):
    params = {**TINY_FAMILIES, "train": {"epochs": 2, "batch_size": 128}}
    eager = train_run(config_from_dict(params), digits)
    counters.clear()
    compiled = train_run(config_from_dict({**params, "train": {**params["train"], "compile": True}}), digits)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did capture the networks
    for row_e, row_c in zip(eager, compiled):
        for k, v in row_e.items():
            assert row_c[k] == pytest.approx(v, rel=1e-4), k


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun (running as `launcher_pid`) started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


@pytest.mark.slow
def test_train_processes_starts_workers_and_a_killed_worker_resumes_to_the_uninterrupted_metrics(project):
    project.set_params({"train": {"epochs": 30, "processes": 2}})
    project.stage("download")
    out = project.stage("train").stdout
    assert "train.processes = 2: -m torch.distributed.run --standalone --nproc_per_node=2" in out
    assert out.count("MLflow run ") == 1 and out.count("epoch 30/30") == 1  # rank 0 alone reports
    expected = {p: (project.root / p).read_text() for p in ("metrics/train.json", "models/model-history.json")}
    client = project.mlflow()
    (run,) = client.search_runs([client.get_experiment_by_name("genlab").experiment_id])
    assert run.data.tags["genlab.world_size"] == "2" and run.data.tags["genlab.backend"] == "gloo"
    assert run.data.params["train.processes"] == "2"
    assert_one_point_per_step(client, run, 30)

    # Kill worker 1 mid-run: the run fails, and the last checkpoint is whole.
    ckpt = project.root / "checkpoints" / "train.pt"
    proc = project.popen(sys.executable, "stages/train.py")

    def own_epoch_3():  # the first run's final checkpoint stays until this run replaces it
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else {}
        return state.get("run_id") not in (None, run.info.run_id) and state["epoch"] >= 3

    while proc.poll() is None and not own_epoch_3():
        time.sleep(0.05)
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, log
    state = torch.load(ckpt, weights_only=True)
    killed_at = state["epoch"]
    assert 3 <= killed_at < 30 and len(state["worker_rngs"]) == 2
    runs = client.search_runs([client.get_experiment_by_name("genlab").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status in ("FAILED", "KILLED"), log

    project.set_params({"train": {"resume": True}})
    out = project.stage("train").stdout
    assert f"resuming from checkpoints/train.pt after epoch {killed_at}" in out
    for path, text in expected.items():
        assert (project.root / path).read_text() == text, path
    resumed = client.get_run(runs[0].info.run_id)
    assert resumed.info.status == "FINISHED"
    assert_one_point_per_step(client, resumed, 30)


def test_compile_reaches_every_network_a_family_calls(monkeypatch):
    """FlowMo keeps its encoder and decoder in a ModuleDict (and an EMA of it): those are compiled, not the dict."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    family = make_family("flowmo")
    for module in family.modules.values():
        compile_networks(module)
    ema = family.ema.module
    expected = [family.encoder, family.decoder, ema["encoder"], ema["decoder"]]
    assert all(any(m is c for c in compiled) for m in expected)
    assert not any(c is family.net or c is family.ema or c is ema for c in compiled)
