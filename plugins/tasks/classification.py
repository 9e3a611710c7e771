"""Image (or any) classification: the task of the dissertation's and the fairness papers' protocols.

* Inputs: stored uint8 images become floats in [0, 1]; float inputs pass through. Training
  batches of images are randomly cropped (zero padding 4) and flipped per sample when the
  config augments.
* Loss: cross-entropy on hard labels, or on soft (mixed) targets of shape (rows, classes);
  the default attacks ascend cross-entropy.
* Score: 1 for a correct prediction (argmax), so per-class scores are per-class accuracy.
* Statistics add the confusion matrices of clean and adversarial predictions and the mean
  adversarial class probabilities (DAFA's p_i(j), FAIR-TAT's CFPS).
* Evaluation attacks (registered in ``robx.plugins.attacks``): ``pgd`` (cross-entropy PGD,
  random start, final iterate), ``cw`` (the same PGD on the Carlini-Wagner margin) and
  ``autoattack`` (the standard version of Croce & Hein's reference implementation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robx import Metric, RegisterTask, ScoreAccumulator, Split, SplitStats, Task, hookimpl



def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float inputs pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def crop_flip(x: torch.Tensor, padding: int = 4, mode: str = "zeros") -> torch.Tensor:
    """Per-sample random crop after padding, and random horizontal flip. ``mode``: pad with
    zeros (torchvision's ``RandomCrop(32, padding=4)``) or by reflection
    (``padding_mode="reflect"``, the edge pixel not repeated).

    Done on the batch tensor because torchvision's tensor transforms draw one set of
    parameters per call, i.e. one crop for the whole batch.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect") if mode == "reflect" else F.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class ClassStatsAccumulator(ScoreAccumulator):
    """Per-class accuracy plus confusion matrices and mean adversarial class probabilities."""

    def __init__(self, task: Task, device: torch.device) -> None:
        super().__init__(task, device)
        c = self.num_classes
        self.clean_confusion = torch.zeros(c, c, dtype=torch.long, device=device)
        self.robust_confusion = torch.zeros(c, c, dtype=torch.long, device=device)
        self.robust_prob_sum = torch.zeros(c, c, dtype=torch.float64, device=device)

    def _confusion(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return torch.bincount(labels * c + logits.argmax(dim=1), minlength=c * c).view(c, c)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, targets: torch.Tensor, clean_outputs: torch.Tensor | None = None,
               robust_outputs: torch.Tensor | None = None) -> None:
        super().update(labels, targets, clean_outputs, robust_outputs)
        if clean_outputs is not None:
            self.clean_confusion += self._confusion(labels, clean_outputs)
        if robust_outputs is not None:
            self.robust_confusion += self._confusion(labels, robust_outputs)
            self.robust_prob_sum.index_add_(0, labels, robust_outputs.float().softmax(dim=1).double())

    def summed_tensors(self) -> list[torch.Tensor]:
        return [*super().summed_tensors(), self.clean_confusion, self.robust_confusion, self.robust_prob_sum]

    def result(self) -> SplitStats:
        stats = super().result()
        rows = stats.counts.clamp(min=1).double()[:, None]
        if self.has_clean:
            stats.tables["clean_confusion"] = self.clean_confusion.cpu().double() / rows
        if self.has_robust:
            stats.tables["robust_confusion"] = self.robust_confusion.cpu().double() / rows
            stats.tables["robust_mean_prob"] = self.robust_prob_sum.cpu() / rows
        return stats


class Classification(Task):
    """Multi-class classification: cross-entropy, accuracy, per-class confusion."""

    name = "classification"
    metric = Metric("accuracy", higher_is_better=True)
    attacks = ("cw", "autoattack")
    #: a dataset's own class counts, and Madry et al.'s PGD-AT recipe (eps 8/255, step 2/255,
    #: 10 steps; PGD-20 evaluation) with SGD at lr 0.1, step decay, batch 128, no augmentation
    defaults = {"imbalance": "original", "ratio": 1.0, "epochs": 10, "batch_size": 128, "lr": 0.1,
                "schedule": "step", "eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "eval_steps": 20,
                "augment": False}

    def inputs(self, stored: torch.Tensor) -> torch.Tensor:
        return to_unit_float(stored)

    def augment_batch(self, x: torch.Tensor, crop_padding: str = "zeros") -> torch.Tensor:
        return crop_flip(x, mode=crop_padding) if x.dim() == 4 else x  # images only

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():  # soft labels of shape (rows, classes)
            return -(targets * F.log_softmax(outputs, dim=1)).sum(dim=1)
        return F.cross_entropy(outputs, targets, reduction="none")

    def report_details(self, split: Split, clean_outputs: torch.Tensor, robust_outputs: torch.Tensor,
                       attack_name: str) -> dict[str, Any]:
        """Where the attack pushes each class: ``attacked_confusion[i][j]``, the share of class
        i's attacked test examples predicted as class j (the diagonal is robust accuracy)."""
        c = self.num_classes
        pairs = torch.bincount(split.labels * c + robust_outputs.argmax(dim=1).cpu(), minlength=c * c)
        rows = pairs.view(c, c).double()
        shares = rows / rows.sum(dim=1, keepdim=True).clamp(min=1)
        return {"attacked_confusion": [[round(v, 4) for v in row] for row in shares.tolist()]}

    def row_weights(self, class_weights: torch.Tensor, targets: torch.Tensor,
                    row_labels: torch.Tensor) -> torch.Tensor:
        """w of the row's class; for soft targets the target-weighted mean sum_c t_c w_c."""
        if targets.is_floating_point():
            return targets @ class_weights.to(targets)
        return class_weights[row_labels]

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(dim=1) == targets).float()

    def statistics(self, device: torch.device) -> ClassStatsAccumulator:
        return ClassStatsAccumulator(self, device)


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(Classification)
