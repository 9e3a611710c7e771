"""The evaluation attack CW-Linf (Carlini & Wagner 2017), for classification.

PGD on their margin loss, the form Madry et al. and the robustness literature report: it
ascends max_{k != y} z_k - z_y instead of the cross-entropy (``robx eval --attack cw``)."""

from __future__ import annotations

import torch

from robx import Attack, AttackPlan, RegisterAttack, Task, hookimpl, margin_loss


def cw_examples(attack: Attack, plan: AttackPlan, task: Task) -> torch.Tensor:
    return attack(loss=margin_loss)


@hookimpl
def register_attacks(register: RegisterAttack) -> None:
    register("cw", cw_examples, title="CW")
