"""MART (Wang et al., ICLR 2020): misclassification-aware adversarial training.

L = BCE(f(x'), y) + beta * mean_i KL(f(x_i) || f(x'_i)) * (1 - p_y(x_i)), beta = 6, where
the boosted cross-entropy BCE = CE(f(x'), y) - log(1 - max_{k != y} p_k(x')). f(x) and f(x')
are the engine's clean and adversarial views (``reads``): two train-mode passes, natural
first, as in the authors' code.
The adversary, as in the authors' code: PGD on the cross-entropy (the task's attack loss)
starting from x + 0.001 N(0, 1) instead of a uniform point of the ball (not clamped to the
input box before the first gradient, as there; ``start_in_box = true`` clamps it); like TRADES' it is a
default that gives way to another selected adversary (``yields``). MART defines the training
loss, so it cannot be combined with ``--loss``; it needs hard labels (no mixing plugins
before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


from robx import Plugin, RobxError, Step, TrainState, check_ranges, hookimpl
from robx.plugins.common import kl_per_sample


def boosted_cross_entropy(adv_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(adv_logits, dim=1)
    others = probs.scatter(1, labels[:, None], 0.0)
    return F.cross_entropy(adv_logits, labels, reduction="none") - torch.log(1.0001 - others.amax(dim=1))


class MART(Plugin):
    """MART: boosted CE on x' + beta * KL weighted by 1 - p_y(x) (Wang et al. 2020)."""

    name = "mart"
    reads = ("clean", "adversarial")
    yields = ("generate_adversary",)

    @dataclass
    class Options:
        beta: float = 6.0
        init_std: float = 0.001
        start_in_box: bool = False

        def __post_init__(self) -> None:
            check_ranges(self, non_negative=("beta", "init_std"))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        return step.attack(start="gaussian", start_std=self.options.init_std,
                           gaussian_in_box=self.options.start_in_box)

    @hookimpl
    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.outputs is not None and step.targets is not None
        if step.targets.is_floating_point():
            raise RobxError("mart needs hard labels; it cannot follow a mixing plugin")
        return boosted_cross_entropy(step.outputs, step.targets)

    @hookimpl
    def extra_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.clean_outputs is not None and step.adv_outputs is not None
        true_prob = F.softmax(step.clean_outputs, dim=1).gather(1, step.y[:, None]).squeeze(1)
        kl = kl_per_sample(step.clean_outputs, step.adv_outputs)
        return self.options.beta * (kl * (1.0000001 - true_prob)).mean()
