"""Scalar regression judged per group of targets (zero vs non-zero by default).

The second built-in task, the shape of MinGRE's problem at toy scale: the engine trains,
attacks, checkpoints and evaluates it through the same loop as classification.

* Outputs: one value per example (``outputs[:, 0]``); targets are floats.
* Loss: squared error; the attacks ascend it.
* Score: absolute error (lower is better), so per-class scores are per-group MAE and the
  worst group is the one with the largest error.
* Labels are the groups the dataset assigns (for zero-inflated targets: zero / non-zero),
  which the per-class statistics, budgets and loss weights use.
"""

from __future__ import annotations

import torch

from robx import Metric, ModelInput, RegisterTask, Task, hookimpl


class Regression(Task):
    """Scalar regression: squared-error loss, absolute error per group of targets."""

    name = "regression"
    metric = Metric("absolute error", higher_is_better=False)

    def model_input(self) -> ModelInput:
        data = self.data
        return ModelInput(tuple(data.train.x.shape[1:]), 1, data.mean, data.std)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs[:, 0] - targets.to(outputs.dtype)) ** 2

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs[:, 0] - targets.to(outputs.dtype)).abs()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(Regression)
