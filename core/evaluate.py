"""Per-class clean and robust accuracy of a model on a labelled set (PROTOCOLS.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from robx.core.attacks import Norm, eval_mode, logits_of, pgd
from robx.core.data import to_unit_float


@dataclass
class AttackSettings:
    """Evaluation attack: PGD with random start, final iterate (PGD-20 by default)."""

    eps: float
    alpha: float
    steps: int = 20
    norm: Norm = "linf"
    name: str = "pgd"

    def describe(self) -> str:
        return f"{self.name.upper()}-{self.steps} {self.norm} eps={self.eps:.4g} alpha={self.alpha:.4g}"


@dataclass
class EvalResult:
    """Per-sample correctness flags (CPU bool tensors) and the labels they belong to."""

    labels: torch.Tensor
    clean_correct: torch.Tensor
    robust_correct: torch.Tensor

    def per_class(self, num_classes: int) -> tuple[list[float], list[float], list[int]]:
        counts = torch.bincount(self.labels, minlength=num_classes)
        denominator = counts.clamp(min=1).double()

        def rate(flags: torch.Tensor) -> list[float]:
            hits = torch.bincount(self.labels, weights=flags.double(), minlength=num_classes)
            return (hits / denominator).tolist()

        return rate(self.clean_correct), rate(self.robust_correct), counts.tolist()


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackSettings,
    *,
    device: torch.device,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Clean and attacked predictions of every example, in eval mode."""
    clean, robust = [], []
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            xb = to_unit_float(x[start : start + batch_size]).to(device)
            yb = y[start : start + batch_size].to(device)
            with torch.no_grad():
                clean.append((logits_of(model, xb).argmax(1) == yb).cpu())
            x_adv = pgd(model, xb, yb, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, norm=attack.norm)
            with torch.no_grad():
                robust.append((logits_of(model, x_adv).argmax(1) == yb).cpu())
            if on_batch is not None:
                on_batch(len(yb))
    return EvalResult(y.cpu(), torch.cat(clean), torch.cat(robust))
