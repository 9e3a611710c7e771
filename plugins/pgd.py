"""PGD adversarial training (Madry et al., ICLR 2018): the default adversary.

min_theta E[ max_{x' in B(x, eps) ∩ [0,1]} L(f(x'), y) ], the inner maximisation by
projected gradient ascent from a random start on the task's attack loss (cross-entropy for
classification), through the step's bound attack (``step.attack``): the budget is per
sample (``class_eps[y]`` and ``class_alpha[y]``, set by the owner of the per-class attack
budget: DAFA, FAIR-TAT, CFA), so class-wise margins reach the attack without touching it;
steps and norm are the run's (``--steps``, ``--norm``). It is the fallback adversary: added
when no selected plugin generates adversarial examples, and chosen over TRADES' KL attack
when both are selected. ``random_start`` (false: start at x) and ``start_scale`` (the
start's radius as a fraction of eps; STPGD's U(-eps/10, eps/10) is 0.1) are its options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, Step, hookimpl


class PGD(Plugin):
    """PGD adversarial training (Madry et al. 2018); the fallback adversary."""

    name = "pgd"
    fallback = True

    @dataclass
    class Options:
        random_start: bool = True
        start_scale: float = 1.0  # the start is uniform in the ball of radius start_scale * eps (STPGD: 0.1)

        def __post_init__(self) -> None:
            if not 0.0 < self.start_scale <= 1.0:
                raise ValueError(f"start_scale must be in (0, 1], got {self.start_scale}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        return step.attack(start="uniform" if self.options.random_start else "none",
                           start_scale=self.options.start_scale)
