"""Top-k saliency victims (STPGD, Liu et al., NeurIPS 2022): perturb only the most salient units.

Instead of the whole input, the adversary may move only the K units with the largest
input-gradient saliency, K = ``fraction`` of the units (10 %, Liu et al. 2022):

    s_u = || ReLU(dL(f(x), y) / dx_u) ||_2,     victims = top-K_u s_u

The unit (``granularity``):

* ``unit``: the task's own victim unit (``Task.victim_unit``; crime: a graph node, whose
  history of every category moves together). The task turns the gradient into unit
  saliency: for nodes, as STPGD, from the batch-mean gradient, so one victim set serves the
  whole batch (nodes are shared by every sample);
* ``pixel``: an image pixel (its channels move together), per sample;
* ``element``: a single input coordinate, per sample;
* ``auto`` (default): ``unit`` when the task has one, else ``pixel`` for image batches,
  else ``element``.

``saliency_steps``: 1 ranks by the gradient at the clean input; STPGD's authors (Adv-ST,
``find_type='saliency'``) take it after 5 whole-input PGD iterations with U(-eps/10,
eps/10) noise added at each (``robx.core.attacks.saliency_gradient``). The mask comes from
the ``topk_victims`` kernel dispatch; every adversary (pgd, trades, mart, fairtat) honours
it. MinGRE ranks its reweighted node scores with the same op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, RobxError, Step, TrainState, hookimpl
from robx.kernels import topk_victims

GRANULARITIES = ("auto", "unit", "pixel", "element")


def unit_saliency(grad: torch.Tensor, granularity: str) -> torch.Tensor:
    """(batch, units) saliency ||ReLU(g_u)||_2 of pixels (over channels) or elements."""
    grad = grad.relu()
    if granularity == "pixel":
        return grad.norm(dim=1).flatten(1)  # (batch, H * W)
    return grad.reshape(grad.shape[0], -1)


class TopK(Plugin):
    """Top-k input-gradient saliency victims (Liu et al. 2022, STPGD)."""

    name = "topk"

    @dataclass
    class Options:
        fraction: float = 0.1
        granularity: str = "auto"
        saliency_steps: int = 1

        def __post_init__(self) -> None:
            if not 0.0 < self.fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
            if self.granularity not in GRANULARITIES:
                raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
            if self.saliency_steps < 1:
                raise ValueError(f"saliency_steps must be >= 1, got {self.saliency_steps}")

    def __init__(self, options: Options) -> None:
        self.options = options

    def granularity(self, x: torch.Tensor, state: TrainState) -> str:
        chosen = self.options.granularity
        if chosen == "pixel" and x.dim() != 4:
            raise RobxError(f"topk.granularity=pixel needs (batch, channels, H, W) inputs, got "
                            f"{x.dim()}-D; use --set topk.granularity=element")
        if chosen == "auto":
            return "unit" if state.task.victim_unit else "pixel" if x.dim() == 4 else "element"
        if chosen == "unit" and not state.task.victim_unit:
            raise RobxError(f"topk.granularity=unit: task '{state.task.name}' has no victim unit; use pixel or element")
        return chosen

    @hookimpl
    def select_victims(self, step: Step, state: TrainState) -> torch.Tensor:
        granularity, attack = self.granularity(step.x, state), step.attack
        assert attack is not None
        if granularity == "unit":
            return attack.salient_units(state.task, self.options.fraction, self.options.saliency_steps)
        grad = attack.saliency_gradient(self.options.saliency_steps)
        saliency = unit_saliency(grad, granularity)
        chosen = topk_victims(saliency, max(1, round(self.options.fraction * saliency.shape[1])))
        return chosen.view(step.x.shape[0], 1, *step.x.shape[2:]) if granularity == "pixel" else chosen.view(step.x.shape)
