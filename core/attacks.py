"""Projected gradient attacks (Madry et al. 2018) with per-sample budgets.

Every attack runs the model in eval mode (BatchNorm uses running statistics, so an
example's perturbation does not depend on its batch; TRADES issue #3) and restores the
model's mode afterwards. Gradients are taken with ``torch.autograd.grad`` with respect to
the input only, so parameter ``.grad`` buffers are never touched, and the parameters stop
requiring gradients while the attack runs (:func:`attack_mode`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from robx.core.errors import OptionError
from robx.kernels import pgd_step
from robx.kernels.pgd_step import Norm, per_sample

if TYPE_CHECKING:
    from robx.core.task import Task

#: ``loss_fn(logits, labels) -> per-sample loss``; the attack ascends it (descends if targeted).
AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """robx models return ``(features, logits)``; plain classifiers return logits."""
    out = model(x)
    return out[1] if isinstance(out, tuple) else out


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{k != y} z_k - z_y (the "CW-Linf" attack ascends it)."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true_logit


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, and the parameters not requiring gradients: an attack differentiates with
    respect to its input only. Eager autograd skips the weight gradients anyway; a model
    compiled by ``torch.compile`` does not (its compiled backward returns every gradient its
    graph was traced with: measured 0.69x eager for PreAct ResNet-18 PGD-10 AT on CPU), so it
    needs them off to trace an input-only backward. The flags are restored afterwards."""
    wanted = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in wanted:
        parameter.requires_grad_(False)
    try:
        with eval_mode(model):
            yield model
    finally:
        for parameter, requires_grad in wanted:
            parameter.requires_grad_(requires_grad)


def check_budget(eps: float | None, norm: str, bounds: tuple[float, float], example_shape: tuple[int, ...],
                 what: str) -> None:
    """One :class:`OptionError` line for a budget that reaches past the input box: Linf eps
    above its width, or L2 eps above its diagonal, allows every input in the box, so the
    "robust" accuracy measures nothing about robustness."""
    low, high = bounds
    if eps is None or not math.isfinite(high - low):
        return
    width = high - low
    largest = width if norm == "linf" else width * math.sqrt(math.prod(example_shape))
    if eps > largest:
        reach = "the inputs' range" if norm == "linf" else "the diagonal of the input box"
        raise OptionError(f"{what} {eps:g} ({norm}) exceeds {reach} ({largest:g}; inputs lie in [{low:g}, {high:g}]): "
                          "the attack could reach any input; use a budget inside the box")


def random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: Norm, mask: torch.Tensor | None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Uniform in the Linf ball; for L2 a uniform direction scaled by U(0, 1) * eps."""
    if norm == "linf":
        delta = (torch.rand_like(x) * 2 - 1) * eps
    else:
        noise = torch.randn_like(x)
        if mask is not None:
            noise = noise * mask
        direction = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps)
        radius = torch.rand(eps.shape, dtype=x.dtype, device=x.device) * eps
        delta = direction * radius
    if mask is not None:
        delta = delta * mask
    return (x + delta).clamp(*bounds)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    norm: Norm = "linf",
    random_init: bool = True,
    targeted: bool = False,
    mask: torch.Tensor | None = None,
    loss_fn: AttackLoss = cross_entropy,
    x_init: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    start_scale: float = 1.0,
) -> torch.Tensor:
    """Projected gradient descent; returns the final iterate ``x'`` (detached).

    eps, alpha: a float or a per-sample tensor of shape (batch,).
    targeted: ``y`` holds target labels and the attack *descends* ``loss_fn``.
    mask: bool tensor broadcastable to ``x``; coordinates where it is False never move.
    x_init: a custom starting point (TRADES starts from x + 0.001 N(0, 1)); overrides
    ``random_init``. The first step projects it into the ball.
    bounds: the box inputs stay in (the task's ``input_bounds``; pixels [0, 1]).
    start_scale: the random start is drawn from the ball of radius ``start_scale * eps``
    (STPGD: U(-eps/10, eps/10), 0.1).
    """
    x = x.detach()
    eps_t = per_sample(eps, x.shape[0], x)
    if mask is not None:
        mask = mask.to(torch.bool).expand_as(x)
    if x_init is not None:
        x_adv = x_init.detach().clone()
    else:
        x_adv = random_start(x, eps_t * start_scale, norm, mask, bounds) if random_init else x.clone()
    sign = -1.0 if targeted else 1.0
    with attack_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(logits_of(model, x_adv), y).sum() * sign
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = pgd_step(x_adv.detach(), grad, x, eps_t.flatten(), alpha, norm, mask, bounds)
    return x_adv.detach()


def gaussian_start(x: torch.Tensor, std: float, mask: torch.Tensor | None,
                   bounds: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """x + std N(0, 1), moved only at victims: the PGD start of the TRADES and MART authors'
    code (instead of a uniform point of the ball). ``bounds``: the box the start is clamped
    to before the first gradient; ``None`` leaves it where the noise put it, as the authors'
    code does (the first step's projection brings it back into the box)."""
    start = x + std * torch.randn_like(x)
    if bounds is not None:
        start = start.clamp(*bounds)
    return start if mask is None else torch.where(mask.to(torch.bool), start, x)


Start = Literal["uniform", "gaussian", "none"]


@dataclass(frozen=True)
class Attack:
    """The run's attack on one batch, bound by the engine to everything that is not the
    adversary's choice: the model it attacks, the batch, each example's budget (the owner of
    the per-class budget decides it: ``state.class_eps``, ``state.class_alpha``), the victims (the owner of
    ``select_victims``), the input box and loss of the task, the run's steps and norm. An
    adversary chooses only what makes it the method it is: the loss it ascends, the start,
    and whether it is targeted::

        x_adv = step.attack()                                     # PGD (Madry et al.)
        x_adv = step.attack(loss=kl_to_clean, start="gaussian")   # TRADES
        x_adv = step.attack(targets=y_t)                          # FAIR-TAT, targeted

    The same budget serves victim selection (:meth:`saliency_gradient`). Precision is the
    step's (the engine binds the attack inside the step's autocast).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: torch.Tensor
    alpha: torch.Tensor
    steps: int
    norm: Norm
    bounds: tuple[float, float]
    task_loss: AttackLoss
    mask: torch.Tensor | None = None

    def on_victims(self, mask: torch.Tensor | None) -> Attack:
        """The same attack moving only the victims' coordinates."""
        return replace(self, mask=mask)

    def scaled(self, *, steps: int, step_size: float, radius: float = 1.0) -> Attack:
        """The same attack with ``steps`` steps of ``step_size`` x eps, projected onto the ball
        of ``radius`` x eps: each example keeps its own budget (its class's eps), and a
        single-step method states its step in units of it (FGSM-RS: one step of 1.25 eps;
        N-FGSM: one step of eps, radius 3 eps so that nothing is clipped)."""
        if steps < 1 or step_size <= 0 or radius <= 0:
            raise ValueError(f"scaled: steps >= 1, step_size > 0 and radius > 0, got {steps}, {step_size}, {radius}")
        return replace(self, steps=steps, alpha=self.eps * step_size, eps=self.eps * radius)

    def __call__(self, *, loss: AttackLoss | None = None, start: Start = "uniform", start_scale: float = 1.0,
                 start_std: float = 0.001, gaussian_in_box: bool = False,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        """x' (detached): PGD ascending ``loss`` (default: the task's attack loss) from
        ``start``: ``"uniform"`` in the ball of radius ``start_scale`` x eps (clamped to the
        input box), ``"gaussian"`` x + ``start_std`` N(0, 1) (TRADES, MART; clamped to the box
        before the first gradient only with ``gaussian_in_box``: the authors' code is not),
        ``"none"`` x itself. With ``targets`` the attack descends ``loss(logits, targets)``
        toward those classes."""
        x_init = (gaussian_start(self.x, start_std, self.mask, self.bounds if gaussian_in_box else None)
                  if start == "gaussian" else None)
        return pgd(self.model, self.x, self.y if targets is None else targets, eps=self.eps, alpha=self.alpha,
                   steps=self.steps, norm=self.norm, random_init=start == "uniform", targeted=targets is not None,
                   mask=self.mask, loss_fn=loss or self.task_loss, x_init=x_init, bounds=self.bounds,
                   start_scale=start_scale)

    def saliency_point(self, steps: int, loss: AttackLoss | None = None) -> torch.Tensor:
        """Where victim selection reads its gradient (:func:`saliency_point`, STPGD)."""
        return saliency_point(self.model, self.x, self.y, eps=self.eps, alpha=self.alpha, steps=steps,
                              loss_fn=loss or self.task_loss, bounds=self.bounds)

    def saliency_gradient(self, steps: int) -> torch.Tensor:
        """dL/dx at :meth:`saliency_point` (:func:`saliency_gradient`)."""
        return saliency_gradient(self.model, self.x, self.y, eps=self.eps, alpha=self.alpha, steps=steps,
                                 loss_fn=self.task_loss, bounds=self.bounds)

    def salient_units(self, task: Task, fraction: float, saliency_steps: int) -> torch.Tensor:
        """The mask of the ``fraction`` of the task's victim units with the largest saliency
        on this batch (:func:`salient_unit_mask`)."""
        return salient_unit_mask(task, self.model, self.x, self.y, eps=self.eps, alpha=self.alpha,
                                 fraction=fraction, saliency_steps=saliency_steps)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: Norm = "linf",
    loss_fn: AttackLoss = cross_entropy,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): PGD with one full step, no random start."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_init=False, loss_fn=loss_fn)


def saliency_point(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | torch.Tensor,
                   alpha: float | torch.Tensor, steps: int, loss_fn: AttackLoss,
                   bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """The input at which victim selection reads its gradient (STPGD, Liu et al. 2022).

    ``steps = 1``: the clean input. ``steps > 1``: as the authors' code (Adv-ST,
    ``find_type='saliency'``), ``steps - 1`` Linf PGD iterations over the whole input, each
    from the previous point plus U(-eps/10, eps/10) noise, and that noise once more on the
    last point. BatchNorm in eval mode; no parameter gradients. Detached.
    """
    x = x.detach()
    eps_t = per_sample(eps, x.shape[0], x)
    point = x
    with attack_mode(model):
        for step in range(steps):
            if steps > 1:
                point = point + (torch.rand_like(x) * 2 - 1) * eps_t / 10
            if step == steps - 1:
                break
            point = point.detach().requires_grad_(True)
            loss = loss_fn(logits_of(model, point), y).sum()
            (grad,) = torch.autograd.grad(loss, point)
            point = pgd_step(point.detach(), grad, x, eps_t.flatten(), alpha, "linf", None, bounds)
    return point.detach()


def saliency_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | torch.Tensor,
                      alpha: float | torch.Tensor, steps: int, loss_fn: AttackLoss,
                      bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """The input gradient victim selection ranks units by: dL/dx at :func:`saliency_point`."""
    point = saliency_point(model, x, y, eps=eps, alpha=alpha, steps=steps, loss_fn=loss_fn,
                           bounds=bounds).requires_grad_(True)
    with attack_mode(model):
        loss = loss_fn(logits_of(model, point), y).sum()
        (grad,) = torch.autograd.grad(loss, point)
    return grad


def salient_unit_mask(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      eps: float | torch.Tensor, alpha: float | torch.Tensor, fraction: float,
                      saliency_steps: int) -> torch.Tensor:
    """The ``fraction`` of the task's victim units (``task.unit_saliency`` / ``unit_mask``:
    what a unit is, the task knows) with the largest saliency at :func:`saliency_gradient`,
    as a mask for ``x``; victim selection (``topk``, MinGRE) and the tasks' evaluation
    attacks that choose victims use it."""
    from robx.kernels import topk_victims

    grad = saliency_gradient(model, x, y, eps=eps, alpha=alpha, steps=saliency_steps, loss_fn=task.attack_loss,
                             bounds=task.input_bounds)
    saliency = task.unit_saliency(grad)
    return task.unit_mask(topk_victims(saliency, max(1, round(fraction * saliency.shape[1]))), x)
