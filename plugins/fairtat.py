"""FAIR-TAT: targeted adversarial training for class fairness (Medi et al., WACV 2025).

* CFPS_c (class-wise false positive score), from the previous epoch's training adversarial
  predictions: (wrong predictions equal to c) / (all wrong predictions); sums to 1.
* Targets: epoch 0 uniform over the classes != y; afterwards y_t ~ Categorical(softmax(2 CFPS))
  conditioned on y_t != y (the paper resamples until y_t != y; conditioning gives the same
  distribution without a loop).
* Adversary: targeted PGD from delta ~ U(-eps_y, eps_y), descending CE(f(x + delta), y_t);
  the training loss stays on the true label (the default CE, or ``trades`` with the same x').
* Class-wise budgets from epoch 1 (FAIR-TAT owns the per-class attack budget): "G-rob"
  (default) eps_c = (0.5 + RobAcc^train_c) eps; "G-cfps" eps_c = (0.5 + 2 CFPS_c) eps. The
  step size alpha is not rescaled.

Deliberate deviation: the authors' code attacks with the model in train mode, so BatchNorm
normalises every PGD step with the statistics of the batch being attacked and updates its
running statistics at each of them. robx runs every attack in eval mode (running
statistics, nothing updated; docs/engine.md): an example's perturbation then does not
depend on the rest of its batch (TRADES issue #3), the running statistics see only the
training passes, and FAIR-TAT compares with the other methods under one attack policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch


from robx import ClassPolicy, Plugin, RobxError, SplitStats, Step, TrainState, check_ranges, hookimpl


def class_false_positive_scores(stats: SplitStats) -> torch.Tensor:
    """CFPS_c = sum_{i != c} n_ic / sum_{i != j} n_ij from the adversarial confusion."""
    confusion = stats.tables.get("robust_confusion")
    if confusion is None:
        raise RobxError("fairtat needs the adversarial confusion of a classification task (not with 'natural')")
    counts = confusion * stats.counts.double()[:, None]  # rates -> counts
    wrong = counts.clone()
    wrong.fill_diagonal_(0.0)
    total = wrong.sum()
    if total <= 0:
        return torch.full((counts.shape[0],), 1.0 / counts.shape[0], dtype=torch.float64)
    return wrong.sum(dim=0) / total


def target_distribution(labels: torch.Tensor, cfps: torch.Tensor | None, num_classes: int,
                        temperature: float) -> torch.Tensor:
    """Per-row probabilities of the target class, zero on the true class."""
    if cfps is None:
        probs = torch.ones(len(labels), num_classes, device=labels.device)
    else:
        probs = torch.softmax(temperature * cfps.to(labels.device).float(), dim=0).expand(len(labels), -1).clone()
    probs[torch.arange(len(labels), device=labels.device), labels] = 0.0
    return probs / probs.sum(dim=1, keepdim=True)


class FairTAT(Plugin):
    """FAIR-TAT: targeted PGD toward the classes most falsely predicted (Medi et al. 2025)."""

    name = "fairtat"
    policy = ("attack_budget",)

    @dataclass
    class Options:
        eps_mode: Literal["g-rob", "g-cfps", "none"] = "g-rob"
        temperature: float = 2.0

        def __post_init__(self) -> None:
            check_ranges(self, positive=("temperature",))

    def __init__(self, options: Options) -> None:
        self.options = options
        # the previous epoch's class false-positive scores and robust accuracy (None in epoch 0)
        self.cfps: torch.Tensor | None = None
        self.robust_acc: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"cfps": self.cfps, "robust_acc": self.robust_acc}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.cfps = saved.get("cfps")
        self.robust_acc = saved.get("robust_acc")

    @hookimpl
    def generate_adversary(self, step: Step, state: TrainState) -> torch.Tensor:
        assert step.attack is not None
        probs = target_distribution(step.labels, self.cfps, state.num_classes, self.options.temperature)
        targets = torch.multinomial(probs, 1).squeeze(1)
        return step.attack(targets=targets)

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        assert state.epoch_stats is not None
        train = state.epoch_stats.train
        self.cfps = class_false_positive_scores(train)
        if train.robust is None:
            raise RobxError("fairtat needs adversarial training predictions")
        self.robust_acc = train.robust

    @hookimpl
    def class_policy(self, state: TrainState) -> ClassPolicy:
        if self.cfps is None or self.robust_acc is None or self.options.eps_mode == "none":
            return ClassPolicy()  # epoch 0: the global budget
        eps = float(state.config.eps)
        if self.options.eps_mode == "g-rob":
            class_eps = (0.5 + self.robust_acc) * eps
        else:
            class_eps = (0.5 + 2 * self.cfps) * eps
        return ClassPolicy(attack_budget=(class_eps.float(), torch.full_like(class_eps, float(state.config.alpha)).float()))
