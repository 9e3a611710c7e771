"""Free adversarial training (Shafahi et al., "Adversarial training for free!", NeurIPS
2019): each minibatch is replayed m times, and every replay's one backward pass updates
both the model and the perturbation.

Per replay (the authors' ``main_free.py``): the model trains on clamp(x + delta, 0, 1);
the same backward gives g = grad_delta L, and delta <- clip_[-eps, eps](delta + eps sign(g))
(``fgsm_step`` = ``clip_eps``) for the next replay. delta is one tensor of the batch's shape
carried across replays, batches and epochs (their ``global_noise_data``, zeros at the
start); a smaller last batch uses its first rows. A replay costs one forward-backward pass,
so an epoch of m replays costs m passes a batch; the authors train for epochs / m (the
paper's CIFAR-10 runs: m = 8), which robx leaves to ``--epochs``. Where x + delta leaves the
input box the gradient with respect to delta is zero (their in-place clamp), so that
coordinate does not move.

The engine replays the batch (``batch_replays``) and keeps the training backward's gradient
with respect to the trained rows (``reads_input_gradient``); the budget is each example's own
(``step.attack.eps``: ``class_eps[y]`` from DAFA, FAIR-TAT or CFA), applied to the rows of the
carried delta the batch uses. Free AT's adversary is its carried delta, so it trains on x'
itself: a plugin that trains on the clean batch (TRADES) or changes the rows (Imb-Mix) is
refused at the first step. Linf only, as in the paper.

Under several processes (torchrun) delta is the global batch's, as in the authors'
single-process code: each process updates the rows of its slice and every replay gathers
them (``robx.global_rows``), so each process holds and checkpoints the same whole delta and
the run trains the weights of one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robx import Plugin, RobxError, Step, TrainState, check_ranges, global_rows, hookimpl


class Free(Plugin):
    """Free AT (Shafahi et al. 2019): m replays of each batch, the perturbation carried over."""

    name = "free"
    reads_input_gradient = True

    @dataclass
    class Options:
        replays: int = 8  # m (the paper's CIFAR-10 value)
        step_size: float = 1.0  # the perturbation's step as a multiple of eps (fgsm_step = clip_eps)

        def __post_init__(self) -> None:
            check_ranges(self, at_least_one=("replays",), positive=("step_size",))

    def __init__(self, options: Options) -> None:
        self.options = options
        self.delta: torch.Tensor | None = None  # the carried perturbation (global_noise_data)
        self.rows = slice(0)  # this process's rows of the global batch (all of them in one process)

    @hookimpl
    def check_run(self, state: TrainState) -> None:
        if state.config.norm != "linf":
            raise RobxError(f"free is an Linf method (its sign step); the run's norm is '{state.config.norm}'")

    @hookimpl
    def batch_replays(self) -> int:
        return self.options.replays

    def _current(self, step: Step) -> torch.Tensor:
        """The carried delta's rows for this process's slice of the batch, within each
        example's budget (a smaller batch uses the first rows; zeros where there are none yet)."""
        x, attack = step.x, step.attack
        assert attack is not None
        everyone, self.rows = global_rows(step.y)  # where this slice lies in the global batch
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = x.new_zeros(len(everyone), *x.shape[1:])
        self.delta = self.delta.to(x.device)
        if len(self.delta) < len(everyone):
            self.delta = torch.cat([self.delta, self.delta.new_zeros(len(everyone) - len(self.delta), *x.shape[1:])])
        return self._bounded(self.delta[self.rows], step)

    @staticmethod
    def _bounded(delta: torch.Tensor, step: Step) -> torch.Tensor:
        attack = step.attack
        assert attack is not None
        eps = attack.eps.view(-1, *([1] * (step.x.dim() - 1)))
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
        return delta if attack.mask is None else delta * attack.mask

    @hookimpl
    def generate_adversary(self, step: Step) -> torch.Tensor:
        assert step.attack is not None
        low, high = step.attack.bounds
        return (step.x + self._current(step)).clamp(low, high)

    @hookimpl
    def after_step(self, step: Step) -> None:
        if step.rows_source != "adversarial" or step.rows_changed or step.input_gradient is None:
            raise RobxError("free trains on its own x' and updates it from the gradient of that loss; another selected "
                            "plugin trains on the clean batch or changes the rows (trades, imbmix): drop one of them")
        attack = step.attack
        assert attack is not None and self.delta is not None
        delta = self._bounded(self.delta[self.rows], step)
        low, high = attack.bounds
        inside = ((step.x + delta) >= low) & ((step.x + delta) <= high)  # the clamp passes no gradient elsewhere
        direction = torch.where(inside, step.input_gradient.sign(), 0.0)
        if attack.mask is not None:
            direction = direction * attack.mask
        eps = attack.eps.view(-1, *([1] * (step.x.dim() - 1)))
        moved = torch.maximum(torch.minimum(delta + self.options.step_size * eps * direction, eps), -eps).detach()
        # every process's updated slice, so that each holds (and checkpoints) the same whole delta
        whole, _ = global_rows(moved)
        self.delta[: len(whole)] = whole

    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.delta = state["delta"]
