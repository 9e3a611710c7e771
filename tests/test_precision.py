"""The GPU path's options (issue 19, item 1), on CPU: bf16 autocast trains and keeps the
attack's constraints; channels_last follows the model and the config; the training split is
kept on the device where it fits and batches are cut there (one test needs a GPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from robx.core import engine
from robx.core.engine import build_run, train
from robx.core.state import Step


def test_bf16_training_finishes_with_finite_losses_and_fp32_evaluation(tmp_path):
    report = train(tiny_config(precision="bf16"), tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["config"]["precision"] == "bf16"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert 0.0 <= report["summary"]["robust"]["overall"] <= report["summary"]["standard"]["overall"] + 0.05


def test_the_attack_under_bf16_autocast_stays_in_the_budget_and_the_box(tmp_path):
    run = build_run(tiny_config(precision="bf16", eps=0.1, alpha=0.04, steps=4), tmp_path / "unused")
    x, y, labels = engine.training_batch(run, torch.arange(64))
    with engine.step_precision(run.config, run.state.device):
        step: Step = engine.prepared_step(run, x, y, labels)
    assert step.x_adv.dtype == torch.float32  # the inputs stay fp32; only the model's arithmetic is bf16
    assert float((step.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(step.x_adv.min()) >= 0.0 and float(step.x_adv.max()) <= 1.0
    assert float((step.x_adv - x).abs().max()) > 0.05  # it moved: the bf16 gradient has a sign


def test_channels_last_follows_the_config_the_device_default_and_the_model(tmp_path):
    default = build_run(tiny_config(), tmp_path / "a")  # smallcnn16 on CPU: the CPU default
    assert default.layout == (torch.channels_last if engine.CHANNELS_LAST_BY_DEVICE["cpu"] else torch.contiguous_format)
    on = build_run(tiny_config(channels_last=True), tmp_path / "b")
    convolution = next(m for m in on.state.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    x, _, _ = engine.training_batch(on, torch.arange(8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    off = build_run(tiny_config(channels_last=False), tmp_path / "c")
    assert off.layout == torch.contiguous_format and engine.training_batch(off, torch.arange(8))[0].is_contiguous()
    dense = build_run(tiny_config(model="mlp", channels_last=True), tmp_path / "d")
    assert dense.layout == torch.contiguous_format  # no 2-D convolution: nothing to lay out


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_run_resumes_bit_exactly_in_either_layout(tmp_path, monkeypatch, channels_last):
    from conftest import train_killed_and_resumed
    from robx.core.rundir import load_checkpoint

    straight, killed = train_killed_and_resumed(tiny_config(epochs=3, channels_last=channels_last), tmp_path,
                                                monkeypatch, kill_in_epoch=2)
    a, b = (load_checkpoint(Path(d) / "checkpoint.pt")["model"] for d in (straight, killed))
    assert all(torch.equal(a[name], b[name]) for name in a)


# --------------------------------------------------------------------------- the data on the device


def test_the_data_stays_on_the_host_on_cpu_and_on_a_gpu_where_it_fits_or_as_told(monkeypatch):
    from types import SimpleNamespace

    from robx.core.config import TrainConfig
    from robx.core.data import Split

    split = Split(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.zeros(10, dtype=torch.long),
                  torch.zeros(10, dtype=torch.long))
    assert split.nbytes == 120 + 80 + 80  # by hand: 10 x 12 uint8, 2 x 10 int64
    memory = {"total_memory": 1000}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(**memory))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not engine.keeps_data_on_device(TrainConfig(data_on_device=True), cpu, split)  # the host is the device
    assert engine.keeps_data_on_device(TrainConfig(), cuda, split) == (280 <= engine.DEVICE_DATA_SHARE * 1000)
    memory["total_memory"] = 1120
    assert engine.keeps_data_on_device(TrainConfig(), cuda, split)  # 280 bytes = a quarter of 1120
    memory["total_memory"] = 1119
    assert not engine.keeps_data_on_device(TrainConfig(), cuda, split)
    assert engine.keeps_data_on_device(TrainConfig(data_on_device=True), cuda, split)
    assert not engine.keeps_data_on_device(TrainConfig(data_on_device=False), cuda, split)


def test_training_batches_are_cut_from_the_batch_source_as_stored_then_converted(tmp_path):
    from robx.core.data import Split

    run = build_run(tiny_config(augment=False), tmp_path / "unused")
    assert run.batch_source is run.data.train  # CPU: no copy
    stored = run.data.train
    # a source that differs from data.train shows which one the batches come from; stored as
    # uint8 (CIFAR's storage), it becomes x / 255 (digits are stored as floats in [0, 1])
    as_uint8 = (stored.x * 16).round().to(torch.uint8)
    run.batch_source = Split(as_uint8.flip(-1), stored.y, stored.labels)
    x, y, labels = engine.training_batch(run, torch.tensor([3, 1]))
    expected = (stored.x[[3, 1]] * 16).round().flip(-1) / 255
    torch.testing.assert_close(x, expected)
    assert y.tolist() == stored.y[[3, 1]].tolist() and labels.tolist() == stored.labels[[3, 1]].tolist()
    batches = [torch.tensor([0, 2]), torch.tensor([5])]
    assert engine.on_batch_source(run, batches) is batches  # on the host nothing is copied


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the data path on a GPU)")
def test_on_a_gpu_the_split_is_on_the_device_as_uint8_and_a_step_never_waits_for_the_host(tmp_path):
    run = build_run(tiny_config(device="cuda", precision="bf16"), tmp_path / "unused")
    assert run.batch_source.x.device.type == "cuda" and run.batch_source.x.dtype == torch.uint8
    progress = engine.SilentProgress()
    engine.train_epoch(run, progress)  # warm-up: kernels load, caches fill
    tracker, sums = run.task.statistics(run.state.device), {}
    (idx,) = engine.on_batch_source(run, [torch.arange(128)])
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            x, y, labels = engine.training_batch(run, idx)
            engine.train_step(run, x, y, labels, tracker, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_a_compiled_model_trains_like_the_eager_one_and_checkpoints_under_the_same_names(tmp_path):
    from robx.core.rundir import load_checkpoint

    config = dict(model="mlp", epochs=1)  # a small graph: inductor compiles it in seconds
    train(tiny_config(**config), tmp_path / "eager")
    train(tiny_config(compile="default", **config), tmp_path / "compiled")
    losses = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
              for run in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # fused kernels round differently, nothing more
    eager, compiled = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("eager", "compiled"))
    assert list(compiled) == list(eager)  # no "_orig_mod." prefix: a compiled run's checkpoint loads anywhere
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"]["compile"] == "default"
