"""Attacks on any model, used the way torchattacks' are::

    x_adv = robx.attacks.PGD(model, eps=8/255, alpha=2/255, steps=10)(x, y)

``model(x)`` returns logits (or robx's ``(features, logits)``). ``eps`` and ``alpha`` are a
number, one value per example (a tensor of the batch's length), or, with ``per_class=True``,
one value per class (a tensor indexed by ``y``): the per-class budgets DAFA, CFA and FAIR-TAT
train with. The model runs in eval mode during the attack and gets its mode back; parameter
gradients are never touched. The step is the one training's adversaries and ``robx eval``
run (:class:`robx.Attack`), not a copy.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from robx.core.attacks import Attack, AttackLoss, cross_entropy, margin_loss
from robx.core.errors import OptionError

__all__ = ["PGD", "CW"]


class PGD:
    """Projected gradient descent (Madry et al., ICLR 2018): ``steps`` signed-gradient (linf)
    or normalised-gradient (l2) steps of size ``alpha`` ascending the cross-entropy, each
    projected onto the eps-ball around x and the input box ``bounds``, from a uniform random
    point of the ball (``random_start``) or from x."""

    def __init__(self, model: nn.Module, eps: float | torch.Tensor = 8 / 255, alpha: float | torch.Tensor = 2 / 255,
                 steps: int = 10, *, norm: str = "linf", random_start: bool = True,
                 bounds: tuple[float, float] = (0.0, 1.0), per_class: bool = False) -> None:
        if norm not in ("linf", "l2"):
            raise OptionError(f"norm must be linf or l2, got {norm!r}")
        if not (isinstance(steps, int) and steps >= 1):
            raise OptionError(f"steps must be an int >= 1, got {steps!r}")
        for name, value in (("eps", eps), ("alpha", alpha)):
            values = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
                raise OptionError(f"{name} must be finite and >= 0, got {value!r}")
        if per_class and not (isinstance(eps, torch.Tensor) and isinstance(alpha, torch.Tensor)):
            raise OptionError("per_class=True takes eps and alpha as tensors with one value per class")
        if not bounds[0] < bounds[1]:
            raise OptionError(f"bounds must be (low, high) with low < high, got {bounds!r}")
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps
        self.norm, self.random_start, self.bounds, self.per_class = norm, random_start, bounds, per_class

    loss: AttackLoss = staticmethod(cross_entropy)  # type: ignore[assignment]

    def _budget(self, value: float | torch.Tensor, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
        rows = x.shape[0]
        if not isinstance(value, torch.Tensor):
            return torch.full((rows,), float(value), dtype=x.dtype, device=x.device)
        value = value.to(device=x.device, dtype=x.dtype)
        if self.per_class:
            if value.dim() != 1 or int(y.max()) >= len(value):
                raise OptionError(f"per-class {name} has {value.numel()} values; the labels go up to {int(y.max())}")
            return value[y]
        if value.dim() == 0:
            return value.expand(rows)
        if value.shape != (rows,):
            raise OptionError(f"{name} must be a number or one value per example ({rows}), got shape "
                              f"{tuple(value.shape)}; per_class=True indexes it by the labels")
        return value

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x' for the batch (detached, the dtype and device of x)."""
        if x.shape[0] != y.shape[0]:
            raise OptionError(f"x has {x.shape[0]} examples and y {y.shape[0]}")
        bound = Attack(model=self.model, x=x, y=y, eps=self._budget(self.eps, x, y, "eps"),
                       alpha=self._budget(self.alpha, x, y, "alpha"), steps=self.steps, norm=self.norm,  # type: ignore[arg-type]
                       bounds=self.bounds, task_loss=type(self).loss)
        return bound(start="uniform" if self.random_start else "none")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, norm={self.norm!r}, "
                f"random_start={self.random_start}, per_class={self.per_class})")


class CW(PGD):
    """CW-linf (Carlini & Wagner's margin loss, max_{k != y} z_k - z_y, under PGD), as
    ``robx eval --attack cw`` runs it."""

    loss: AttackLoss = staticmethod(margin_loss)  # type: ignore[assignment]
