"""CFA: Class-wise calibrated Fair Adversarial training (Wei et al., CVPR 2023).

With A_c the training robust accuracy of class c in the previous epoch (the class
statistics), from ``start_epoch`` (10 in the paper) on:

* CCM, class-wise calibrated margins: eps_c = (lam_eps + A_c) * eps (lam_eps = 0.5); the step
  size scales alike, alpha_c = alpha * eps_c / eps, so every adversary keeps its steps per
  budget. Weaker classes get smaller budgets.
* CCR, class-wise calibrated regularisation (with ``trades``): the per-sample loss becomes
  (1 - beta_y) CE(f(x), y) + beta_y KL(f(x) || f(x')), with
  beta_c = (lam_beta + A_c) beta / (1 + (lam_beta + A_c) beta) (lam_beta = 0.5, beta = TRADES'
  beta): ``weight_samples`` returns 1 - beta_y for the natural term and ``trades`` reads the
  per-class KL weights beta_c from the stash.
* FAWA, fairness-aware weight averaging: at each epoch end from ``start_epoch``, an EMA of
  the weights (decay 0.88) takes the model only when the worst class's *validation* robust
  accuracy is at least ``fawa_threshold`` (0.2); BatchNorm is recomputed for the average,
  which is the evaluated model. Needs a validation split (``--val-fraction``, 2 % in the
  paper). If no epoch passes the gate, the final model is evaluated and the run says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from robx.core.errors import RobxError
from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, Step, TrainState
from robx.plugins.cb import per_sample_class_weights
from robx.plugins.swa import add_to_average, finish_average
from robx.plugins.trades import KL_CLASS_WEIGHTS

FAWA = StashKey[dict]("cfa.fawa")
NATURAL_WEIGHTS = StashKey[torch.Tensor]("cfa.natural_weights")


def calibrated_eps(robust_acc: torch.Tensor, eps: float, lam: float) -> torch.Tensor:
    """CCM: eps_c = (lam + A_c) eps."""
    return (lam + robust_acc.double()) * eps


def calibrated_beta(robust_acc: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """CCR: beta_c = (lam + A_c) beta / (1 + (lam + A_c) beta), in (0, 1)."""
    scaled = (lam + robust_acc.double()) * beta
    return scaled / (1.0 + scaled)


class CFA:
    """CFA: class-wise calibrated margins, TRADES regularisation and FAWA (Wei et al. 2023)."""

    name = "cfa"

    @dataclass
    class Options:
        start_epoch: int = 10
        lam_eps: float = 0.5
        lam_beta: float = 0.5
        fawa: bool = True
        fawa_decay: float = 0.88
        fawa_threshold: float = 0.2

        def __post_init__(self) -> None:
            if self.start_epoch < 0:
                raise ValueError("start_epoch must be >= 0")
            if not 0.0 <= self.fawa_decay < 1.0:
                raise ValueError("fawa_decay must be in [0, 1)")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        if self.options.fawa and not state.config.val_fraction:
            raise RobxError("cfa's FAWA gates on validation robust accuracy: give --val-fraction "
                            "(the paper uses 0.02), or --set cfa.fawa=false")

    @hookimpl
    def weight_samples(self, step: Step, state: TrainState) -> torch.Tensor | None:
        natural = state.stash.get(NATURAL_WEIGHTS, None)
        return None if natural is None else per_sample_class_weights(step, natural)

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        # epoch_stats describe the epoch that just ended; they calibrate the next one
        next_epoch = state.epoch + 1
        stats = state.epoch_stats
        assert stats is not None
        if next_epoch >= self.options.start_epoch:
            if stats.train.robust_acc is None:
                raise RobxError("cfa needs adversarial training predictions; it cannot run with 'natural'")
            robust_acc = stats.train.robust_acc
            eps, alpha = float(state.config.eps), float(state.config.alpha)
            class_eps = calibrated_eps(robust_acc, eps, self.options.lam_eps)
            state.class_eps = class_eps.float().to(state.device)
            state.class_alpha = (class_eps * (alpha / eps)).float().to(state.device)
            if "trades" in state.plugin_options:
                beta = calibrated_beta(robust_acc, state.plugin_options["trades"].beta, self.options.lam_beta)
                state.stash[KL_CLASS_WEIGHTS] = beta.float()
                state.stash[NATURAL_WEIGHTS] = (1.0 - beta).float()
        if self.options.fawa and state.epoch >= self.options.start_epoch:
            assert stats.val is not None and stats.val.robust_acc is not None
            if float(stats.val.robust_acc.min()) >= self.options.fawa_threshold:
                add_to_average(state, FAWA, self.options.fawa_decay)

    @hookimpl
    def train_end(self, state: TrainState) -> None:
        if not self.options.fawa:
            return
        if FAWA in state.stash:
            finish_average(state, state.stash[FAWA])
        else:
            print(f"robx: cfa: no epoch reached worst-class validation robust accuracy "
                  f"{self.options.fawa_threshold}; the final model is evaluated", file=sys.stderr)
