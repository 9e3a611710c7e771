"""Class-balanced resampling: batches drawn with replacement, each training example with
probability proportional to 1 / effective number of its class (Cui et al. 2019).
With beta -> 1 this is 1 / n_c, i.e. class-uniform sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, TrainState, check_ranges, hookimpl
from robx.plugins.common import class_balanced_weights


class Resample(Plugin):
    """Class-balanced sampler: example probability ~ 1 / effective number of its class."""

    name = "resample"

    @dataclass
    class Options:
        beta: float = 0.9999

        def __post_init__(self) -> None:
            check_ranges(self, fractions=("beta",))
            if self.beta >= 1:
                raise ValueError(f"beta must be < 1, got {self.beta}")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def sampling_weights(self, state: TrainState, labels: torch.Tensor) -> torch.Tensor:
        per_class = class_balanced_weights(state.class_counts.cpu(), self.options.beta)
        return per_class[labels.cpu()]
