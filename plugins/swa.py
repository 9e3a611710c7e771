"""Stochastic weight averaging (Izmailov et al., UAI 2018).

theta_swa <- (theta_swa * n + theta) / (n + 1) at the end of every epoch from the start
epoch (``start`` x epochs, default 0.75); after training, BatchNorm statistics are
recomputed for the averaged weights on the clean training data and the averaged model
is the one evaluated (``state.eval_model``). Uses ``torch.optim.swa_utils``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from robx.core.data import to_unit_float
from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, TrainState

AVERAGE = StashKey[AveragedModel]("swa.average")


def clean_batches(state: TrainState, batch_size: int = 256):
    """The clean training images in fixed order, for BatchNorm recomputation."""
    x = state.data.x_train
    for start in range(0, len(x), batch_size):
        yield to_unit_float(x[start : start + batch_size]).to(state.device)


def finish_average(state: TrainState, averaged: AveragedModel) -> None:
    """Recompute BN statistics for the averaged weights and hand them to evaluation."""
    update_bn(clean_batches(state), averaged, device=state.device)
    model = copy.deepcopy(averaged.module)
    model.eval()
    state.eval_model = model


class SWA:
    """Stochastic weight averaging from a start epoch, BN recomputed (Izmailov et al. 2018)."""

    name = "swa"

    @dataclass
    class Options:
        start: float = 0.75

    def __init__(self, options: Options) -> None:
        self.options = options

    def start_epoch(self, state: TrainState) -> int:
        return min(int(round(self.options.start * state.num_epochs)), state.num_epochs - 1)

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        if state.epoch < self.start_epoch(state):
            return
        if AVERAGE not in state.stash:
            state.stash[AVERAGE] = AveragedModel(state.model)
        state.stash[AVERAGE].update_parameters(state.model)

    @hookimpl
    def train_end(self, state: TrainState) -> None:
        finish_average(state, state.stash[AVERAGE])
