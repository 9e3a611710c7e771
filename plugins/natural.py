"""Natural (standard) training: no adversary."""

from __future__ import annotations

import torch

from robx.core.hookspecs import hookimpl
from robx.core.state import Step


class Natural:
    """Natural training: the model trains on clean inputs (the adversary is the identity)."""

    name = "natural"
    identity_adversary = True

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        return step.x
