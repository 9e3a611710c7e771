"""Exponential moving average of the weights (Polyak averaging), updated every step:

theta_ema <- d * theta_ema + (1 - d) * theta, d = 0.999, from the start epoch (default 0).
After training, BatchNorm statistics are recomputed for the averaged weights and the
averaged model is evaluated, as for :mod:`robx.plugins.swa`.
"""

from __future__ import annotations

from dataclasses import dataclass

from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, Step, TrainState
from robx.plugins.swa import add_to_average, finish_average

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
        if state.epoch < int(round(self.options.start * state.num_epochs)):
            return
        add_to_average(state, AVERAGE, self.options.decay)

    @hookimpl
    def train_end(self, state: TrainState) -> None:
        finish_average(state, state.stash[AVERAGE])
