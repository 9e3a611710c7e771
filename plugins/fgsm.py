"""FGSM adversarial training with a random start, "FGSM-RS" (Wong, Rice & Kolter, "Fast is
better than free", ICLR 2020): one attack step instead of PGD's ten.

Per batch (the authors' ``train_fgsm.py``, ``--delta-init random``): delta ~ U(-eps, eps),
clamped so that x + delta stays in the input box; one step
delta <- clip_[-eps, eps](delta + alpha sign(grad_delta L(f(x + delta), y))) with
alpha = 1.25 eps (their ``--alpha 10`` at eps 8/255), clamped to the box again; the model
then trains on x + delta. A training step costs two forward-backward passes (PGD-10 AT:
eleven). The paper pairs it with a cyclic learning rate (robx's ``--schedule onecycle``) and
warns of *catastrophic overfitting*: at large eps or step sizes, robust accuracy against PGD
collapses to about 0 within an epoch while FGSM accuracy climbs; the engine's collapse check
(``--collapse-check``, docs/fast.md) watches for it every epoch.

Through the step's attack (``step.attack.scaled``), so each example keeps its own budget
(``class_eps[y]`` from DAFA, FAIR-TAT or CFA) and alpha is 1.25 times that budget.
``random_start = false`` is plain FGSM (Goodfellow et al. 2015) with the same step: the
configuration that overfits catastrophically, kept for studying it.

Deviation, on purpose: robx's attacks run the model in eval mode (BatchNorm on its running
statistics, so an example's perturbation does not depend on its batch); the authors' code
takes the FGSM gradient in train mode. The same holds for every robx adversary, so PGD-AT
and FGSM-RS differ only by the attack (docs/fast.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, Step, check_ranges, hookimpl


class FGSM(Plugin):
    """FGSM-RS adversarial training (Wong et al. 2020): one step of 1.25 eps from a random start."""

    name = "fgsm"

    @dataclass
    class Options:
        step_size: float = 1.25  # alpha as a multiple of each example's eps (the paper's 10/255 at 8/255)
        random_start: bool = True

        def __post_init__(self) -> None:
            check_ranges(self, positive=("step_size",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        attack = step.attack.scaled(steps=1, step_size=self.options.step_size)
        return attack(start="uniform" if self.options.random_start else "none")
