"""Imb-Mix: supplementary adversarial examples + Remix mixing + SWA (Wang, dissertation ch. 5).

Per batch (Algorithm 5.1), after the adversary produced x' = PGD(x):

1. Supplementary examples (eq. 5.2): every example of a minority class (the less frequent
   half of the classes) gets t_c extra adversarial examples
   x^_k = x + a (x' - x) * N(0, 1) (element-wise Gaussian rescaling of its perturbation),
   clamped to the image range [0, 1] (the paper does not project them back to the
   eps-ball, nor do we). a = 1; t_c = min(round(n_max / n_c) - 1, ``max_copies`` = 8)
   unless ``copies`` fixes it, with n_c the training set's counts. Majority examples get none.
2. Mixing (eq. 5.3-5.4): pairs of the augmented set are mixed with lam_x ~ Beta(1, 1) and
   the Remix label rule (kappa 3, tau 0.5). n_i, n_j are, as eq. 5.4 defines them, the
   numbers of adversarial examples of each class in the augmented set, n_c (1 + t_c)
   (``remix_counts = "augmented"``). The default t makes the classes nearly balanced
   (Step-10: 1000 vs 900), so the rule rarely fires and the labels are mostly Mixup's;
   ``remix_counts = "dataset"`` uses the training set's counts n_c instead (robx's first
   version, where the rule fires for every majority-minority pair).
3. Loss (eq. 5.5): cross-entropy on the mixed (soft) labels (the task's default loss, or
   ``--loss``).
4. SWA (section 5.3.3) from ``swa_start`` x epochs: this plugin owns the evaluated model
   (``averaged_weights``), BatchNorm recomputed by the engine through the training data
   path as for :mod:`robx.plugins.swa`, the SWA paper's choice the dissertation cites
   (``batchnorm = "average"`` averages the running statistics with the weights, ``"last"``
   keeps the last iterate's); ``swa = false`` turns it off (the ablation; the last iterate
   is evaluated).

The copies grow every epoch by t_c n_c examples of each minority class, so this plugin owns
the class counts the run trains on: ``state.class_counts`` = n_c (1 + t_c), which class
weights (``srat``, ``cb``, ``drw``) then use; the copies have already rebalanced the batch.

Paper's numbers (Table 5.1; CIFAR-10 Exp-10, 250 epochs): minority robust accuracy 22.57
(vanilla PGD-AT), 27.45 (Remix + AT), 30.52 (Imb-Mix). robx's measurements are in
docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from robx.core.averaging import (BatchNormSource, WeightAverage, add_to_average, evaluated_average,
                                 restored_average, saved_average)
from robx.core.hookspecs import hookimpl
from robx.core.options import check_ranges
from robx.core.metrics import majority_classes
from robx.core.state import Step, TrainState
from robx.plugins.common import draw_mix, mix_inputs, mix_labels, mix_targets, remix_label_factor

def copies_per_class(class_counts: list[int], max_copies: int, fixed: int | None) -> list[int]:
    """t_c for every class: 0 for the majority half, else round(n_max / n_c) - 1 capped."""
    majority = set(majority_classes(class_counts))
    n_max = max(class_counts)
    copies = []
    for c, n in enumerate(class_counts):
        if c in majority:
            copies.append(0)
        elif fixed is not None:
            copies.append(fixed)
        else:
            copies.append(max(0, min(int(round(n_max / max(n, 1))) - 1, max_copies)))
    return copies


def supplementary_examples(
    x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, copies: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5.2 for every row: ``copies[y_i]`` new examples x + a (x' - x) * N(0, 1)."""
    repeats = copies.to(y.device)[y]
    source = torch.repeat_interleave(torch.arange(len(y), device=y.device), repeats)
    noise = torch.randn((len(source),) + x.shape[1:], device=x.device, dtype=x.dtype)
    extra = (x[source] + scale * (x_adv[source] - x[source]) * noise).clamp(0.0, 1.0)
    return extra, y[source]


class ImbMix:
    """Imb-Mix: minority adversarial copies (eq. 5.2), Remix mixing, SWA (Wang, ch. 5)."""

    name = "imbmix"
    trains_on = "adversarial"  # the copies are built from x' and mixed with the rows: they must be x'

    @dataclass
    class Options:
        a: float = 1.0
        copies: int | None = None
        max_copies: int = 8
        kappa: float = 3.0
        tau: float = 0.5
        concentration: float = 1.0
        swa: bool = True
        swa_start: float = 0.75
        remix_counts: Literal["augmented", "dataset"] = "augmented"
        batchnorm: BatchNormSource = "recompute"

        def __post_init__(self) -> None:
            check_ranges(self, at_least_one=("max_copies",), positive=("kappa", "concentration"),
                         non_negative=("a",), fractions=("tau", "swa_start"))
            if self.copies is not None and self.copies < 1:
                raise ValueError(f"copies must be >= 1 (or unset), got {self.copies}")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.remix_counts: torch.Tensor | None = None  # n_i, n_j of the Remix rule
        self.copies: torch.Tensor | None = None
        self.average: WeightAverage | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"average": saved_average(self.average)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.average = restored_average(saved.get("average"))

    @hookimpl
    def trained_class_counts(self, dataset_counts: torch.Tensor) -> torch.Tensor:
        dataset_counts = dataset_counts.cpu()
        self.copies = torch.tensor(copies_per_class(dataset_counts.tolist(), self.options.max_copies,
                                                    self.options.copies))
        augmented = dataset_counts * (1 + self.copies)
        self.remix_counts = augmented if self.options.remix_counts == "augmented" else dataset_counts
        return augmented

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.x_adv is not None and step.inputs is not None
        assert self.copies is not None and self.remix_counts is not None
        extra_x, extra_y = supplementary_examples(step.x, step.x_adv, step.labels, self.copies, self.options.a)
        inputs = torch.cat([step.inputs, extra_x])
        labels = torch.cat([step.row_labels, extra_y])
        lam, partner = draw_mix(len(labels), self.options.concentration, labels.device)
        count_t = self.remix_counts.to(labels.device)
        label_lam = remix_label_factor(count_t[labels], count_t[labels[partner]], lam,
                                       self.options.kappa, self.options.tau)
        step.set_rows(mix_inputs(inputs, lam, partner), mix_targets(labels, label_lam, partner, state.num_classes),
                      mix_labels(labels, label_lam, partner))

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        start = min(int(round(self.options.swa_start * state.num_epochs)), state.num_epochs - 1)
        if self.options.swa and state.epoch >= start:
            self.average = add_to_average(self.average, state.model, with_buffers=self.options.batchnorm == "average")

    @hookimpl
    def averaged_weights(self, state: TrainState) -> dict[str, torch.Tensor] | None:
        if not self.options.swa:
            return None
        return evaluated_average(self.average, state.model, self.options.batchnorm)
