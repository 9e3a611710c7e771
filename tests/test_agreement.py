"""robx's PGD-20 against an independent implementation (torchattacks) on a trained model."""

from __future__ import annotations

import pytest
import torch

from robx.core.engine import load_run
from robx.core.evaluate import evaluate
from robx.core.registry import registry

torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (dev extra) is the independent reference")


class LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]


def test_pgd20_robust_accuracy_agrees_with_torchattacks(trained_run):
    run = load_run(trained_run, device="cpu")
    model = run.state.model.eval()
    x = run.task.inputs(run.data.test.x)
    y = run.data.test.y
    eps, alpha = run.config.eps, run.config.eval_alpha
    torch.manual_seed(0)
    ours = evaluate(model, run.task, run.data.test, registry().plan_attack(run.task, "pgd", eps=eps, alpha=alpha, steps=20),
                    device=torch.device("cpu"))
    # torchattacks restores the wrapper's own train/eval flag after attacking, so the
    # wrapper must be in eval mode too, or BatchNorm would score in train mode.
    attack = torchattacks.PGD(LogitsOnly(model).eval(), eps=eps, alpha=alpha, steps=20, random_start=True)
    torch.manual_seed(1)
    x_adv = attack(x, y)
    assert not model.training
    with torch.no_grad():
        theirs = (model(x_adv)[1].argmax(1) == y).float().mean().item()
    robx_acc = ours.robust_scores.mean().item()
    clean_acc = ours.clean_scores.mean().item()
    assert robx_acc < clean_acc - 0.05  # the attack really bites
    assert abs(robx_acc - theirs) <= 0.015, (robx_acc, theirs)
