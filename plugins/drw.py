"""Deferred re-weighting (Cao et al., NeurIPS 2019): weight 1 until epoch T_d, then the
class-balanced weights of :mod:`robx.plugins.cb`.

T_d is ``start`` times the number of epochs, rounded (default 0.8: SRAT's 160 of 200,
the first learning-rate decay), or ``start_epoch`` when given. With ``--loss ldam`` this
is DRCB-LDAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState
from robx.plugins.cb import class_balanced_weights, per_sample_class_weights, trained_class_counts


def deferred_start_epoch(epochs: int, start: float, start_epoch: int | None) -> int:
    return start_epoch if start_epoch is not None else int(round(start * epochs))


def deferred_class_weights(
    step: Step, state: TrainState, beta: float, start: float, start_epoch: int | None
) -> torch.Tensor | None:
    """None (weight 1) before epoch T_d, the class-balanced weights from T_d on."""
    if state.epoch < deferred_start_epoch(state.num_epochs, start, start_epoch):
        return None
    return per_sample_class_weights(step, class_balanced_weights(trained_class_counts(state), beta))


class DeferredReweighting:
    """Deferred re-weighting: class-balanced weights from epoch T_d on (Cao et al. 2019)."""

    name = "drw"

    @dataclass
    class Options:
        beta: float = 0.9999
        start: float = 0.8
        start_epoch: int | None = None

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def weight_samples(self, step: Step, state: TrainState) -> torch.Tensor | None:
        o = self.options
        return deferred_class_weights(step, state, o.beta, o.start, o.start_epoch)
