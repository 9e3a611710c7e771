"""DAFA: Distance-Aware Fair Adversarial training (Lee et al., ICLR 2024).

* Warm-up: the base recipe (``trades`` or PGD-AT) alone for ``warmup`` x epochs
  (70 of 110 in the paper).
* In the last warm-up epoch, p_i(j) = mean softmax probability of class j over the training
  adversarial examples of class i (model in train mode) -- the class statistics'
  ``robust_mean_prob``.
* Class weights, computed once and then frozen (Lee et al. 2024): W_i = 1, and for
  each j != i: if p_i(i) < p_j(j): W_i += lam * p_i(j) * p_j(j), else
  W_i -= lam * p_j(i) * p_i(i). lam = 1.0 (CIFAR-10), 1.5 (CIFAR-100, STL-10). This is the
  authors' ``calculate_class_weights`` (rucy74/DAFA at c60ba83; an earlier version subtracted
  lam * p_i(j) * p_j(j) in the second branch): the easier class gives up exactly what the
  harder class gains, so the weights keep summing to the number of classes.
* Floor: an easy class that many others are confused with can lose more than its whole
  weight (on the imbalanced digits default, W = -0.12 for one majority class), which would
  turn its loss into gradient ascent and its attack budget negative. Weights below
  ``min_weight`` (0.1) are raised to it with a warning; on balanced CIFAR-10 the rule stays
  far from it.
* Afterwards the attack uses eps_y = W_y * eps and alpha_y = W_y * alpha (DAFA owns the
  per-class attack budget, which every robx adversary reads -- unlike the authors' PGD-AT
  path, which drops the class margins), and the per-sample loss is weighted by W_y (DAFA
  owns the per-class loss weights). With ``trades`` that loss is the natural term only;
  the KL term stays unweighted, as in the paper. (The authors' ``trades_loss`` runs the
  adversarial train-mode pass before the natural one; robx's engine runs the natural one
  first, which changes only the order of BatchNorm's running-statistics updates:
  docs/parity.md.)

Paper's numbers (ResNet-18, CIFAR-10, TRADES base, 110 epochs, AutoAttack robust accuracy,
average / worst class): TRADES 49.80 / 21.31, DAFA 49.05 / 30.53, so rho = 0.42 (rho in
docs/protocols.md). Training defaults there: lr 0.1 (/10 at epoch 100, /100 at 105), wd 5e-4,
Nesterov, eps 0.031, step 0.007, 10 steps, batch 128.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from robx import ClassPolicy, Plugin, RobxError, TrainState, hookimpl
from robx.plugins.common import warn_if_barely_used


def dafa_class_weights(mean_prob: torch.Tensor, lam: float) -> torch.Tensor:
    """W from the class-similarity matrix p[i, j] = p_i(j) (rule in the module docstring)."""
    p = mean_prob.double()
    num_classes = p.shape[0]
    weights = torch.ones(num_classes, dtype=torch.float64)
    for i in range(num_classes):
        for j in range(num_classes):
            if i == j:
                continue
            if p[i, i] < p[j, j]:
                weights[i] += lam * p[i, j] * p[j, j]
            else:
                weights[i] -= lam * p[j, i] * p[i, i]
    return weights.float()


class DAFA(Plugin):
    """DAFA: class weights and margins from inter-class similarity after warm-up (Lee et al. 2024)."""

    name = "dafa"
    policy = ("attack_budget", "class_weights")

    @dataclass
    class Options:
        lam: float = 1.0
        warmup: float = 70 / 110

        min_weight: float = 0.1

        def __post_init__(self) -> None:
            if self.min_weight <= 0:
                raise ValueError("min_weight must be > 0")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.weights: torch.Tensor | None = None  # W, frozen after the last warm-up epoch

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.weights = saved.get("weights")

    def last_warmup_epoch(self, state: TrainState) -> int:
        return max(0, min(int(round(self.options.warmup * state.num_epochs)), state.num_epochs) - 1)

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        warn_if_barely_used(self.name, "the class weights and budgets", self.last_warmup_epoch(state) + 1,
                            state.num_epochs, f"{self.name}.warmup")

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        if state.epoch != self.last_warmup_epoch(state) or self.weights is not None:
            return
        assert state.epoch_stats is not None
        mean_prob = state.epoch_stats.train.tables.get("robust_mean_prob")
        if mean_prob is None:
            raise RobxError("dafa needs the adversarial class probabilities of a classification task "
                            "(it cannot run with 'natural')")
        weights = dafa_class_weights(mean_prob, self.options.lam)
        low = (weights < self.options.min_weight).nonzero().flatten().tolist()
        if low:
            found = ", ".join(f"class {c}: {weights[c]:.3f}" for c in low)
            warnings.warn(f"dafa: weights below min_weight {self.options.min_weight} raised to it ({found}); "
                          "DAFA's rule assumes balanced classes", RuntimeWarning, stacklevel=2)
            weights = weights.clamp(min=self.options.min_weight)
        self.weights = weights.cpu()

    @hookimpl
    def class_policy(self, state: TrainState) -> ClassPolicy:
        weights = self.weights
        if weights is None:  # warm-up: the run's budget and unweighted loss
            return ClassPolicy()
        return ClassPolicy(attack_budget=(weights * float(state.config.eps), weights * float(state.config.alpha)),
                           class_weights=weights)
