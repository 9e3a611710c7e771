"""Fused inner-loop ops behind one dispatch per op.

Today every op runs its torch reference; fused Triton (CUDA) and numba (CPU)
versions plug in behind the same signatures.
"""

from __future__ import annotations

import torch

from robx.kernels.pgd_step import Norm, pgd_step_reference
from robx.kernels.supcon import supcon_reference

__all__ = ["pgd_step", "pgd_step_reference", "supcon", "supcon_reference", "implementation_name"]


def implementation_name(op: str, device: torch.device | str) -> str:
    """Which implementation of ``op`` runs for tensors on ``device``."""
    del op, device
    return "torch-reference"


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: Norm = "linf",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One projected-gradient step; see :func:`pgd_step_reference` for the contract."""
    return pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, mask)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss; see :func:`robx.kernels.supcon.supcon_reference`."""
    return supcon_reference(features, labels, temperature, anchor_weights)
