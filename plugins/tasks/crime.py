"""Next-day crime counts on a grid graph (MinGRE's problem, arXiv 2504.00721; METHODS.md section 7).

* Examples: the T-day history of every node and category -> the next day's counts
  (``robx.plugins.datasets.crime``); every target is labelled zero (the majority group) or
  non-zero (the minority group), so the per-class machinery reports per-group numbers.
* Inputs: counts z-scored per category with the training days' statistics; attacks
  perturb this space (STPGD's eps 0.5 is in z units), so models get mean 0 / std 1.
* Outputs: the negative-binomial mean mu and dispersion alpha of every node and category,
  shape (batch, nodes, categories, 2); the prediction is mu.
* Loss: the NB negative log-likelihood of the counts, per target (below); the attacks
  ascend it.
* Score: absolute error of mu per target (lower is better), so the per-group scores are the
  MAE on zero and on non-zero targets.

With r = alpha the NB "size" (Var = mu + mu^2 / alpha, as METHODS.md writes it),

    -log P(y | mu, alpha) = -[ lgamma(y + alpha) - lgamma(alpha) - lgamma(y + 1)
                               + alpha log(alpha / (alpha + mu)) + y log(mu / (alpha + mu)) ],

which is scipy's ``nbinom(n=alpha, p=alpha / (alpha + mu))``.
"""

from __future__ import annotations

import math

import torch

from robx.core.hookspecs import hookimpl
from robx.core.task import Metric, ModelInput, RegisterTask, Task


def nb_nll(mu: torch.Tensor, alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise negative-binomial negative log-likelihood of counts ``y`` (module docstring)."""
    y = y.to(mu.dtype)
    log_total = torch.log(alpha + mu)
    return -(torch.lgamma(y + alpha) - torch.lgamma(alpha) - torch.lgamma(y + 1)
             + alpha * (torch.log(alpha) - log_total) + y * (torch.log(mu) - log_total))


def nb_variance(mu: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Var = mu + mu^2 / alpha."""
    return mu + mu * mu / alpha


class Crime(Task):
    """Zero-inflated count forecasting on a graph: NB likelihood, MAE per zero / non-zero group."""

    name = "crime"
    metric = Metric("absolute error", higher_is_better=False)
    input_bounds = (-math.inf, math.inf)  # z-scores: STPGD's description clips to no box

    def __init__(self, data) -> None:  # type: ignore[no-untyped-def]
        super().__init__(data)
        self.mean = torch.tensor(data.mean, dtype=torch.float32)
        self.std = torch.tensor(data.std, dtype=torch.float32)

    def inputs(self, stored: torch.Tensor) -> torch.Tensor:
        return (stored.float() - self.mean) / self.std

    def model_input(self) -> ModelInput:
        data = self.data
        categories = data.train.y.shape[-1]
        return ModelInput(tuple(data.train.x.shape[1:]), categories, (0.0,) * categories, (1.0,) * categories,
                          graph=data.graph)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nb_nll(outputs[..., 0], outputs[..., 1], targets)

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs[..., 0] - targets.to(outputs.dtype)).abs()


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(Crime)
