"""Mixup (Zhang et al., ICLR 2018) of the adversarial batch.

x~ = lam x_i + (1 - lam) x_j, t~ = lam e_{y_i} + (1 - lam) e_{y_j}, lam ~ Beta(a, a)
(a = 1), j a random permutation of the batch (METHODS.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState


def draw_mix(batch: int, concentration: float, device: torch.device) -> tuple[float, torch.Tensor]:
    """lam ~ Beta(a, a) and a partner permutation, from torch's seeded generator."""
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    return lam, torch.randperm(batch, device=device)


def mix_inputs(inputs: torch.Tensor, lam: float, partner: torch.Tensor) -> torch.Tensor:
    return lam * inputs + (1.0 - lam) * inputs[partner]


def mix_targets(targets: torch.Tensor, label_lam: torch.Tensor | float, partner: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """label_lam (scalar or per row) * t_i + (1 - label_lam) * t_j, for hard or soft t."""
    soft = targets if targets.is_floating_point() else F.one_hot(targets, num_classes).float()
    lam = torch.as_tensor(label_lam, dtype=soft.dtype, device=soft.device)
    lam = lam[:, None] if lam.dim() == 1 else lam
    return lam * soft + (1.0 - lam) * soft[partner]


class Mixup:
    """Mixup of adversarial examples and their labels (Zhang et al. 2018)."""

    name = "mixup"

    @dataclass
    class Options:
        concentration: float = 1.0

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.inputs is not None and step.targets is not None
        lam, partner = draw_mix(len(step.inputs), self.options.concentration, step.inputs.device)
        step.inputs = mix_inputs(step.inputs, lam, partner)
        step.targets = mix_targets(step.targets, lam, partner, state.num_classes)
