"""SRAT: Separable Reweighted Adversarial Training (Wang, dissertation ch. 4).

Objective (eq. 4.13):  min_theta 1/n sum_i max_{x'_i} w_i L(f(x'_i), y_i) + lambda L_sep(x'_i)

A recipe: ``srat`` = ``drw`` (the deferred class-balanced weights w_i) + ``separation``
(L_sep), the same two primitives a user can select alone; ``srat.lam`` and
``srat.temperature`` set the separation's, ``srat.beta``, ``srat.start`` and
``srat.start_epoch`` the deferred weights'.

* w_i: class-balanced weights (effective number, beta 0.9999) of y_i, applied only from
  epoch T_d = ``start`` x epochs (deferred schedule, Algorithm 4.1; default 0.8). The
  weighted term is averaged over the rows' weights, sum_i w_i L_i / sum_i w_i: Algorithm
  4.1 writes 1/N sum_i w_i L_i, but its deferred schedule is LDAM-DRW's [10], whose code
  computes it as ``F.cross_entropy(weight=w)`` (normalised by the weights); no SRAT code is
  public. So SRAT-LDAM and DRCB-LDAM differ by L_sep alone, and the weights do not shrink
  the loss after T_d (a batch mean would, to about a third on Step-10).
* L_sep (eq. 4.12): supervised contrastive loss on the L2-normalised penultimate features
  of the adversarial examples, temperature ``temperature`` (0.1; the paper does not
  state it), computed by the ``supcon`` kernel dispatch; lambda = ``lam`` (1.0, Fig. 4.6)
  (:mod:`robx.plugins.separation`).
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

from robx import Plugin, check_ranges


class SRAT(Plugin):
    """SRAT: deferred class-balanced weights + feature separation loss (Wang, ch. 4)."""

    name = "srat"
    parts = ("drw", "separation")
    routes = {"lam": "separation.lam", "temperature": "separation.temperature",
              "beta": "drw.beta", "start": "drw.start", "start_epoch": "drw.start_epoch"}

    @dataclass
    class Options:
        lam: float = 1.0
        temperature: float = 0.1
        beta: float = 0.9999
        start: float = 0.8
        start_epoch: int | None = None

        def __post_init__(self) -> None:  # the parts check again; this names srat's options
            check_ranges(self, positive=("temperature",), non_negative=("lam",), fractions=("beta", "start"))
