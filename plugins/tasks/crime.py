"""Next-day crime counts on a grid graph (MinGRE's problem, arXiv 2504.00721).

* Examples: the T-day history of every node and category -> the next day's counts
  (``robx.plugins.datasets.crime``); every target is labelled zero (the majority group) or
  non-zero (the minority group), so the per-class machinery reports per-group numbers.
* Inputs: counts z-scored per category with the training days' statistics; attacks
  perturb this space (STPGD's eps 0.5 is in z units), so models get mean 0 / std 1.
* Outputs: the negative-binomial mean mu and dispersion alpha of every node and category,
  shape (batch, nodes, categories, 2); the prediction is mu.
* Loss: the NB negative log-likelihood of the counts, per target (below); the attacks
  ascend it.
* Attacks: ``stpgd`` (the default evaluation; STPGD, Liu et al. NeurIPS 2022, as their
  code Adv-ST runs it: the 10 % of nodes with the largest saliency ||ReLU(batch-mean
  dL/dX_node)||_2 after 5 whole-input iterations move, Linf, from U(-eps/10, eps/10); eps
  0.5 and step 0.1 in z units) and ``pgd`` (every node moves). The victim unit is the node:
  the ``topk`` plugin picks training victims the same way. Victims are chosen per
  evaluation batch (all test days in one batch of 256).
* Score: absolute error of mu per target (lower is better), so the per-group scores are the
  MAE on zero and on non-zero targets.
* Report details (beside the per-group table): MAE and RMSE overall / on zero / on
  non-zero targets and their disparity (non-zero minus zero), clean and attacked; the MAE on
  non-zero targets per category; event detection per day and category, Recall@K and MAP@K
  of the K cells with the largest predicted mean against the cells with events (K = 20).
  Beside the model, always the trivial predictors on the same days: all-zero (a low
  overall MAE on zero-inflated data, which is why the non-zero MAE is the honest number),
  the historical mean of each cell and category over the training days, and the last
  value (yesterday's count).

With r = alpha the NB "size" (Var = mu + mu^2 / alpha, the NB2 form),

    -log P(y | mu, alpha) = -[ lgamma(y + alpha) - lgamma(alpha) - lgamma(y + 1)
                               + alpha log(alpha / (alpha + mu)) + y log(mu / (alpha + mu)) ],

which is scipy's ``nbinom(n=alpha, p=alpha / (alpha + mu))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robx.core.attacks import pgd
from robx.core.data import Split
from robx.core.evaluate import AttackSettings
from robx.core.hookspecs import hookimpl
from robx.core.task import Metric, ModelInput, RegisterTask, Task

#: cells ranked per day and category for event detection
TOP_K = 20
#: STPGD (Adv-ST): whole-input PGD iterations before the node saliency is read, and the
#: random start's radius as a fraction of eps
SALIENCY_STEPS, START_SCALE = 5, 0.1


def nb_nll(mu: torch.Tensor, alpha: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise negative-binomial negative log-likelihood of counts ``y`` (module docstring)."""
    y = y.to(mu.dtype)
    log_total = torch.log(alpha + mu)
    return -(torch.lgamma(y + alpha) - torch.lgamma(alpha) - torch.lgamma(y + 1)
             + alpha * (torch.log(alpha) - log_total) + y * (torch.log(mu) - log_total))


def event_detection(predicted: torch.Tensor, counts: torch.Tensor, k: int) -> tuple[float, float]:
    """(Recall@K, MAP@K) over the (day, category) pairs with at least one event.

    ``predicted``, ``counts``: (days, nodes, categories). For each pair, the K nodes with the
    largest prediction are the detections and the nodes with a count > 0 the events:
    Recall@K = hits / events; AP@K = sum over ranks i <= K of precision@i at each hit,
    divided by min(K, events); MAP@K is its mean.
    """
    days, nodes, categories = counts.shape
    scores = predicted.permute(0, 2, 1).reshape(-1, nodes)
    events = counts.permute(0, 2, 1).reshape(-1, nodes) > 0
    k = min(k, nodes)
    hits = events.gather(1, scores.topk(k, dim=1).indices).double()  # relevance in rank order
    n_events = events.sum(dim=1)
    recall = hits.sum(dim=1) / n_events.clamp(min=1)
    precision = hits.cumsum(dim=1) / torch.arange(1, k + 1, dtype=torch.float64)
    average_precision = (precision * hits).sum(dim=1) / n_events.clamp(min=1, max=k)
    with_events = n_events > 0
    return recall[with_events].mean().item(), average_precision[with_events].mean().item()


def error_summary(predicted: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """MAE and RMSE overall, on zero and on non-zero targets, and their disparities."""
    error = (predicted - counts).double()
    zero = counts == 0
    summary = {}
    for name, values in (("mae", error.abs()), ("rmse", error.square())):
        parts = {"overall": values.mean(), "zero": values[zero].mean(), "non-zero": values[~zero].mean()}
        if name == "rmse":
            parts = {key: value.sqrt() for key, value in parts.items()}
        summary.update({f"{name} {key}": value.item() for key, value in parts.items()})
        summary[f"{name} disparity"] = summary[f"{name} non-zero"] - summary[f"{name} zero"]
    return summary


class Crime(Task):
    """Zero-inflated count forecasting on a graph: NB likelihood, MAE per zero / non-zero group."""

    name = "crime"
    metric = Metric("absolute error", higher_is_better=False)
    attacks = ("stpgd", "pgd")
    default_attack = "stpgd"
    # z-scores have no box (Adv-ST, STPGD's code, clamps to [0, 1] because it min-max scales its inputs)
    input_bounds = (-math.inf, math.inf)

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

    victim_unit = "node"

    def unit_saliency(self, grad: torch.Tensor) -> torch.Tensor:
        """STPGD's node saliency: ||ReLU(batch-mean dL/dX_node)||_2 over the node's history of
        every category (Adv-ST's ``batch_saliency_map``), shape (1, nodes)."""
        return grad.mean(dim=0).relu().square().sum(dim=(0, 2)).sqrt()[None]

    def unit_mask(self, chosen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return chosen.view(1, 1, -1, 1)  # (batch, time, nodes, categories): a node's whole history

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nb_nll(outputs[..., 0], outputs[..., 1], targets)

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs[..., 0] - targets.to(outputs.dtype)).abs()

    def adversarial_examples(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                             attack: AttackSettings) -> torch.Tensor:
        """``stpgd``: Liu et al.'s STPGD as their code runs it (Adv-ST): node saliency after 5
        whole-input iterations, the top ``attack.victims`` of the nodes of the batch move, from
        U(-eps/10, eps/10); ``pgd``: every node moves."""
        self.check_attack(attack.name)
        mask = None
        if attack.name == "stpgd":
            mask = self.victim_mask(model, x, y, eps=attack.eps, alpha=attack.alpha, fraction=attack.victims,
                                    saliency_steps=SALIENCY_STEPS)
        return pgd(model, x, y, eps=attack.eps, alpha=attack.alpha, steps=attack.steps, norm=attack.norm, mask=mask,
                   loss_fn=self.attack_loss, bounds=self.input_bounds,
                   start_scale=START_SCALE if attack.name == "stpgd" else 1.0)

    def trivial_predictions(self, split: Split) -> dict[str, torch.Tensor]:
        """The predictors every crime result is read against (module docstring)."""
        counts = split.y.float()
        return {"all-zero": torch.zeros_like(counts),
                "historical mean": self.data.train.y.float().mean(dim=0).expand_as(counts),
                "last value": split.x[:, -1].float()}

    def report_details(self, split: Split, clean_outputs: torch.Tensor, robust_outputs: torch.Tensor,
                       attack: AttackSettings) -> dict[str, Any]:
        counts = split.y.float()
        predictors = {"model, clean": clean_outputs[..., 0], f"model, {attack.name}": robust_outputs[..., 0],
                      **self.trivial_predictions(split)}
        rows: dict[str, dict[str, float | None]] = {}
        for name, predicted in predictors.items():
            recall, average_precision = event_detection(predicted, counts, TOP_K)
            if name == "all-zero":  # ranks nothing: its "detections" would be the first cells
                recall = average_precision = None  # type: ignore[assignment]
            rows[name] = {**error_summary(predicted, counts), f"recall@{TOP_K}": recall, f"map@{TOP_K}": average_precision}
        columns = ["mae zero", "mae non-zero", "mae disparity", "rmse zero", "rmse non-zero", "mae overall",
                   f"recall@{TOP_K}", f"map@{TOP_K}"]
        names = self.data.target_names or [str(c) for c in range(counts.shape[-1])]
        non_zero = counts > 0
        per_category = {
            name: [((predicted - counts).abs()[..., c][non_zero[..., c]]).mean().item() for c in range(len(names))]
            for name, predicted in predictors.items()}
        return {
            "predictors": rows,
            "non_zero_mae_per_category": {"categories": names, **per_category},
            "tables": [
                {"title": f"errors on zero and non-zero targets ({len(split)} days; trivial predictors beside the model)",
                 "columns": ["predictor", *columns], "rows": [[name, *(row[c] for c in columns)] for name, row in rows.items()]},
                {"title": "MAE on non-zero targets per category",
                 "columns": ["predictor", *names], "rows": [[name, *values] for name, values in per_category.items()]},
            ],
        }


@hookimpl
def register_tasks(register: RegisterTask) -> None:
    register(Crime)
