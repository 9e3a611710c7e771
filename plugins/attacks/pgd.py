"""The evaluation attack PGD (Madry et al., ICLR 2018), the default attack.

Projected gradient ascent on the task's attack loss from a uniform random point of the
ball. As the default attack it applies to every task, training's adversaries bind it (they
choose its loss, start and targets), validation runs it, and it evaluates a run unless the
task names another default (``robx eval --attack pgd``)."""

from __future__ import annotations

import torch

from robx import Attack, AttackPlan, RegisterAttack, Task, hookimpl

#: this module's plugin name: ``pgd`` is the training method (robx.plugins.pgd)
name = "pgd-attack"


def pgd_examples(attack: Attack, plan: AttackPlan, task: Task) -> torch.Tensor:
    return attack()


@hookimpl
def register_attacks(register: RegisterAttack) -> None:
    register("pgd", pgd_examples, title="PGD", default=True)
