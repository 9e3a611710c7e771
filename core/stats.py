"""Class statistics: one tracker shared by every fairness and imbalance method.

Counts accumulate on the training device during the epoch (no host sync in the step
loop) and are read once at epoch end into an :class:`SplitStats`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SplitStats:
    """Per-class statistics of one split over one epoch (CPU tensors).

    ``*_confusion[i, j]`` = P(prediction j | true class i); ``robust_mean_prob[i, j]`` =
    mean softmax probability of class j over the adversarial examples of class i.
    Robust fields are ``None`` when no adversarial predictions were recorded.
    """

    counts: torch.Tensor
    clean_acc: torch.Tensor | None
    robust_acc: torch.Tensor | None
    clean_confusion: torch.Tensor | None
    robust_confusion: torch.Tensor | None
    robust_mean_prob: torch.Tensor | None

    def to_json(self) -> dict[str, Any]:
        def listify(t: torch.Tensor | None) -> Any:
            return None if t is None else [round(v, 6) for v in t.tolist()] if t.dim() == 1 else [
                [round(v, 6) for v in row] for row in t.tolist()
            ]

        return {
            "counts": self.counts.tolist(),
            "clean_acc": listify(self.clean_acc),
            "robust_acc": listify(self.robust_acc),
        }


@dataclass
class EpochStats:
    epoch: int
    train: SplitStats
    val: SplitStats | None = None
    loss: float = float("nan")
    loss_terms: dict[str, float] = field(default_factory=dict)
    lr: float = float("nan")
    seconds: float = float("nan")

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain values only, for checkpoints that load with ``weights_only=True``."""
        return {**dataclasses.asdict(self), "train": dataclasses.asdict(self.train),
                "val": None if self.val is None else dataclasses.asdict(self.val)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochStats:
        values = dict(state)
        values["train"] = SplitStats(**values["train"])
        values["val"] = None if values["val"] is None else SplitStats(**values["val"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "loss_terms": self.loss_terms,
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
            "train": self.train.to_json(),
            "val": None if self.val is None else self.val.to_json(),
        }


class ClassStatsAccumulator:
    """Accumulates per-class hits and confusion on the device of the predictions."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        c = num_classes
        self.counts = torch.zeros(c, dtype=torch.long, device=device)
        self.clean_confusion = torch.zeros(c, c, dtype=torch.long, device=device)
        self.robust_confusion = torch.zeros(c, c, dtype=torch.long, device=device)
        self.robust_prob_sum = torch.zeros(c, c, dtype=torch.float64, device=device)
        self.has_clean = False
        self.has_robust = False

    def _confusion(self, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        flat = y * c + logits.argmax(dim=1)
        return torch.bincount(flat, minlength=c * c).view(c, c)

    @torch.no_grad()
    def update(
        self,
        y: torch.Tensor,
        clean_logits: torch.Tensor | None = None,
        robust_logits: torch.Tensor | None = None,
    ) -> None:
        self.counts += torch.bincount(y, minlength=self.num_classes)
        if clean_logits is not None:
            self.has_clean = True
            self.clean_confusion += self._confusion(y, clean_logits)
        if robust_logits is not None:
            self.has_robust = True
            self.robust_confusion += self._confusion(y, robust_logits)
            probs = robust_logits.float().softmax(dim=1).double()
            self.robust_prob_sum.index_add_(0, y, probs)

    def result(self) -> SplitStats:
        counts = self.counts.cpu()
        denominator = counts.clamp(min=1).double()

        def rates(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            confusion = confusion.cpu().double()
            return confusion.diagonal() / denominator, confusion / denominator[:, None]

        clean_acc = clean_conf = robust_acc = robust_conf = mean_prob = None
        if self.has_clean:
            clean_acc, clean_conf = rates(self.clean_confusion)
        if self.has_robust:
            robust_acc, robust_conf = rates(self.robust_confusion)
            mean_prob = self.robust_prob_sum.cpu() / denominator[:, None]
        return SplitStats(counts, clean_acc, robust_acc, clean_conf, robust_conf, mean_prob)
