"""Class-balanced re-weighting (Cui et al., CVPR 2019), from the first epoch.

w_c = (1 - beta) / (1 - beta^{n_c}) (the inverse effective number of samples),
normalised so that sum_c w_c = C; beta = 0.9999 (METHODS.md section 1). An example's
weight is w of its class; with soft targets, the target-weighted mean sum_c t_c w_c.

n_c is the number of examples of class c the model trains on per epoch: the dataset's
count, unless a plugin that adds examples (Imb-Mix's minority copies) stored the grown
counts under ``TRAINED_CLASS_COUNTS``. Weighting by the dataset counts after the batch was
already rebalanced would rebalance twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, Step, TrainState

TRAINED_CLASS_COUNTS = StashKey[torch.Tensor]("cb.trained_class_counts")


def trained_class_counts(state: TrainState) -> torch.Tensor:
    """Examples of each class trained on per epoch (the dataset counts unless a plugin grew them)."""
    return state.stash.get(TRAINED_CLASS_COUNTS, state.class_counts)


def class_balanced_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 - beta) / (1 - beta^n_c), normalised to sum to the number of classes."""
    counts = class_counts.double()
    effective_number = (1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
    weights = 1.0 / effective_number.clamp(min=1e-12)
    return (weights * len(counts) / weights.sum()).float()


def per_sample_class_weights(step: Step, class_weights: torch.Tensor) -> torch.Tensor:
    """Each row's class weight (expected weight under soft targets)."""
    assert step.targets is not None
    class_weights = class_weights.to(step.targets.device)
    if step.targets.is_floating_point():
        return step.targets @ class_weights
    return class_weights[step.targets]


class ClassBalanced:
    """Class-balanced loss weights from the effective number of samples (Cui et al. 2019)."""

    name = "cb"

    @dataclass
    class Options:
        beta: float = 0.9999

        def __post_init__(self) -> None:
            if not 0 <= self.beta < 1:
                raise ValueError(f"beta must be in [0, 1), got {self.beta}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def weight_samples(self, step: Step, state: TrainState) -> torch.Tensor:
        return per_sample_class_weights(step, class_balanced_weights(trained_class_counts(state), self.options.beta))
