"""The evaluation attack AutoAttack (Croce & Hein, ICML 2020), for classification.

The authors' reference implementation (``pyautoattack``, the ``autoattack`` extra), standard
version: APGD-CE, APGD-T, FAB-T and Square (``robx eval --attack autoattack``). It takes one
budget for every example."""

from __future__ import annotations

import torch
import torch.nn as nn

from robx import Attack, AttackPlan, OptionError, RegisterAttack, RobxError, Task, hookimpl, logits_of


class LogitsOnly(nn.Module):
    """Adapter for attack libraries that expect ``model(x) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, x)


def autoattack_examples(attack: Attack, plan: AttackPlan, task: Task) -> torch.Tensor:
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise RobxError("the autoattack attack needs the reference AutoAttack: pip install 'robx[autoattack]'") from error
    budgets = attack.eps.unique()
    if len(budgets) > 1:
        raise OptionError("autoattack takes one budget for every example; this attack has per-class budgets")
    eps = float(budgets[0]) if len(budgets) else plan.eps
    wrapped = LogitsOnly(attack.model).eval()
    norm = "Linf" if attack.norm == "linf" else "L2"
    classes = task.num_classes
    if classes >= 4:
        adversary = AutoAttack(wrapped, norm=norm, eps=eps, version="standard", seed=plan.seed, device=attack.x.device)
    else:
        # the standard version's targeted DLR loss reads the 4th-largest logit (its authors' code
        # fails below 4 classes) and the untargeted DLR the 3rd: run the attacks that are defined
        adversary = AutoAttack(wrapped, norm=norm, eps=eps, version="custom", seed=plan.seed, device=attack.x.device,
                               attacks=["apgd-ce", "square"] + (["apgd-dlr"] if classes == 3 else []))
    adversary.verbose = False
    x_adv, _ = adversary.run_standard_evaluation(attack.x, attack.y, batch_size=len(attack.y))
    return x_adv


@hookimpl
def register_attacks(register: RegisterAttack) -> None:
    register("autoattack", autoattack_examples, title="AutoAttack (standard)", iterative=False,
             needs=("pyautoattack", "pip install 'robx[autoattack]'"))
