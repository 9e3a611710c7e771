"""Deferred re-weighting (Cao et al., NeurIPS 2019): weight 1 until epoch T_d, then the
class-balanced weights (Cui et al. 2019; :func:`robx.plugins.common.class_balanced_weights`
of ``state.class_counts``).

T_d is ``start`` times the number of epochs, rounded (default 0.8: SRAT's 160 of 200,
the first learning-rate decay), or ``start_epoch`` when given. With ``--loss ldam`` this
is DRCB-LDAM.

The weighted loss is averaged over the rows' weights, sum_i w_i l_i / sum_i w_i, as the
authors' code computes it (``F.cross_entropy(weight=per_cls_weights)``): with Step-10 CB
weights a batch mean would scale the loss after T_d down to about a third.
"""

from __future__ import annotations

from dataclasses import dataclass


from robx import ClassPolicy, Plugin, TrainState, check_ranges, hookimpl
from robx.plugins.common import class_balanced_weights, deferred_start_epoch, warn_if_barely_used


class DeferredReweighting(Plugin):
    """Deferred re-weighting: class-balanced weights from epoch T_d on (Cao et al. 2019)."""

    name = "drw"
    policy = ("class_weights",)
    weighted_mean = True

    @dataclass
    class Options:
        beta: float = 0.9999
        start: float = 0.8
        start_epoch: int | None = None

        def __post_init__(self) -> None:
            check_ranges(self, fractions=("beta", "start"))
            if self.beta >= 1 or (self.start_epoch is not None and self.start_epoch < 0):
                raise ValueError(f"beta must be < 1 and start_epoch >= 0, got {self.beta} and {self.start_epoch}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        o = self.options
        warn_if_barely_used(self.name, "the deferred class-balanced weights", deferred_start_epoch(
            state.num_epochs, o.start, o.start_epoch), state.num_epochs, f"{self.name}.start")

    @hookimpl
    def class_policy(self, state: TrainState) -> ClassPolicy:
        o = self.options
        if state.epoch < deferred_start_epoch(state.num_epochs, o.start, o.start_epoch):
            return ClassPolicy()
        return ClassPolicy(class_weights=class_balanced_weights(state.class_counts, o.beta))
