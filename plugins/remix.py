"""Remix (Chou et al., ECCV-W 2020): mixup whose label favours the minority class.

Inputs mix as in mixup with lam ~ Beta(1, 1). The label factor of the pair (i, j), with
n_i, n_j the training counts of their classes (Chou et al. 2020):
    lam_y = 0    if n_i / n_j >= kappa and lam < tau
    lam_y = 1    if n_i / n_j <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise
kappa = 3, tau = 0.5; n is ``state.class_counts``, the counts the run trains on
(``counts = "trained"``: with ``copies`` the augmented set's n_c (1 + t_c), as Imb-Mix's
eq. 5.4 defines them), or the training set's (``counts = "dataset"``). Needs hard labels
(class counts of both partners).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from robx import Plugin, RobxError, Step, TrainState, check_ranges, hookimpl
from robx.plugins.common import draw_mix, mix_inputs, mix_labels, mix_targets, remix_label_factor


class Remix(Plugin):
    """Remix: mixup with minority-favouring labels (Chou et al. 2020)."""

    name = "remix"

    @dataclass
    class Options:
        kappa: float = 3.0
        tau: float = 0.5
        concentration: float = 1.0
        counts: Literal["trained", "dataset"] = "trained"

        def __post_init__(self) -> None:
            check_ranges(self, positive=("kappa", "concentration"), fractions=("tau",))

    def __init__(self, options: Options) -> None:
        self.options = options
        self.dataset_counts: torch.Tensor | None = None

    def pair_counts(self, state: TrainState) -> torch.Tensor:
        if self.options.counts == "trained":
            return state.class_counts
        if self.dataset_counts is None:
            self.dataset_counts = torch.tensor(state.task.data.class_counts())
        return self.dataset_counts

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.inputs is not None and step.targets is not None
        if step.targets.is_floating_point():
            raise RobxError("remix needs hard labels; list it before other mixing plugins")
        lam, partner = draw_mix(len(step.inputs), self.options.concentration, step.inputs.device)
        counts = self.pair_counts(state).to(step.targets.device)
        label_lam = remix_label_factor(counts[step.targets], counts[step.targets[partner]], lam,
                                       self.options.kappa, self.options.tau)
        step.set_rows(mix_inputs(step.inputs, lam, partner),
                      mix_targets(step.targets, label_lam, partner, state.num_classes),
                      mix_labels(step.targets, label_lam, partner))
