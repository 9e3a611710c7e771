"""Exponential moving average of the weights (Polyak averaging), updated every step:

theta_ema <- d_t * theta_ema + (1 - d_t) * theta from the start epoch (default 0), with the
warmed-up decay d_t = min(d, (1 + t) / (10 + t)), t the number of models averaged so far and
d = 0.999 (TensorFlow's ``ExponentialMovingAverage(num_updates=)`` rule). Without the warm-up
(``warmup = false``) the average of a short run is mostly its first steps' weights: after
the ~1,300 steps of a 30-epoch cifar10-lt-cpu run, 0.999^1300 = 27 % of it is the initial
model. After training the engine evaluates the average (this plugin owns ``averaged_weights``)
with the last iterate's BatchNorm statistics (``batchnorm = "last"``), as the adversarial
training EMA of Gowal et al. (2020) and Rebuffi et al. (2021) does: their code evaluates the
averaged parameters with the training network's state. ``"recompute"`` recomputes them
through the training data path (as :mod:`robx.plugins.swa`), ``"average"`` averages them
with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robx import (BatchNormSource, Plugin, Step, TrainState, WeightAverage, add_to_average, check_ranges,
                  evaluated_average, hookimpl, restored_average, saved_average)


class EMA(Plugin):
    """Exponential moving average of the weights."""

    name = "ema"

    @dataclass
    class Options:
        decay: float = 0.999
        start: float = 0.0
        warmup: bool = True
        batchnorm: BatchNormSource = "last"

        def __post_init__(self) -> None:
            check_ranges(self, fractions=("decay", "start"))

    def __init__(self, options: Options) -> None:
        self.options = options
        self.average: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"average": saved_average(self.average)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.average = restored_average(saved.get("average"))

    @hookimpl
    def after_step(self, step: Step, state: TrainState) -> None:
        if state.epoch < int(round(self.options.start * state.num_epochs)):
            return
        decay = self.options.decay
        if self.options.warmup and self.average is not None:
            averaged = self.average.count
            decay = min(decay, (1 + averaged) / (10 + averaged))
        self.average = add_to_average(self.average, state.model, decay,
                                      with_buffers=self.options.batchnorm == "average")

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor]:
        return evaluated_average(self.average, state.model, self.options.batchnorm)
