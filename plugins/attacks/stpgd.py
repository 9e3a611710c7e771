"""The evaluation attack STPGD (Liu et al., NeurIPS 2022), for tasks with victim units.

As the authors' code (Adv-ST) runs it: rank the task's victim units by saliency after 5
whole-input PGD iterations (``Attack.salient_units``), then PGD moving only the top
``victims`` fraction of them (``robx eval --attack stpgd --victims 0.1``), from
U(-eps/10, eps/10). The crime task evaluates with it.

The same two primitives serve training: the ``topk`` plugin chooses victims with
``salient_units`` and every adversary attacks through the bound attack."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robx import Attack, AttackPlan, RegisterAttack, Task, hookimpl

#: the authors' saliency iterations and random-start radius (a fraction of eps)
SALIENCY_STEPS, START_SCALE = 5, 0.1


@dataclass
class Victims:
    victims: float = field(default=0.1, metadata={"help": "The fraction of the task's victim units the attack "
                                                          "moves (STPGD: 0.1)."})

    def __post_init__(self) -> None:
        if not 0.0 < self.victims <= 1.0:
            raise ValueError(f"victims must be in (0, 1], got {self.victims:g}")


def stpgd_examples(attack: Attack, plan: AttackPlan, task: Task) -> torch.Tensor:
    mask = attack.salient_units(task, plan.options.victims, SALIENCY_STEPS)
    return attack.on_victims(mask)(start_scale=START_SCALE)


@hookimpl
def register_attacks(register: RegisterAttack) -> None:
    register("stpgd", stpgd_examples, title="STPGD", options=Victims)
