"""Stochastic weight averaging (Izmailov et al., UAI 2018).

theta_swa <- (theta_swa * n + theta) / (n + 1) at the end of every epoch from the start
epoch (``start`` x epochs, default 0.75). After training the engine evaluates the average
(this plugin owns ``averaged_weights``). Its BatchNorm statistics are, by default
(``batchnorm = "recompute"``), recomputed after training, as the SWA paper does with one
pass over the training data (``torch.optim.swa_utils.update_bn``); robx makes that pass
through the training data path, so the statistics are those of the adversarial batches the
weights trained on. ``batchnorm = "average"`` averages the running statistics with the
weights instead (CFA's authors' FAWA does so), ``"last"`` keeps the last iterate's (as the
EMA of :mod:`robx.plugins.ema`). The running average lives in the stash as plain tensors, so
it is checkpointed and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.averaging import BatchNormSource, add_to_average, evaluated_average
from robx.core.hookspecs import hookimpl
from robx.core.options import check_ranges
from robx.core.state import StashKey, TrainState

AVERAGE = StashKey[dict]("swa.average")


class SWA:
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

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        if state.epoch >= min(int(round(self.options.start * state.num_epochs)), state.num_epochs - 1):
            state.stash[AVERAGE] = add_to_average(state.stash.get(AVERAGE, None), state.model,
                                                 with_buffers=self.options.batchnorm == "average")

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor]:
        return evaluated_average(state.stash[AVERAGE], state.model, self.options.batchnorm)
