"""Class-balanced re-weighting (Cui et al., CVPR 2019), from the first epoch.

w_c = (1 - beta) / (1 - beta^{n_c}) (the inverse effective number of samples),
normalised so that sum_c w_c = C; beta = 0.9999 (Cui et al. 2019). An example's
weight is w of its class; with soft targets, the target-weighted mean sum_c t_c w_c.

n_c is ``state.class_counts``, the examples of class c the model trains on per epoch (the
training set's counts, or the grown counts of a plugin that adds examples, such as
Imb-Mix's minority copies): weighting by the training set's counts after the batch was
already rebalanced would rebalance twice.
"""

from __future__ import annotations

from dataclasses import dataclass


from robx import ClassPolicy, Plugin, TrainState, hookimpl
from robx.plugins.common import class_balanced_weights


class ClassBalanced(Plugin):
    """Class-balanced loss weights from the effective number of samples (Cui et al. 2019)."""

    name = "cb"
    policy = ("class_weights",)

    @dataclass
    class Options:
        beta: float = 0.9999

        def __post_init__(self) -> None:
            if not 0 <= self.beta < 1:
                raise ValueError(f"beta must be in [0, 1), got {self.beta}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def class_policy(self, state: TrainState) -> ClassPolicy:
        return ClassPolicy(class_weights=class_balanced_weights(state.class_counts, self.options.beta))
