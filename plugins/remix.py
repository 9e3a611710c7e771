"""Remix (Chou et al., ECCV-W 2020): mixup whose label favours the minority class.

Inputs mix as in mixup with lam ~ Beta(1, 1). The label factor of the pair (i, j), with
n_i, n_j the training counts of their classes (Chou et al. 2020):
    lam_y = 0    if n_i / n_j >= kappa and lam < tau
    lam_y = 1    if n_i / n_j <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise
kappa = 3, tau = 0.5; n is ``state.class_counts``. Needs hard labels (class counts of both
partners).
"""

from __future__ import annotations

from dataclasses import dataclass

from robx.core.errors import RobxError
from robx.core.hookspecs import hookimpl
from robx.core.options import check_ranges
from robx.core.state import Step, TrainState
from robx.plugins.common import draw_mix, mix_inputs, mix_labels, mix_targets, remix_label_factor


class Remix:
    """Remix: mixup with minority-favouring labels (Chou et al. 2020)."""

    name = "remix"

    @dataclass
    class Options:
        kappa: float = 3.0
        tau: float = 0.5
        concentration: float = 1.0

        def __post_init__(self) -> None:
            check_ranges(self, positive=("kappa", "concentration"), fractions=("tau",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.inputs is not None and step.targets is not None
        if step.targets.is_floating_point():
            raise RobxError("remix needs hard labels; list it before other mixing plugins")
        lam, partner = draw_mix(len(step.inputs), self.options.concentration, step.inputs.device)
        counts = state.class_counts.to(step.targets.device)
        label_lam = remix_label_factor(counts[step.targets], counts[step.targets[partner]], lam,
                                       self.options.kappa, self.options.tau)
        step.set_rows(mix_inputs(step.inputs, lam, partner),
                      mix_targets(step.targets, label_lam, partner, state.num_classes),
                      mix_labels(step.targets, label_lam, partner))
