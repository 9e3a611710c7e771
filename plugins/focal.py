"""Focal loss (Lin et al., ICCV 2017): FL = (1 - p_t)^gamma * CE.

With soft targets, p_t is the probability mass the model puts on the target
distribution, sum_c t_c p_c. gamma = 1 by default (SRAT-Focal, Wang's dissertation).
Use it with ``--loss focal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx import Plugin, Step, TrainState, check_ranges, hookimpl
from robx.plugins.common import soft_targets


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss for hard or soft targets."""
    target_probs = soft_targets(targets, logits.shape[1])
    log_probs = F.log_softmax(logits, dim=1)
    cross_entropy = -(target_probs * log_probs).sum(dim=1)
    p_target = (target_probs * log_probs.exp()).sum(dim=1)
    return (1.0 - p_target).clamp(min=0.0).pow(gamma) * cross_entropy


class Focal(Plugin):
    """Focal loss (1 - p_t)^gamma * CE (Lin et al. 2017)."""

    name = "focal"

    @dataclass
    class Options:
        gamma: float = 1.0

        def __post_init__(self) -> None:
            check_ranges(self, non_negative=("gamma",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.outputs is not None and step.targets is not None
        return focal_loss(step.outputs, step.targets, self.options.gamma)
