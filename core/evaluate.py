"""Per-class clean and robust accuracy of a model on a labelled set (PROTOCOLS.md).

Attacks: ``pgd`` (PGD with random start on cross-entropy, final iterate; PGD-20 by
default), ``cw`` (the same PGD on the Carlini-Wagner margin loss, "CW-Linf"), and
``autoattack`` (the standard version of Croce & Hein's reference implementation,
package ``pyautoattack``, optional extra ``robx[autoattack]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from robx.core.attacks import Norm, cross_entropy, eval_mode, logits_of, margin_loss, pgd
from robx.core.data import to_unit_float
from robx.core.errors import OptionError, RobxError

ATTACKS = ("pgd", "cw", "autoattack")


@dataclass
class AttackSettings:
    """Evaluation attack; ``steps``/``alpha`` do not apply to AutoAttack."""

    eps: float
    alpha: float
    steps: int = 20
    norm: Norm = "linf"
    name: str = "pgd"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise OptionError(f"unknown attack '{self.name}'; available: pgd20, {', '.join(ATTACKS)}")

    def describe(self) -> str:
        if self.name == "autoattack":
            return f"AutoAttack (standard) {self.norm} eps={self.eps:.4g}"
        return f"{self.name.upper()}-{self.steps} {self.norm} eps={self.eps:.4g} alpha={self.alpha:.4g}"

    @property
    def tag(self) -> str:
        steps = "" if self.name == "autoattack" else str(self.steps)
        return f"{self.name}{steps}-{self.norm}-eps{self.eps:.4g}"


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


class LogitsOnly(nn.Module):
    """Adapter for attack libraries that expect ``model(x) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, x)


def autoattack_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings,
                        device: torch.device) -> torch.Tensor:
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:
        raise RobxError("--attack autoattack needs the reference AutoAttack: pip install 'robx[autoattack]'") from error
    adversary = AutoAttack(LogitsOnly(model).eval(), norm="Linf" if attack.norm == "linf" else "L2",
                           eps=attack.eps, version="standard", seed=attack.seed, device=device)
    adversary.verbose = False
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))  # (examples, their predictions)
    return x_adv


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
    loss_fn = margin_loss if attack.name == "cw" else cross_entropy
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            xb = to_unit_float(x[start : start + batch_size]).to(device)
            yb = y[start : start + batch_size].to(device)
            with torch.no_grad():
                clean.append((logits_of(model, xb).argmax(1) == yb).cpu())
            if attack.name == "autoattack":
                x_adv = autoattack_examples(model, xb, yb, attack, device)
            else:
                x_adv = pgd(model, xb, yb, eps=attack.eps, alpha=attack.alpha, steps=attack.steps,
                            norm=attack.norm, loss_fn=loss_fn)
            with torch.no_grad():
                robust.append((logits_of(model, x_adv).argmax(1) == yb).cpu())
            if on_batch is not None:
                on_batch(len(yb))
    return EvalResult(y.cpu(), torch.cat(clean), torch.cat(robust))
