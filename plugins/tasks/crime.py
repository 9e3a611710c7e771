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
  of the K cells with the largest predicted mean against the cells with events (K = 20),
  and their disparity between event and non-event regions (Rec-D, MAP-D: Recall@K and
  MAP@K counting only the events in the (cell, category) pairs with an event on at least
  half of the training days, minus the same counting only the events elsewhere, where zero
  is the usual outcome; the ranking is always over every cell); the mean NB negative
  log-likelihood overall and on non-zero targets.
  Beside the model, always the trivial predictors on the same days: all-zero (a low
  overall MAE on zero-inflated data, which is why the non-zero MAE is the honest number),
  the historical mean of each cell and category over the training days, the mean of the 90
  days before the target day, the mean of the same weekday in the 4 weeks before it, and
  the last value (yesterday's count). Their NLL is an NB with the predictor as the mean
  and each cell's and category's dispersion fitted to the training days by moments
  (alpha = m^2 / (v - m), 1e3, near-Poisson, where v <= m); means are floored at 1e-6 as
  the model's are (all-zero has no NLL).

With r = alpha the NB "size" (Var = mu + mu^2 / alpha, the NB2 form),

    -log P(y | mu, alpha) = -[ lgamma(y + alpha) - lgamma(alpha) - lgamma(y + 1)
                               + alpha log(alpha / (alpha + mu)) + y log(mu / (alpha + mu)) ],

which is scipy's ``nbinom(n=alpha, p=alpha / (alpha + mu))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robx import Metric, ModelInput, RegisterTask, Split, Task, hookimpl
from robx.plugins.common import GraphData


#: cells ranked per day and category for event detection
TOP_K = 20
#: a (cell, category) pair is an event region when it had an event on at least this share of the training days
EVENT_REGION_RATE = 0.5
#: the long-window and weekly trivial predictors: days averaged, weeks of the same weekday
LONG_WINDOW_DAYS, SAME_WEEKDAY_WEEKS = 90, 4


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


def moment_dispersion(counts: torch.Tensor) -> torch.Tensor:
    """Per-position NB dispersion of (days, ...) counts by moments: alpha = m^2 / (v - m)
    where the variance v exceeds the mean m, else 1e3 (near-Poisson); clamped to [1e-2, 1e3]."""
    counts = counts.double()
    mean, variance = counts.mean(dim=0), counts.var(dim=0)
    excess = variance - mean
    alpha = torch.where(excess > 1e-9, mean.square() / excess.clamp(min=1e-9), torch.full_like(mean, 1e3))
    return alpha.clamp(1e-2, 1e3).float()


def region_disparity(predicted: torch.Tensor, counts: torch.Tensor, event_regions: torch.Tensor,
                     k: int) -> tuple[float, float]:
    """(Rec-D, MAP-D): Recall@K and MAP@K counting only the events in ``event_regions``
    ((nodes, categories) bool), minus the same counting only the events elsewhere."""
    inside = event_detection(predicted, counts * event_regions, k)
    outside = event_detection(predicted, counts * ~event_regions, k)
    return inside[0] - outside[0], inside[1] - outside[1]


class Crime(Task):
    """Zero-inflated count forecasting on a graph: NB likelihood, MAE per zero / non-zero group."""

    name = "crime"
    metric = Metric("absolute error", higher_is_better=False)
    attacks = ("stpgd",)
    default_attack = "stpgd"
    # z-scores have no box (Adv-ST, STPGD's code, clamps to [0, 1] because it min-max scales its inputs)
    input_bounds = (-math.inf, math.inf)

    def __init__(self, data) -> None:  # type: ignore[no-untyped-def]
        super().__init__(data)
        self.mean = torch.tensor(data.mean, dtype=torch.float32)
        self.std = torch.tensor(data.std, dtype=torch.float32)
        training = data.train.y.float()
        self.event_regions = (training > 0).float().mean(dim=0) >= EVENT_REGION_RATE
        self.dispersion = moment_dispersion(training)
        self.days = self.day_series(data)

    @staticmethod
    def day_series(data) -> torch.Tensor | None:  # type: ignore[no-untyped-def]
        """Every day's counts in order, (days, nodes, categories), when the splits are the
        loader's consecutive days (training history, then the targets of train, val, test);
        None otherwise."""
        parts = [data.train.x[0], data.train.y] + ([data.val.y] if data.val is not None else []) + [data.test.y]
        days = torch.cat([part.float() for part in parts])
        history = data.train.x.shape[1]
        last = len(days) - 1
        if not torch.equal(data.test.x[-1].float(), days[last - history:last]):
            return None
        return days

    def first_target_day(self, split: Split) -> int | None:
        """The day index of ``split``'s first target in :attr:`days`, found by its history."""
        if self.days is None:
            return None
        history = split.x.shape[1]
        first = split.x[0].float()
        for day in range(history, len(self.days) - len(split) + 1):
            if torch.equal(self.days[day - history:day], first) and torch.equal(self.days[day], split.y[0].float()):
                return day
        return None

    def inputs(self, stored: torch.Tensor) -> torch.Tensor:
        return (stored.float() - self.mean) / self.std

    def model_input(self) -> ModelInput:
        data = self.data
        categories = data.train.y.shape[-1]
        return ModelInput(tuple(data.train.x.shape[1:]), categories, (0.0,) * categories, (1.0,) * categories,
                          graph=data.graph if isinstance(data, GraphData) else None, target_mean=data.train.y.float().mean(dim=0))

    victim_unit = "node"
    labels_per_target = True

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

    def trivial_predictions(self, split: Split) -> dict[str, torch.Tensor]:
        """The predictors every crime result is read against (module docstring); the
        long-window and weekday ones where the split's days are known."""
        counts = split.y.float()
        predictors = {"all-zero": torch.zeros_like(counts),
                      "historical mean": self.data.train.y.float().mean(dim=0).expand_as(counts)}
        first = self.first_target_day(split)
        if first is not None:
            assert self.days is not None
            target_days = torch.arange(first, first + len(split))
            totals = torch.cat([torch.zeros_like(self.days[:1]), self.days.cumsum(dim=0)])
            start = (target_days - LONG_WINDOW_DAYS).clamp(min=0)
            predictors[f"{LONG_WINDOW_DAYS}-day mean"] = \
                (totals[target_days] - totals[start]) / (target_days - start).view(-1, 1, 1)
            weeks = target_days[:, None] - 7 * torch.arange(1, SAME_WEEKDAY_WEEKS + 1)[None, :]
            predictors["same weekday"] = torch.stack([self.days[row[row >= 0]].mean(dim=0) for row in weeks])
        predictors["last value"] = split.x[:, -1].float()
        return predictors

    def report_details(self, split: Split, clean_outputs: torch.Tensor, robust_outputs: torch.Tensor,
                       attack_name: str) -> dict[str, Any]:
        counts = split.y.float()
        predictors = {"model, clean": clean_outputs[..., 0], f"model, {attack_name}": robust_outputs[..., 0],
                      **self.trivial_predictions(split)}
        dispersions = {"model, clean": clean_outputs[..., 1], f"model, {attack_name}": robust_outputs[..., 1]}
        non_zero = counts > 0
        rows: dict[str, dict[str, float | None]] = {}
        for name, predicted in predictors.items():
            recall, average_precision = event_detection(predicted, counts, TOP_K)
            recall_d, map_d = region_disparity(predicted, counts, self.event_regions, TOP_K)
            nll: torch.Tensor | None = None
            if name != "all-zero":
                alpha = dispersions.get(name, self.dispersion.expand_as(counts))
                nll = nb_nll(predicted.double().clamp(min=1e-6), alpha.double(), counts)
            row: dict[str, float | None] = {**error_summary(predicted, counts),
                                            "nll": None if nll is None else nll.mean().item(),
                                            "nll non-zero": None if nll is None else nll[non_zero].mean().item(),
                                            f"recall@{TOP_K}": recall, f"map@{TOP_K}": average_precision,
                                            "rec-d": recall_d, "map-d": map_d}
            if name == "all-zero":  # ranks nothing: its "detections" would be the first cells
                row.update({f"recall@{TOP_K}": None, f"map@{TOP_K}": None, "rec-d": None, "map-d": None})
            rows[name] = row
        columns = ["mae zero", "mae non-zero", "mae disparity", "nll", "nll non-zero", "rmse non-zero", "mae overall",
                   f"recall@{TOP_K}", f"map@{TOP_K}", "rec-d", "map-d"]
        names = (self.data.target_names if isinstance(self.data, GraphData) else None) or [str(c) for c in range(counts.shape[-1])]
        per_category = {
            name: [((predicted - counts).abs()[..., c][non_zero[..., c]]).mean().item() for c in range(len(names))]
            for name, predicted in predictors.items()}
        return {
            "predictors": rows,
            "event_regions": {"rate": EVENT_REGION_RATE, "share_of_pairs": self.event_regions.float().mean().item(),
                              "share_of_events": (non_zero & self.event_regions).sum().item() / max(1, non_zero.sum().item())},
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
