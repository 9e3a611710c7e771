"""SRAT: Separable Reweighted Adversarial Training (Wang, dissertation ch. 4).

Objective (eq. 4.13):  min_theta 1/n sum_i max_{x'_i} w_i L(f(x'_i), y_i) + lambda L_sep(x'_i)

* w_i: class-balanced weights (effective number, beta 0.9999) of y_i, applied only from
  epoch T_d = ``start`` x epochs (deferred schedule, Algorithm 4.1; default 0.8). The
  weighted term is averaged over the rows' weights, sum_i w_i L_i / sum_i w_i: Algorithm
  4.1 writes 1/N sum_i w_i L_i, but its deferred schedule is LDAM-DRW's [10], whose code
  computes it as ``F.cross_entropy(weight=w)`` (normalised by the weights); no SRAT code is
  public. So SRAT-LDAM and DRCB-LDAM differ by L_sep alone, and the weights do not shrink
  the loss after T_d (a batch mean would, to about a third on Step-10).
* L_sep (eq. 4.12): supervised contrastive loss on the L2-normalised penultimate features
  of the adversarial examples, temperature ``temperature`` (0.1; the paper does not
  state it), computed by the ``supcon`` kernel dispatch; lambda = ``lam`` (1.0, Fig. 4.6).
* L, the prediction loss, is the run's ``--loss``: SRAT-CE (default), SRAT-Focal
  (``--loss focal``), SRAT-LDAM (``--loss ldam``).
* The adversary is the run's (default PGD).

L_sep reads the engine's adversarial view (``reads = ("adversarial",)``): the features of
x' with the batch's hard labels. Under PGD-AT that view is the trained forward pass itself.
When another plugin changed the trained rows (Imb-Mix mixes them, TRADES trains on the clean
batch), the engine adds x' to the pass of the adversarial rows (one BatchNorm batch with
Imb-Mix's mixed rows, updating the running statistics once) or runs the adversarial pass
TRADES needs anyway. The class weights apply to the trained rows (the target-weighted class
weight for soft labels) and are computed from ``state.class_counts``, the class counts
actually trained on (with Imb-Mix: n_c (1 + t_c)).

Paper's numbers (Table 4.2; ResNet-18, 200 epochs, PGD-10 training, PGD-20 evaluation,
CIFAR-10 Step-100), robust accuracy of the under-represented classes: CE 1.62, DRCB-LDAM
16.25, SRAT-LDAM 18.89; their standard accuracy: CE 9.03, SRAT-Focal 51.83. robx's
measurements are in docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx.core.hookspecs import hookimpl
from robx.core.state import ClassPolicy, Step, TrainState
from robx.kernels import supcon
from robx.plugins.common import class_balanced_weights, deferred_start_epoch


class SRAT:
    """SRAT: deferred class-balanced weights + feature separation loss (Wang, ch. 4)."""

    name = "srat"
    policy = ("class_weights",)
    reads = ("adversarial",)
    weighted_mean = True

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
    def class_policy(self, state: TrainState) -> ClassPolicy:
        o = self.options
        if state.epoch < deferred_start_epoch(state.num_epochs, o.start, o.start_epoch):
            return ClassPolicy()
        return ClassPolicy(class_weights=class_balanced_weights(state.class_counts, o.beta))

    @hookimpl
    def extra_loss(self, step: Step, state: TrainState) -> torch.Tensor | None:
        if self.options.lam == 0:
            return None
        assert step.adv_features is not None
        z = F.normalize(step.adv_features.float(), dim=1)
        return self.options.lam * supcon(z, step.labels, self.options.temperature)
