"""Balanced softmax (Ren et al., NeurIPS 2020): CE on z + log n_c during training.

Adding the log prior at training time only makes the plain logits an estimate of the
balanced posterior at test time. Use it with ``--loss balanced_softmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robx import Plugin, Step, TrainState, hookimpl
from robx.plugins.common import soft_targets


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    shifted = logits + class_counts.to(logits).clamp(min=1).log()
    return -(soft_targets(targets, logits.shape[1]) * F.log_softmax(shifted, dim=1)).sum(dim=1)


class BalancedSoftmax(Plugin):
    """Balanced softmax: cross-entropy on logits + log n_c (Ren et al. 2020)."""

    name = "balanced_softmax"

    @hookimpl
    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.outputs is not None and step.targets is not None
        return balanced_softmax_loss(step.outputs, step.targets, state.class_counts)
