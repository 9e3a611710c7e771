"""The training step's precision and layout options (issue 19, item 1), on CPU: bf16 autocast
trains and keeps the attack's constraints; channels_last follows the model and the config."""

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
    from robx.core.run import load_checkpoint

    straight, killed = train_killed_and_resumed(tiny_config(epochs=3, channels_last=channels_last), tmp_path,
                                                monkeypatch, kill_in_epoch=2)
    a, b = (load_checkpoint(Path(d) / "checkpoint.pt")["model"] for d in (straight, killed))
    assert all(torch.equal(a[name], b[name]) for name in a)
