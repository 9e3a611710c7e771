"""Attack plans: an attack registered by name (:class:`AttackSpec`) with its settings
(:class:`AttackPlan`), checked once (``Registry.plan_attack``) and bound to a model and a
batch as the :class:`robx.core.attacks.Attack` every caller runs: training's adversaries,
validation, ``robx eval``, ``robx audit`` and the Python API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from robx.core.attacks import Attack
from robx.kernels.pgd_step import Norm

if TYPE_CHECKING:
    from robx.core.task import Task


def per_example(class_eps: torch.Tensor, class_alpha: torch.Tensor, labels: torch.Tensor,
                labels_per_target: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's (eps, alpha): its class's. Where the task labels every target of an
    example, the example has no one class; the budget is then the same for all classes."""
    if not labels_per_target:
        return class_eps[labels], class_alpha[labels]
    rows = labels.shape[0]
    return class_eps[0].expand(rows), class_alpha[0].expand(rows)


#: ``run(attack, plan, task) -> x'``: a registered attack on one bound batch
AttackRun = Callable[["Attack", "AttackPlan", "Task"], torch.Tensor]

#: ``register(name, run, *, title, iterative=True, options=None, needs=None, tasks=())``, the
#: argument of ``register_attacks``
RegisterAttack = Callable[..., None]


@dataclass(frozen=True)
class AttackSpec:
    """An attack registered by name (``register_attacks``). ``run(attack, plan, task)``
    returns x' for the bound batch ``attack``; ``options``: a dataclass of the attack's own
    settings (``plan.options``); ``needs``: ``(module, how to install it)`` for an attack
    that runs another library's code; ``tasks``: the tasks it applies to beyond those that
    name it in ``Task.attacks``; ``iterative``: whether steps and alpha apply."""

    name: str
    run: AttackRun
    title: str
    origin: str
    iterative: bool = True
    options: type | None = None
    needs: tuple[str, str] | None = None
    tasks: tuple[str, ...] = ()


def budget_text(value: float) -> str:
    """A budget as people write it: k/255 where it is one (within float rounding), else %.4g."""
    levels = value * 255
    if levels >= 0.5 and abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{value:.4g}"


@dataclass(frozen=True)
class AttackPlan:
    """A registered attack with its settings, not yet bound to a model and a batch: what
    validation, ``robx eval``, ``robx audit`` and the Python API run, built and checked in
    one place (:meth:`robx.core.registry.Registry.plan_attack`). :meth:`bind` turns it into
    the :class:`Attack` of a batch, the same object training's adversaries call.

    ``class_budget``: per-class (eps, alpha) tensors in place of ``eps`` and ``alpha`` for
    every class (validation under the run's per-class budgets)."""

    spec: AttackSpec
    eps: float
    alpha: float
    steps: int
    norm: Norm = "linf"
    seed: int = 0
    options: Any = None
    class_budget: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def bind(self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> Attack:
        """The attack on one batch: each example's budget (its class's under ``class_budget``),
        the task's input box and attack loss."""
        if self.class_budget is not None:
            eps, alpha = per_example(*(t.to(x.device) for t in self.class_budget), labels, task.labels_per_target)
        else:
            rows = x.shape[0]
            eps = torch.full((rows,), float(self.eps), dtype=x.dtype, device=x.device)
            alpha = torch.full((rows,), float(self.alpha), dtype=x.dtype, device=x.device)
        return Attack(model=model, x=x, y=y, eps=eps, alpha=alpha, steps=self.steps, norm=self.norm,
                      bounds=task.input_bounds, task_loss=task.attack_loss)

    def __call__(self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        """x' of the batch (detached)."""
        return self.spec.run(self.bind(model, task, x, y, labels), self, task).detach()

    def own_options(self) -> dict[str, Any]:
        return {} if self.options is None else dataclasses.asdict(self.options)

    def describe(self) -> str:
        own = "".join(f" {key} {value:.4g}" if isinstance(value, float) else f" {key} {value}"
                      for key, value in self.own_options().items())
        eps = "per-class" if self.class_budget is not None else budget_text(self.eps)
        if not self.spec.iterative:
            return f"{self.spec.title} {self.norm} eps={eps}{own}"
        alpha = "per-class" if self.class_budget is not None else budget_text(self.alpha)
        return f"{self.spec.title}-{self.steps}{own} {self.norm} eps={eps} alpha={alpha}"

    @property
    def tag(self) -> str:
        steps = str(self.steps) if self.spec.iterative else ""
        own = "".join(f"-{key}{value:.4g}" if isinstance(value, float) else f"-{key}{value}"
                      for key, value in self.own_options().items())
        return f"{self.name}{steps}{own}-{self.norm}-eps{self.eps:.4g}"

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "eps": self.eps, "alpha": self.alpha, "steps": self.steps,
                                     "norm": self.norm, "seed": self.seed, **self.own_options(),
                                     "description": self.describe()}
        if self.class_budget is not None:
            described["class_eps"] = [round(v, 6) for v in self.class_budget[0].tolist()]
            described["class_alpha"] = [round(v, 6) for v in self.class_budget[1].tolist()]
        return described
