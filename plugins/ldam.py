"""LDAM loss (Cao et al., NeurIPS 2019): label-distribution-aware margins.

L = CE(s * (z - m_y e_y), y) with m_c = C / n_c^(1/4), C chosen so that the largest
margin is ``max_margin`` (0.5) (Cao et al. 2019). The margin is subtracted from the
target logit only; with soft targets each class's logit loses its target share of the
margin. Use it with ``--loss ldam``; DRCB-LDAM is ``--loss ldam --plugins drw``.

The head and the scale: as in the authors' code, LDAM trains a cosine classifier
(``head = "cosine"``: the model's last layer is ``robx.core.models.NormedLinear``,
normalised features times normalised class weights, no bias), whose outputs lie in
[-1, 1], and multiplies them by s = 30 inside the loss. Evaluation and attacks see the
cosine outputs, as the authors' model returns them. (The first robx LDAM used s = 1 on a
plain linear head, where the 0.5 margin vanishes as the logits grow, so DRCB-LDAM equalled
PGD-AT; s = 30 on plain logits collapsed training:
benchmarks/results/superseded/cifar10-lt-cpu-v1-ldam-s30/.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx import Plugin, Step, TrainState, check_ranges, hookimpl
from robx.plugins.common import soft_targets


def ldam_margins(class_counts: torch.Tensor, max_margin: float) -> torch.Tensor:
    """m_c proportional to n_c^(-1/4), the largest equal to ``max_margin``."""
    margins = class_counts.double().clamp(min=1).pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


def ldam_loss(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    target_probs = soft_targets(targets, logits.shape[1])
    adjusted = logits - target_probs * margins.to(logits)
    return -(target_probs * F.log_softmax(scale * adjusted, dim=1)).sum(dim=1)


class LDAM(Plugin):
    """LDAM loss: class-dependent margins m_c ~ n_c^(-1/4) (Cao et al. 2019)."""

    name = "ldam"
    head = "cosine"

    @dataclass
    class Options:
        max_margin: float = 0.5
        scale: float = 30.0

        def __post_init__(self) -> None:
            check_ranges(self, positive=("max_margin", "scale"))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def training_loss(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.outputs is not None and step.targets is not None
        margins = ldam_margins(state.class_counts, self.options.max_margin)
        return ldam_loss(step.outputs, step.targets, margins, self.options.scale)
