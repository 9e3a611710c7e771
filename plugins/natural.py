"""Natural (standard) training: no adversary."""

from __future__ import annotations

import torch

from robx import Plugin, Step, hookimpl


class Natural(Plugin):
    """Natural training: the model trains on clean inputs (the adversary is the identity)."""

    name = "natural"
    identity_adversary = True

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        return step.x
