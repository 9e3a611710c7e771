"""Imb-Mix: supplementary adversarial examples + Remix mixing + SWA (Wang, dissertation ch. 5).

Per batch (Algorithm 5.1), after the adversary produced x' = PGD(x):

1. Supplementary examples (eq. 5.2): every example of a minority class (the less frequent
   half of the classes) gets t_c extra adversarial examples
   x^_k = x + a (x' - x) * N(0, 1) (element-wise Gaussian rescaling of its perturbation),
   clamped to the image range [0, 1] (the paper does not project them back to the
   eps-ball, nor do we). a = 1; t_c = min(round(n_max / n_c) - 1, ``max_copies`` = 8)
   unless ``copies`` fixes it. Majority examples get none.
2. Mixing (eq. 5.3-5.4): pairs of the augmented set are mixed with lam_x ~ Beta(1, 1) and
   the Remix label rule (kappa 3, tau 0.5). n_i, n_j are the training-set class counts:
   counted in the augmented set the default t makes classes nearly balanced and the rule
   would never fire.
3. Loss (eq. 5.5): cross-entropy on the mixed (soft) labels (the task's default loss, or
   ``--loss``).
4. SWA (section 5.3.3) from ``swa_start`` x epochs, BatchNorm recomputed, the averaged
   model evaluated; ``swa = false`` turns it off (the ablation).

With class weights (``srat``, ``cb``, ``drw``): the weights are computed from the counts
Imb-Mix trains on, n_c (1 + t_c) (stored under ``cb.TRAINED_CLASS_COUNTS``), not from the
dataset counts; the copies have already rebalanced the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx.core.hookspecs import hookimpl
from robx.core.metrics import majority_classes
from robx.core.state import StashKey, Step, TrainState
from robx.plugins.cb import TRAINED_CLASS_COUNTS
from robx.plugins.mixup import draw_mix, mix_inputs, mix_targets
from robx.plugins.remix import remix_label_factor
from robx.plugins.swa import average_from_epoch, finish_average

AVERAGE = StashKey[dict]("imbmix.average")


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

    def __init__(self, options: Options) -> None:
        self.options = options

    def copies(self, state: TrainState) -> torch.Tensor:
        return torch.tensor(copies_per_class(state.class_counts.tolist(), self.options.max_copies,
                                             self.options.copies))

    @hookimpl
    def train_start(self, state: TrainState) -> None:
        state.stash[TRAINED_CLASS_COUNTS] = state.class_counts.cpu() * (1 + self.copies(state))

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.x_adv is not None and step.inputs is not None
        copies = self.copies(state)
        extra_x, extra_y = supplementary_examples(step.x, step.x_adv, step.y, copies, self.options.a)
        inputs = torch.cat([step.inputs, extra_x])
        labels = torch.cat([step.y, extra_y])
        lam, partner = draw_mix(len(labels), self.options.concentration, labels.device)
        count_t = state.class_counts.to(labels.device)
        label_lam = remix_label_factor(count_t[labels], count_t[labels[partner]], lam,
                                       self.options.kappa, self.options.tau)
        step.inputs = mix_inputs(inputs, lam, partner)
        step.targets = mix_targets(labels, label_lam, partner, state.num_classes)

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        if self.options.swa:
            average_from_epoch(state, AVERAGE, self.options.swa_start)

    @hookimpl
    def train_end(self, state: TrainState) -> None:
        if self.options.swa:
            finish_average(state, state.stash[AVERAGE])
