"""LDAM loss (Cao et al., NeurIPS 2019): label-distribution-aware margins.

L = CE(s * (z - m_y e_y), y) with m_c = C / n_c^(1/4), C chosen so that the largest
margin is ``max_margin`` (0.5) (METHODS.md section 1). The margin is subtracted from the
target logit only; with soft targets each class's logit loses its target share of the
margin. Use it with ``--loss ldam``; DRCB-LDAM is ``--loss ldam --plugins drw``.

The scale: LDAM's s = 30 multiplies *cosine* logits in [-1, 1] (its reference model
normalises features and weights). robx's heads are plain linear layers whose logits carry
their own scale, so the default here is s = 1. With s = 30 on plain logits, training
collapsed on cifar10-lt-cpu (loss rising from 17 to 101, chance-level accuracy:
benchmarks/results/superseded/cifar10-lt-cpu-v1-ldam-s30/); ``--set ldam.scale=30`` restores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState
from robx.plugins.common import soft_targets


def ldam_margins(class_counts: torch.Tensor, max_margin: float) -> torch.Tensor:
    """m_c proportional to n_c^(-1/4), the largest equal to ``max_margin``."""
    margins = class_counts.double().clamp(min=1).pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    target_probs = soft_targets(targets, logits.shape[1])
    adjusted = logits - target_probs * margins.to(logits)
    return -(target_probs * F.log_softmax(scale * adjusted, dim=1)).sum(dim=1)


class LDAM:
    """LDAM loss: class-dependent margins m_c ~ n_c^(-1/4) (Cao et al. 2019)."""

    name = "ldam"

    @dataclass
    class Options:
        max_margin: float = 0.5
        scale: float = 1.0

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.outputs is not None and step.targets is not None
        margins = ldam_margins(state.class_counts, self.options.max_margin)
        return ldam_loss(step.outputs, step.targets, margins, self.options.scale)
