"""Fused inner-loop ops behind one dispatch per op.

``pgd_step``: the torch reference, and a numba kernel for float32 CPU tensors
(``kernels/pgd_step_numba.py``). ``supcon``: the torch reference. Set
``ROBX_KERNELS=reference`` to force the references (for comparisons and debugging).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from robx.kernels.pgd_step import Norm, pgd_step_reference
from robx.kernels.supcon import supcon_reference

__all__ = ["pgd_step", "pgd_step_reference", "supcon", "supcon_reference", "implementation_name"]


def _forced_reference() -> bool:
    return os.environ.get("ROBX_KERNELS", "").lower() == "reference"


@lru_cache(maxsize=1)
def _numba_pgd_step():
    try:
        from robx.kernels.pgd_step_numba import pgd_step_numba
    except ImportError:  # numba not installed: the reference serves
        return None
    return pgd_step_numba


def _use_numba(x: torch.Tensor) -> bool:
    return (not _forced_reference() and x.device.type == "cpu" and x.dtype == torch.float32
            and _numba_pgd_step() is not None)


def implementation_name(op: str, device: torch.device | str) -> str:
    """Which implementation of ``op`` runs for float32 tensors on ``device``."""
    device = torch.device(device)
    if op == "pgd_step" and _use_numba(torch.empty(0, device=device)):
        return "numba"
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
    if _use_numba(x_adv):
        return _numba_pgd_step()(x_adv, grad, x_orig, eps, alpha, norm, mask)
    return pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, mask)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss; see :func:`robx.kernels.supcon.supcon_reference`."""
    return supcon_reference(features, labels, temperature, anchor_weights)
