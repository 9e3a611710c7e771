"""Remix (Chou et al., ECCV-W 2020): mixup whose label favours the minority class.

Inputs mix as in mixup with lam ~ Beta(1, 1). The label factor of the pair (i, j), with
n_i, n_j the training counts of their classes (METHODS.md section 1):
    lam_y = 0    if n_i / n_j >= kappa and lam < tau
    lam_y = 1    if n_i / n_j <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise
kappa = 3, tau = 0.5. Needs hard labels (class counts of both partners).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.errors import RobxError
from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState
from robx.plugins.mixup import draw_mix, mix_inputs, mix_targets


def remix_label_factor(
    count_i: torch.Tensor, count_j: torch.Tensor, lam: float, kappa: float, tau: float
) -> torch.Tensor:
    """The per-pair label factor lam_y of Remix (eq. in the docstring above)."""
    ratio = count_i.double() / count_j.double()
    factor = torch.full_like(ratio, lam)
    factor = torch.where((ratio >= kappa) & (lam < tau), torch.zeros_like(ratio), factor)
    factor = torch.where((ratio <= 1.0 / kappa) & (1.0 - lam < tau), torch.ones_like(ratio), factor)
    return factor.float()


class Remix:
    """Remix: mixup with minority-favouring labels (Chou et al. 2020)."""

    name = "remix"

    @dataclass
    class Options:
        kappa: float = 3.0
        tau: float = 0.5
        concentration: float = 1.0

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.inputs is not None and step.targets is not None
        if step.targets.is_floating_point():
            raise RobxError("remix needs hard labels; list it before other mixing plugins")
        lam, partner = draw_mix(len(step.inputs), self.options.concentration, step.inputs.device)
        counts = state.class_counts.to(step.targets.device)
        label_lam = remix_label_factor(counts[step.targets], counts[step.targets[partner]], lam,
                                       self.options.kappa, self.options.tau)
        step.inputs = mix_inputs(step.inputs, lam, partner)
        step.targets = mix_targets(step.targets, label_lam, partner, state.num_classes)
