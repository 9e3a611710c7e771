"""SRAT: Separable Reweighted Adversarial Training (Wang, dissertation ch. 4).

Objective (eq. 4.13):  min_theta 1/n sum_i max_{x'_i} w_i L(f(x'_i), y_i) + lambda L_sep(x'_i)

* w_i: class-balanced weights (effective number, beta 0.9999) of y_i, applied only from
  epoch T_d = ``start`` x epochs (deferred schedule, Algorithm 4.1; default 0.8).
* L_sep (eq. 4.12): supervised contrastive loss on the L2-normalised penultimate features
  of the adversarial examples, temperature ``temperature`` (0.1; the paper does not
  state it), computed by the ``supcon`` kernel dispatch; lambda = ``lam`` (1.0, Fig. 4.6).
* L, the prediction loss, is the run's ``--loss``: SRAT-CE (default), SRAT-Focal
  (``--loss focal``), SRAT-LDAM (``--loss ldam``).
* The adversary is the run's (default PGD).

Composition: when another plugin changed the trained batch (Imb-Mix mixes it, TRADES
trains on the clean batch), L_sep still sees the adversarial examples x' of the batch,
with their hard labels, through one extra forward pass; the class weights then apply to
the trained rows (the target-weighted class weight for soft labels) and are computed from
``state.class_counts``, the class counts actually trained on (with Imb-Mix: n_c (1 + t_c)).
The extra pass runs in train mode, so BatchNorm normalises x' with its own batch
statistics, not those of the mixed batch. With Imb-Mix this composition trains on digits
and on cifar10-lt-cpu Exp-100 but collapsed on Step-10 (README, "cifar10-lt-cpu, Step-10").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx.core.hookspecs import hookimpl
from robx.core.state import Step, TrainState
from robx.kernels import supcon
from robx.plugins.common import class_balanced_weights, deferred_start_epoch


class SRAT:
    """SRAT: deferred class-balanced weights + feature separation loss (Wang, ch. 4)."""

    name = "srat"

    @dataclass
    class Options:
        lam: float = 1.0
        temperature: float = 0.1
        beta: float = 0.9999
        start: float = 0.8
        start_epoch: int | None = None

        def __post_init__(self) -> None:
            if self.temperature <= 0:
                raise ValueError("temperature must be > 0")
            if self.lam < 0:
                raise ValueError("lam must be >= 0")

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def class_weights(self, state: TrainState) -> torch.Tensor | None:
        o = self.options
        if state.epoch < deferred_start_epoch(state.num_epochs, o.start, o.start_epoch):
            return None
        return class_balanced_weights(state.class_counts, o.beta)

    @hookimpl
    def extra_loss(self, step: Step, state: TrainState) -> torch.Tensor | None:
        if self.options.lam == 0:
            return None
        assert step.features is not None and step.x_adv is not None
        if step.inputs is step.x_adv:
            features = step.features
        else:
            features, adv_logits = state.model(step.x_adv)
            step.adv_outputs = adv_logits.detach()
        z = F.normalize(features.float(), dim=1)
        return self.options.lam * supcon(z, step.y, self.options.temperature)
