"""Stochastic weight averaging (Izmailov et al., UAI 2018).

theta_swa <- (theta_swa * n + theta) / (n + 1) at the end of every epoch from the start
epoch (``start`` x epochs, default 0.75); after training, BatchNorm statistics are
recomputed for the averaged weights on the clean training data
(``torch.optim.swa_utils.update_bn``) and the averaged model is the one evaluated
(``state.eval_model``). The running average lives in the stash as plain tensors, so it
is checkpointed and resumes exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.swa_utils import update_bn

from robx.core.data import to_unit_float
from robx.core.errors import RobxError
from robx.core.hookspecs import hookimpl
from robx.core.state import StashKey, TrainState


@dataclass
class WeightAverage:
    """A running average of a model's parameters (buffers are recomputed at the end).

    Kept in the stash as :meth:`to_state` (tensors and an int), so checkpoints hold plain data.
    """

    parameters: dict[str, torch.Tensor]
    count: int = 1

    @classmethod
    def of(cls, model: torch.nn.Module) -> WeightAverage:
        return cls({name: p.detach().clone() for name, p in model.named_parameters()})

    @torch.no_grad()
    def add(self, model: torch.nn.Module, decay: float | None = None) -> None:
        """Equal-weight average (SWA) or, with ``decay``, an exponential moving average."""
        weight = (1.0 - decay) if decay is not None else 1.0 / (self.count + 1)
        for name, p in model.named_parameters():
            self.parameters[name].lerp_(p.detach(), weight)
        self.count += 1

    def to_state(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WeightAverage:
        return cls(state["parameters"], state["count"])


AVERAGE = StashKey[dict]("swa.average")


def add_to_average(state: TrainState, key: StashKey[dict], decay: float | None = None) -> None:
    """Start the average under ``key`` with the model, or add the model to it."""
    if key not in state.stash:
        state.stash[key] = WeightAverage.of(state.model).to_state()
    else:
        average = WeightAverage.from_state(state.stash[key])
        average.add(state.model, decay=decay)
        state.stash[key] = average.to_state()


def average_from_epoch(state: TrainState, key: StashKey[dict], start: float) -> None:
    """At an epoch end from ``start`` x epochs on, add the model to the average under ``key``."""
    if state.epoch < min(int(round(start * state.num_epochs)), state.num_epochs - 1):
        return
    add_to_average(state, key)


def clean_batches(state: TrainState, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The clean training images in fixed order, for BatchNorm recomputation."""
    x = state.data.x_train
    for start in range(0, len(x), batch_size):
        yield to_unit_float(x[start : start + batch_size]).to(state.device)


def finish_average(state: TrainState, average_state: dict[str, Any]) -> None:
    """Load the averaged weights into a copy of the model, recompute its BN statistics,
    and hand it to evaluation."""
    if state.eval_model is not None:
        raise RobxError("two selected plugins replace the evaluated model (swa and ema); select one")
    average = WeightAverage.from_state(average_state)
    model = copy.deepcopy(state.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(average.parameters[name])
    update_bn(clean_batches(state), model, device=state.device)
    model.eval()
    state.eval_model = model


class SWA:
    """Stochastic weight averaging from a start epoch, BN recomputed (Izmailov et al. 2018)."""

    name = "swa"

    @dataclass
    class Options:
        start: float = 0.75

    def __init__(self, options: Options) -> None:
        self.options = options

    @hookimpl
    def epoch_end(self, state: TrainState) -> None:
        average_from_epoch(state, AVERAGE, self.options.start)

    @hookimpl
    def train_end(self, state: TrainState) -> None:
        finish_average(state, state.stash[AVERAGE])
