"""One projected-gradient step; the torch reference (the ground truth for fused versions)."""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["linf", "l2"]
_TINY = 1e-12


def per_sample(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (batch,) budget as a tensor broadcastable against ``like``."""
    shape = (batch,) + (1,) * (like.dim() - 1)
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.to(like).reshape(1).expand(batch).reshape(shape)
        if value.shape != (batch,):
            raise ValueError(f"per-sample budget must have shape ({batch},), got {tuple(value.shape)}")
        return value.to(like).reshape(shape)
    return torch.full(shape, float(value), dtype=like.dtype, device=like.device)


def pgd_step_reference(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: Norm = "linf",
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """x' <- Proj_{B(x, eps) ∩ box}(x' + alpha * dir(g)) (Madry et al. 2018, eq. 2.1).

    ``dir(g)`` is ``sign(g)`` for Linf and ``g / ||g||_2`` per sample for L2. Coordinates
    where ``mask`` is False get no step (the gradient is masked before the L2 norm).
    Projection onto the ball then clamping to the box ``bounds`` (the task's input range:
    [0, 1] for pixels, (-inf, inf) for none) stays inside the ball because ``x_orig`` itself
    lies in the box (clamping moves no coordinate away from it).
    """
    batch = x_adv.shape[0]
    eps_t = per_sample(eps, batch, x_adv)
    alpha_t = per_sample(alpha, batch, x_adv)
    if mask is not None:
        grad = grad * mask
    if norm == "linf":
        direction = grad.sign()
        delta = x_adv + alpha_t * direction - x_orig
        delta = torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    elif norm == "l2":
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(_TINY).view_as(eps_t)
        delta = x_adv + alpha_t * grad / grad_norm - x_orig
        delta_norm = delta.flatten(1).norm(dim=1).view_as(eps_t)
        delta = delta * (eps_t / delta_norm.clamp_min(_TINY)).clamp(max=1.0)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return (x_orig + delta).clamp(*bounds)
