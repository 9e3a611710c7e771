"""Tasks: what the engine optimises and how predictions are scored.

The engine is task-agnostic; a task supplies the per-sample loss and the predictions.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Task(Protocol):
    num_classes: int

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor: ...


class ClassificationTask:
    """Multi-class classification: cross-entropy on hard or soft targets, argmax predictions."""

    def __init__(self, num_classes: int, class_names: list[str]) -> None:
        self.num_classes = num_classes
        self.class_names = class_names

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():  # soft labels of shape (rows, classes)
            return -(targets * F.log_softmax(outputs, dim=1)).sum(dim=1)
        return F.cross_entropy(outputs, targets, reduction="none")

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)
