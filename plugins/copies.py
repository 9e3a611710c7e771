"""Adversarial copies of minority examples (Wang, dissertation eq. 5.2): the supplementary
examples of Imb-Mix.

Per batch, after the adversary produced x' = PGD(x), every example of a minority class (the
less frequent half of the classes) gets t_c extra examples
x^_k = x + a (x' - x) * N(0, 1) (element-wise Gaussian rescaling of its perturbation),
clamped to the image range [0, 1] (the dissertation does not project them back to the
eps-ball, nor do we). a = 1; t_c = min(round(n_max / n_c) - 1, ``max_count`` = 8) unless
``count`` fixes it, with n_c the training set's counts. Majority examples get none. The
copies are appended to the trained rows (with their class as target and label), so a plugin
listed after this one (``remix`` in ``imbmix``) mixes the augmented set.

The copies grow every epoch by t_c n_c examples of each minority class, so this plugin owns
the class counts the run trains on: ``state.class_counts`` = n_c (1 + t_c), which class
weights (``srat``, ``cb``, ``drw``) and ``remix`` then use. The copies are built from x', so
the trained rows must be x' (``trains_on = "adversarial"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robx import Plugin, Step, TrainState, check_ranges, hookimpl, majority_classes
from robx.plugins.common import soft_targets


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


class Copies(Plugin):
    """Adversarial copies x + a (x' - x) N(0, 1) of every minority example (Wang, eq. 5.2)."""

    name = "copies"
    trains_on = "adversarial"  # the copies are built from x' and join the rows: they must be x'

    @dataclass
    class Options:
        a: float = 1.0
        count: int | None = None
        max_count: int = 8

        def __post_init__(self) -> None:
            check_ranges(self, at_least_one=("max_count",), non_negative=("a",))
            if self.count is not None and self.count < 1:
                raise ValueError(f"count must be >= 1 (or unset), got {self.count}")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.copies: torch.Tensor | None = None  # t_c, fixed for the run

    @hookimpl
    def trained_class_counts(self, dataset_counts: torch.Tensor) -> torch.Tensor:
        dataset_counts = dataset_counts.cpu()
        self.copies = torch.tensor(copies_per_class(dataset_counts.tolist(), self.options.max_count,
                                                    self.options.count))
        return dataset_counts * (1 + self.copies)

    @hookimpl
    def augment(self, step: Step, state: TrainState) -> None:
        assert step.x_adv is not None and step.inputs is not None and step.targets is not None
        assert self.copies is not None
        extra_x, extra_y = supplementary_examples(step.x, step.x_adv, step.labels, self.copies, self.options.a)
        extra_targets = soft_targets(extra_y, state.num_classes) if step.targets.is_floating_point() else extra_y
        step.set_rows(torch.cat([step.inputs, extra_x]), torch.cat([step.targets, extra_targets]),
                      torch.cat([step.row_labels, extra_y]))
