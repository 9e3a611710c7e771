"""N-FGSM adversarial training (de Jorge et al., "Make some noise: reliable and efficient
single-step adversarial training", NeurIPS 2022): stronger noise and no clipping.

Per batch (the authors' ``train.py`` defaults ``--unif 2 --alpha 8 --clip -1`` at eps 8/255):
eta ~ U(-k eps, k eps) with k = 2 (``noise``), clamped so that x + eta stays in the input
box; delta = eta + alpha sign(grad_eta L(f(x + eta), y)) with alpha = eps (``step_size``),
clamped to the box and **not** projected back onto the eps-ball: the training perturbation
reaches up to (k + 1) eps = 3 eps in Linf. The paper shows that this avoids catastrophic
overfitting at single-step cost (two forward-backward passes a step) without GradAlign's
double backpropagation. ``clip`` (a multiple of eps) projects delta onto that ball as their
``--clip`` does; ``None`` is their default, no clipping.

Through the step's attack (``step.attack.scaled``): the noise, the step and the clip are
multiples of each example's own budget (``class_eps[y]`` from DAFA, FAIR-TAT or CFA). For
an L2 budget the same recipe holds in the L2 ball (noise uniform in the ball of radius
k eps, a normalised-gradient step of eps), which the paper does not study.

Deviation, on purpose: robx's attacks run the model in eval mode; the authors' code takes
the gradient in train mode (docs/fast.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, Step, check_ranges, hookimpl


class NFGSM(Plugin):
    """N-FGSM (de Jorge et al. 2022): noise of 2 eps, a step of eps, no clipping."""

    name = "nfgsm"

    @dataclass
    class Options:
        noise: float = 2.0  # k: eta ~ U(-k eps, k eps)
        step_size: float = 1.0  # alpha as a multiple of eps
        clip: float | None = None  # project delta onto the ball of clip x eps; None: no clipping (the paper)

        def __post_init__(self) -> None:
            check_ranges(self, positive=("noise", "step_size"))
            if self.clip is not None and not self.clip > 0:
                raise ValueError(f"clip must be > 0 (a multiple of eps) or None, got {self.clip}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        noise, step_size = self.options.noise, self.options.step_size
        # without clipping, a ball of radius noise + step_size contains every point one step
        # from the noise can reach, so its projection changes nothing
        radius = self.options.clip if self.options.clip is not None else noise + step_size
        attack = step.attack.scaled(steps=1, step_size=step_size, radius=radius)
        return attack(start="uniform", start_scale=noise / radius)
