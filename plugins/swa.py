"""Stochastic weight averaging (Izmailov et al., UAI 2018).

theta_swa <- (theta_swa * n + theta) / (n + 1) at the end of every epoch from the start
epoch (``start`` x epochs, default 0.75). After training the engine evaluates the average
(this plugin owns ``averaged_weights``). Its BatchNorm statistics are, by default
(``batchnorm = "recompute"``), recomputed after training, as the SWA paper does with one
pass over the training data (``torch.optim.swa_utils.update_bn``); robx makes that pass
through the training data path, so the statistics are those of the adversarial batches the
weights trained on. ``batchnorm = "average"`` averages the running statistics with the
weights instead (CFA's authors' FAWA does so), ``"last"`` keeps the last iterate's (as the
EMA of :mod:`robx.plugins.ema`). The running average is the plugin's saved state (plain
tensors), so it is checkpointed and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robx import (BatchNormSource, Plugin, TrainState, WeightAverage, add_to_average, check_ranges, evaluated_average,
                  hookimpl, restored_average, saved_average)


class SWA(Plugin):
    """Stochastic weight averaging from a start epoch (Izmailov et al. 2018)."""

    name = "swa"

    @dataclass
    class Options:
        start: float = 0.75
        batchnorm: BatchNormSource = "recompute"

        def __post_init__(self) -> None:
            check_ranges(self, fractions=("start",))

    def __init__(self, options: Options) -> None:
        self.options = options
        self.average: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"average": saved_average(self.average)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.average = restored_average(saved.get("average"))

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        if state.epoch >= min(int(round(self.options.start * state.num_epochs)), state.num_epochs - 1):
            self.average = add_to_average(self.average, state.model, with_buffers=self.options.batchnorm == "average")

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor]:
        return evaluated_average(self.average, state.model, self.options.batchnorm)
