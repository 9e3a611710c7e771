"""Exponential moving average of the weights (Polyak averaging), updated every step:

theta_ema <- d * theta_ema + (1 - d) * theta, d = 0.999, from the start epoch (default 0).
After training the engine evaluates the average (this plugin owns ``averaged_weights``),
with BatchNorm statistics recomputed for it, as for :mod:`robx.plugins.swa`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.averaging import WeightAverage, add_to_average
from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, Step, TrainState

AVERAGE = StashKey[dict]("ema.average")


class EMA:
    """Exponential moving average of the weights, BN recomputed at the end."""

    name = "ema"

    @dataclass
    class Options:
        decay: float = 0.999
        start: float = 0.0

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def after_step(self, step: Step, state: TrainState) -> None:
        if state.epoch >= int(round(self.options.start * state.num_epochs)):
            state.stash[AVERAGE] = add_to_average(state.stash.get(AVERAGE, None), state.model, self.options.decay)

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor]:
        return WeightAverage.from_state(state.stash[AVERAGE]).parameters
