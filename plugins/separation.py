"""Feature separation loss: supervised contrastive learning on adversarial features (Wang,
dissertation eq. 4.12; Khosla et al., NeurIPS 2020).

L_sep = lam * SupCon(z, y), with z the L2-normalised penultimate features of the adversarial
examples x' and y their hard labels: for each anchor i, the mean over its positives p (the
other rows of its class) of -log( exp(z_i . z_p / T) / sum_{a != i} exp(z_i . z_a / T) ).
T = ``temperature`` (0.1; the dissertation does not state it), lam = ``lam`` (1.0, Fig. 4.6).
Computed by the ``supcon`` kernel dispatch (numba on CPU, Triton on CUDA, torch otherwise).

It reads the engine's adversarial view (``reads = ("adversarial",)``): under PGD-AT that view
is the trained forward pass itself; when another plugin changed the trained rows (mixing, or
TRADES' clean rows) the engine adds x' to its passes (docs/engine.md). The separation part
of ``srat``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robx import Plugin, Step, TrainState, check_ranges, hookimpl
from robx.kernels import supcon


class Separation(Plugin):
    """Feature separation: supervised contrastive loss on adversarial features (Wang, eq. 4.12)."""

    name = "separation"
    reads = ("adversarial",)

    @dataclass
    class Options:
        lam: float = 1.0
        temperature: float = 0.1

        def __post_init__(self) -> None:
            check_ranges(self, positive=("temperature",), non_negative=("lam",))

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def extra_loss(self, step: Step, state: TrainState) -> torch.Tensor | None:
        if self.options.lam == 0:
            return None
        assert step.adv_features is not None
        z = F.normalize(step.adv_features.float(), dim=1)
        return self.options.lam * supcon(z, step.labels, self.options.temperature)
