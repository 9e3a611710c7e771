"""Weight averages (SWA, EMA, FAWA) kept as plain data, and the evaluated model built from one.

A plugin that owns :func:`robx.core.hookspecs.averaged_weights` keeps a
:class:`WeightAverage` and saves it in its ``state_dict()`` as :meth:`WeightAverage.to_state`
(tensors and an int, so checkpoints hold plain data); it answers with its parameters after training; the
engine builds the evaluated model from them (:func:`with_parameters`). Its BatchNorm
statistics are the owner's choice (:data:`BatchNormSource`): held in the answer (averaged, or
the last iterate's, :func:`evaluated_average`), or else recomputed by the engine on the
distribution the model trained on (:func:`cumulative_batchnorm` around the training data
path; ``robx.core.engine.averaged_eval_model``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from robx.core.errors import RobxError

BatchNormSource = Literal["recompute", "average", "last"]
"""Where an evaluated weight average's BatchNorm statistics come from: ``"recompute"``d by
the engine through the training data path (SWA's ``update_bn``, on the trained
distribution), ``"average"``d with the weights (CFA's FAWA), or the ``"last"`` iterate's
running statistics (the EMA of Gowal et al. 2020 / Rebuffi et al. 2021: their code evaluates
the averaged parameters with the training network's state)."""


def _floating_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm's running mean and variance (its batch counter is an integer and is left out)."""
    return {name: b for name, b in model.named_buffers() if b.is_floating_point()}


def _averaged_tensors(model: torch.nn.Module, with_buffers: bool) -> dict[str, torch.Tensor]:
    """The parameters, and with ``with_buffers`` the floating-point buffers (BatchNorm's
    running mean and variance; its batch counter is an integer and is left out)."""
    tensors = dict(model.named_parameters())
    if with_buffers:
        tensors.update(_floating_buffers(model))
    return tensors


@dataclass
class WeightAverage:
    """A running average of a model's parameters, and optionally of its floating-point
    buffers (CFA's FAWA averages BatchNorm statistics with the weights; the other averages
    have theirs recomputed by the engine)."""

    parameters: dict[str, torch.Tensor]
    count: int = 1

    @classmethod
    def of(cls, model: torch.nn.Module, with_buffers: bool = False) -> WeightAverage:
        return cls({name: t.detach().clone() for name, t in _averaged_tensors(model, with_buffers).items()})

    @torch.no_grad()
    def add(self, model: torch.nn.Module, decay: float | None = None) -> None:
        """Equal-weight average (SWA) or, with ``decay``, an exponential moving average, of
        the tensors this average holds."""
        weight = (1.0 - decay) if decay is not None else 1.0 / (self.count + 1)
        current = _averaged_tensors(model, with_buffers=True)
        for name, average in self.parameters.items():
            average.lerp_(current[name].detach(), weight)
        self.count += 1

    def to_state(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WeightAverage:
        return cls(dict(state["parameters"]), int(state["count"]))


def add_to_average(average: WeightAverage | None, model: torch.nn.Module,
                   decay: float | None = None, with_buffers: bool = False) -> WeightAverage:
    """Start an average with ``model`` (``average`` is None) or add ``model`` to it."""
    if average is None:
        return WeightAverage.of(model, with_buffers)
    average.add(model, decay=decay)
    return average


def saved_average(average: WeightAverage | None) -> dict[str, Any] | None:
    """An average as plain data for a plugin's ``state_dict()`` (None before it starts)."""
    return None if average is None else average.to_state()


def restored_average(saved: dict[str, Any] | None) -> WeightAverage | None:
    """The average :func:`saved_average` saved."""
    return None if saved is None else WeightAverage.from_state(saved)


def evaluated_average(average: WeightAverage | None, model: torch.nn.Module,
                      batchnorm: BatchNormSource) -> dict[str, torch.Tensor]:
    """The answer to ``averaged_weights`` for an average kept with :func:`add_to_average`
    (``with_buffers`` when ``batchnorm`` is ``"average"``): its tensors, plus the last
    iterate's (``model``'s) BatchNorm statistics when ``batchnorm`` is ``"last"``."""
    if average is None:
        raise RobxError("no weight average was taken (training ended before the average's start epoch)")
    tensors = dict(average.parameters)
    if batchnorm == "last":
        tensors.update((name, b.detach().clone()) for name, b in _floating_buffers(model).items())
    return tensors


def with_parameters(model: torch.nn.Module, parameters: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` whose parameters, and the buffers ``parameters`` holds, are
    ``parameters``' (the other buffers stay the model's)."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in copied.named_parameters():  # every parameter: a missing one is a KeyError
            p.copy_(parameters[name])
        for name, b in copied.named_buffers():
            if name in parameters:
                b.copy_(parameters[name])
    return copied


def holds_buffers(model: torch.nn.Module, parameters: dict[str, torch.Tensor]) -> bool:
    """True when an average holds the model's floating-point buffers (BN statistics)."""
    buffers = _floating_buffers(model)
    return bool(buffers) and all(name in parameters for name in buffers)


@contextmanager
def cumulative_batchnorm(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Reset every BatchNorm's running statistics and make them a cumulative average
    (momentum ``None``) of the train-mode passes inside the block, as
    ``torch.optim.swa_utils.update_bn`` does; momentum is restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    try:
        yield model
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
