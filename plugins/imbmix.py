"""Imb-Mix: supplementary adversarial examples + Remix mixing + SWA (Wang, dissertation ch. 5).

A recipe: ``imbmix`` = ``copies`` (step 1) + ``remix`` (step 2) + ``swa`` (step 4), the
primitives a user can also select alone; its options are theirs (``imbmix.a``,
``imbmix.copies`` and ``imbmix.max_copies`` are ``copies.a``, ``.count``, ``.max_count``;
``imbmix.kappa``, ``.tau``, ``.concentration`` and ``.remix_counts`` are remix's;
``imbmix.swa_start`` and ``.batchnorm`` are ``swa.start`` and ``.batchnorm``; ``imbmix.swa =
false`` leaves SWA out).

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
   (``remix_counts = "trained"``: the counts the run trains on). The default t makes the
   classes nearly balanced
   (Step-10: 1000 vs 900), so the rule rarely fires and the labels are mostly Mixup's;
   ``remix_counts = "dataset"`` uses the training set's counts n_c instead (robx's first
   version, where the rule fires for every majority-minority pair).
3. Loss (eq. 5.5): cross-entropy on the mixed (soft) labels (the task's default loss, or
   ``--loss``).
4. SWA (section 5.3.3) from ``swa_start`` x epochs: its ``swa`` part owns the evaluated
   model (``averaged_weights``), BatchNorm recomputed by the engine through the training data
   path as for :mod:`robx.plugins.swa`, the SWA paper's choice the dissertation cites
   (``batchnorm = "average"`` averages the running statistics with the weights, ``"last"``
   keeps the last iterate's); ``swa = false`` turns it off (the ablation; the last iterate
   is evaluated).

The copies grow every epoch by t_c n_c examples of each minority class, so its ``copies`` part
owns the class counts the run trains on: ``state.class_counts`` = n_c (1 + t_c), which class
weights (``srat``, ``cb``, ``drw``) then use; the copies have already rebalanced the batch.

Paper's numbers (Table 5.1; CIFAR-10 Exp-10, 250 epochs): minority robust accuracy 22.57
(vanilla PGD-AT), 27.45 (Remix + AT), 30.52 (Imb-Mix). robx's measurements are in
docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robx import BatchNormSource, Plugin, check_ranges


class ImbMix(Plugin):
    """Imb-Mix: minority adversarial copies (eq. 5.2), Remix mixing, SWA (Wang, ch. 5)."""

    name = "imbmix"
    parts = ("copies", "remix", "swa")
    routes = {"a": "copies.a", "copies": "copies.count", "max_copies": "copies.max_count",
              "kappa": "remix.kappa", "tau": "remix.tau", "concentration": "remix.concentration",
              "remix_counts": "remix.counts", "swa": "swa", "swa_start": "swa.start", "batchnorm": "swa.batchnorm"}
    moved_state = {"average": "swa"}  # checkpoints from before imbmix was a recipe

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
        remix_counts: Literal["trained", "dataset"] = "trained"
        batchnorm: BatchNormSource = "recompute"

        def __post_init__(self) -> None:  # the parts check again; this names imbmix's options
            check_ranges(self, at_least_one=("max_copies",), positive=("kappa", "concentration"),
                         non_negative=("a",), fractions=("tau", "swa_start"))
            if self.copies is not None and self.copies < 1:
                raise ValueError(f"copies must be >= 1 (or unset), got {self.copies}")
