"""Crowd-labelled classification (dissertation ch. 3): every training example carries the
labels of W crowd workers (an examples x workers matrix, -1 where a worker gave none)
instead of one class; the test split has true classes.

Through the engine (``robx train --dataset digits-crowd``) a run trains on the majority
vote of each row (ties to the lowest class), i.e. the MV+DNN baseline, adversarially if an
adversary is selected; every example's label for the per-class statistics is that vote
(the learner cannot know the truth; ``CrowdData.train_truth`` keeps it for diagnostics).
Learners that infer labels their own way (Dawid-Skene, ICED) are evaluated with
``robx crowd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robx import Metric, RegisterTask, Task, hookimpl

#: the plugin's name (its module's, "task", would not say which)
name = "crowd-task"


def row_majority_vote(crowd: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each row's most frequent given label (missing = -1 left out; ties to the lowest class)."""
    votes = torch.stack([(crowd == c).sum(dim=1) for c in range(num_classes)], dim=1)
    return votes.argmax(dim=1)  # argmax returns the first maximum


class CrowdClassification(Task):
    """Classification from crowd labels: cross-entropy on the majority vote, accuracy."""

    name = "crowd-classification"
    metric = Metric("accuracy", higher_is_better=True)

    def hard_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return row_majority_vote(targets, self.num_classes) if targets.dim() == 2 else targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, self.hard_targets(targets), reduction="none")

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(dim=1) == self.hard_targets(targets)).float()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(CrowdClassification)
