"""CFA: Class-wise calibrated Fair Adversarial training (Wei et al., CVPR 2023), as the
authors' code (PKU-ML/CFA, train.py) runs it.

With A_c the training robust accuracy of class c in the previous epoch (the class
statistics):

* CCM, class-wise calibrated margins (CFA owns the per-class attack budget), from
  ``start_epoch`` (10): eps_c = (lam_eps + A_c) * eps (lam_eps = 0.5); before it, eps. The
  step size stays alpha for every class, as in the authors' code (robx's first version
  scaled it with eps_c).
* CCR, class-wise calibrated regularisation (CFA owns the per-class regulariser weights):
  b_c = beta / (1 + beta) before ``start_epoch`` and
  b_c = (lam_beta + A_c) beta / (1 + (lam_beta + A_c) beta) from it (lam_beta = 0.5,
  beta = 6, the TRADES beta the paper calibrates; ``beta`` here, set it with ``trades.beta``
  when that changes). A regulariser that honours them (``trades``) trains on
  (1 - b_y) CE(f(x), y) + b_y KL(f(x) || f(x')) from the first epoch, as the authors' code
  does (robx's first version trained CE + 6 KL until epoch 10, then switched to the
  calibrated form, seven times smaller). Without one (PGD-AT + CFA) CCR has nothing to
  calibrate, as in the paper.
* FAWA, fairness-aware weight averaging (CFA owns the evaluated model): at every epoch end,
  an EMA of the whole model state (weights and BatchNorm statistics, decay 0.88) takes the
  model only when the worst class's *validation* robust accuracy is at least
  ``fawa_threshold`` (0.24, the authors' default); the first epoch that passes starts it.
  Its BN statistics are the averaged ones (not recomputed). Needs a validation split
  (``--val-fraction``, 2 % in the paper). If no epoch passes the gate, the final model is
  evaluated and the run says so.

The authors' data pipeline crops CIFAR images after padding them by reflection, where
TRADES', DAFA's and LDAM-DRW's code (and robx's default) pad with zeros; ``--crop-padding
reflect`` reproduces theirs. On the end-to-end protocol of docs/parity.md it is worth about
4 points of standard accuracy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from robx import (Plugin, ClassPolicy, RobxError, TrainState, WeightAverage, add_to_average, hookimpl, restored_average,
                  saved_average)
from robx.plugins.common import warn_if_barely_used


def calibrated_eps(robust_acc: torch.Tensor, eps: float, lam: float) -> torch.Tensor:
    """CCM: eps_c = (lam + A_c) eps."""
    return (lam + robust_acc.double()) * eps


def calibrated_beta(robust_acc: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """CCR: beta_c = (lam + A_c) beta / (1 + (lam + A_c) beta), in (0, 1)."""
    scaled = (lam + robust_acc.double()) * beta
    return scaled / (1.0 + scaled)


class CFA(Plugin):
    """CFA: class-wise calibrated margins, TRADES regularisation and FAWA (Wei et al. 2023)."""

    name = "cfa"
    policy = ("attack_budget", "regularizer_weights")

    @dataclass
    class Options:
        start_epoch: int = 10
        lam_eps: float = 0.5
        lam_beta: float = 0.5
        beta: float = 6.0
        fawa: bool = True
        fawa_decay: float = 0.88
        fawa_threshold: float = 0.24

        def __post_init__(self) -> None:
            if self.start_epoch < 0:
                raise ValueError("start_epoch must be >= 0")
            if not 0.0 <= self.fawa_decay < 1.0:
                raise ValueError("fawa_decay must be in [0, 1)")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.calibration: torch.Tensor | None = None  # A_c that calibrates the coming epoch
        self.fawa: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"robust_acc": self.calibration, "fawa": saved_average(self.fawa)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.calibration = saved.get("robust_acc")
        self.fawa = restored_average(saved.get("fawa"))

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        if self.options.fawa and not state.config.val_fraction:
            raise RobxError("cfa's FAWA gates on validation robust accuracy: give --val-fraction "
                            "(the paper uses 0.02), or --set cfa.fawa=false")
        warn_if_barely_used(self.name, "the calibrated budgets and regulariser weights", self.options.start_epoch,
                            state.num_epochs, f"{self.name}.start_epoch")

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        stats = state.epoch_stats
        assert stats is not None
        if state.epoch + 1 >= self.options.start_epoch:  # these statistics calibrate the next epoch
            if stats.train.robust is None:
                raise RobxError("cfa needs adversarial training predictions; it cannot run with 'natural'")
            self.calibration = stats.train.robust
        if self.options.fawa:
            assert stats.val is not None and stats.val.robust is not None
            if float(stats.val.robust.min()) >= self.options.fawa_threshold:
                self.fawa = add_to_average(self.fawa, state.model, self.options.fawa_decay, with_buffers=True)

    @hookimpl
    def class_policy(self, state: TrainState) -> ClassPolicy:
        if self.calibration is None:  # before start_epoch: the run's budget, TRADES as beta / (1 + beta)
            beta = self.options.beta
            return ClassPolicy(regularizer_weights=torch.full((state.num_classes,), beta / (1.0 + beta)))
        calibration = self.calibration
        class_eps = calibrated_eps(calibration, float(state.config.eps), self.options.lam_eps).float()
        return ClassPolicy(attack_budget=(class_eps, torch.full_like(class_eps, float(state.config.alpha))),
                           regularizer_weights=calibrated_beta(calibration, self.options.beta,
                                                               self.options.lam_beta).float())

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor] | None:
        if not self.options.fawa:
            return None
        if self.fawa is None:
            print(f"robx: cfa: no epoch reached worst-class validation robust accuracy "
                  f"{self.options.fawa_threshold}; the final model is evaluated", file=sys.stderr)
            return None
        return self.fawa.parameters
