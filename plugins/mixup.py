"""Mixup (Zhang et al., ICLR 2018) of the adversarial batch.

x~ = lam x_i + (1 - lam) x_j, t~ = lam e_{y_i} + (1 - lam) e_{y_j}, lam ~ Beta(a, a)
(a = 1), j a random permutation of the batch (Zhang et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

from robx import Plugin, Step, TrainState, check_ranges, hookimpl
from robx.plugins.common import draw_mix, mix_inputs, mix_labels, mix_targets


class Mixup(Plugin):
    """Mixup of adversarial examples and their labels (Zhang et al. 2018)."""

    name = "mixup"

    @dataclass
    class Options:
        concentration: float = 1.0

        def __post_init__(self) -> None:
            check_ranges(self, positive=("concentration",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.inputs is not None and step.targets is not None and step.row_labels is not None
        lam, partner = draw_mix(len(step.inputs), self.options.concentration, step.inputs.device)
        step.set_rows(mix_inputs(step.inputs, lam, partner), mix_targets(step.targets, lam, partner, state.num_classes),
                      mix_labels(step.row_labels, lam, partner))
