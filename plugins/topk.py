"""Top-k saliency victims (STPGD, Liu et al., NeurIPS 2022): perturb only the most salient units.

Instead of the whole input, the adversary may move only the K units of each sample with the
largest input-gradient saliency, K = ``fraction`` of the units (10 %, METHODS.md section 7):

    s_u = || ReLU(dL(f(x), y) / dx_u) ||_2,     victims = top-K_u s_u      (per sample)

A unit is a pixel (its channels move together) for image batches (``granularity = "pixel"``)
or a single input coordinate (``"element"``). STPGD averages the gradient over the batch
because graph nodes are shared across samples; image pixels are not, so the saliency here is
per sample. The mask comes from the ``topk_victims`` kernel dispatch; every adversary
(pgd, trades, fairtat) honours it. Reweighted selections (MinGRE) pass their weights to the
same op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.attacks import AttackLoss, cross_entropy, eval_mode, logits_of
from robx.core.errors import RobxError
from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState
from robx.kernels import topk_victims


def input_saliency(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, granularity: str,
                   loss_fn: AttackLoss = cross_entropy) -> torch.Tensor:
    """(batch, units) saliency ||ReLU(dL/dx_u)||_2; BatchNorm in eval mode, no parameter grads."""
    x = x.detach().requires_grad_(True)
    with eval_mode(model):
        loss = loss_fn(logits_of(model, x), y).sum()
        (grad,) = torch.autograd.grad(loss, x)
    grad = grad.relu()
    if granularity == "pixel":
        return grad.norm(dim=1)  # (batch, H, W)
    return grad.abs().reshape(x.shape[0], -1)


class TopK:
    """Top-k input-gradient saliency victims (Liu et al. 2022, STPGD)."""

    name = "topk"

    @dataclass
    class Options:
        fraction: float = 0.1
        granularity: str = "pixel"

        def __post_init__(self) -> None:
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
            if self.granularity not in ("pixel", "element"):
                raise ValueError(f"granularity must be 'pixel' or 'element', got {self.granularity!r}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def select_victims(self, step: Step, state: TrainState) -> torch.Tensor:
        granularity = self.options.granularity
        if granularity == "pixel" and step.x.dim() != 4:
            raise RobxError(f"topk.granularity=pixel needs (batch, channels, H, W) inputs, got "
                            f"{step.x.dim()}-D; use --set topk.granularity=element")
        saliency = input_saliency(state.model, step.x, step.y, granularity, state.task.attack_loss)
        units = saliency[0].numel()
        k = max(1, round(self.options.fraction * units))
        mask = topk_victims(saliency, k)
        return mask.unsqueeze(1) if granularity == "pixel" else mask.reshape(step.x.shape)
