"""The shape every robx model has: ``normalize -> body -> features -> linear head``.

Models are registered through the ``register_models`` hook as builders
``build(spec: ModelInput) -> nn.Module`` (built-ins in ``robx.plugins.models``). Each takes
inputs in the task's input space (pixels in [0, 1] for images; normalisation is a layer
inside, so attacks and budgets live in input space) and returns ``(features, outputs)``;
features are the penultimate representation that feature-space losses read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx.core.task import ModelInput


class Normalize(nn.Module):
    """(x - mean) / std per channel (the first dimension of an example of rank ``rank``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], rank: int = 3) -> None:
        super().__init__()
        shape = (1, -1) + (1,) * (rank - 1)  # (1, C, 1, 1) for images, as in older checkpoints
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormedLinear(nn.Module):
    """Cosine head: cos(feature, w_c) for each class c, no bias (the LDAM-DRW authors'
    ``NormedLinear``); outputs lie in [-1, 1], so the loss brings its own scale."""

    def __init__(self, feature_dim: int, num_outputs: int) -> None:
        super().__init__()
        # one unit-norm column per class, uniformly oriented (as the authors initialise)
        self.weight = nn.Parameter(F.normalize(torch.empty(feature_dim, num_outputs).uniform_(-1, 1), dim=0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)


HEADS = ("linear", "cosine")


class Classifier(nn.Module):
    """``normalize -> body -> features -> head``: a linear head, or a cosine head
    (:class:`NormedLinear`), with one output per class or per regressed value."""

    def __init__(self, normalize: nn.Module, body: nn.Module, feature_dim: int, num_outputs: int,
                 head: str = "linear"):
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.feature_dim = feature_dim
        self.head = NormedLinear(feature_dim, num_outputs) if head == "cosine" else nn.Linear(feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.normalize(x))
        return features, self.head(features)


def classifier(spec: ModelInput, body: nn.Module, feature_dim: int) -> Classifier:
    """The standard wrapper around a body, normalising with the task's statistics."""
    return Classifier(Normalize(spec.mean, spec.std, len(spec.shape)), body, feature_dim, spec.outputs, spec.head)


#: ``build(spec) -> model``: what ``register_models`` registers under a name
ModelBuilder = Callable[[ModelInput], nn.Module]
#: ``register(name, build)``, the argument of a ``register_models`` hook
RegisterModel = Callable[[str, ModelBuilder], None]
