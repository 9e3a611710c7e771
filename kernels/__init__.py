"""Fused inner-loop ops behind one dispatch per op.

Each op has a torch reference (the ground truth), a Triton kernel for CUDA tensors and a
numba kernel for CPU tensors, with one signature:

- :func:`pgd_step`: one projected-gradient step, per-sample eps/alpha, Linf/L2, mask.
- :func:`supcon`: supervised contrastive loss (SRAT eq. 4.12, MinGRE UCL), differentiable.
- :func:`topk_victims`: (re)weighted saliency -> boolean top-k mask per sample.

The dispatch picks Triton for CUDA tensors, numba for CPU tensors (``pgd_step``: float32
only), and the reference otherwise or when the fused package is missing. Set
``ROBX_KERNELS=reference`` to force the references (for comparisons and debugging);
:func:`implementation_name` says which one runs, and every run records it in config.json.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import torch

from robx.kernels.pgd_step import Norm, pgd_step_reference
from robx.kernels.supcon import FusedSupCon, supcon_reference
from robx.kernels.topk_victims import topk_victims_reference

__all__ = ["pgd_step", "supcon", "topk_victims", "implementation_name", "OPS",
           "pgd_step_reference", "supcon_reference", "topk_victims_reference"]

Implementation = Literal["triton", "numba", "torch-reference"]
OPS = ("pgd_step", "supcon", "topk_victims")

# (op, implementation) -> "module:attribute" of the fused entry point, imported on first use
_FUSED = {
    ("pgd_step", "triton"): "robx.kernels.pgd_step_triton:pgd_step_triton",
    ("pgd_step", "numba"): "robx.kernels.pgd_step_numba:pgd_step_numba",
    ("supcon", "triton"): "robx.kernels.supcon_triton:TritonSupCon",
    ("supcon", "numba"): "robx.kernels.supcon_numba:NumbaSupCon",
    ("topk_victims", "triton"): "robx.kernels.topk_victims_triton:topk_victims_triton",
    ("topk_victims", "numba"): "robx.kernels.topk_victims_numba:topk_victims_numba",
}


@lru_cache(maxsize=None)
def _load(op: str, implementation: str) -> Callable | None:
    module_name, _, attribute = _FUSED[(op, implementation)].partition(":")
    if implementation == "numba" and "numba" not in sys.modules:
        # numba starts one pool of NUMBA_NUM_THREADS threads (default: every core) whose idle
        # threads spin; size it to torch's pool, which follows OMP_NUM_THREADS (torchrun sets 1
        # for several processes per machine)
        os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # triton or numba not installed: the reference serves
        return None
    return getattr(module, attribute)


def _numba_threads_like_torch() -> None:
    """numba's parallel loops take as many threads as torch's intra-op pool. A process that
    was given fewer cores (``OMP_NUM_THREADS=1``, as torchrun sets for several processes per
    machine) must not run more: numba's threads spin while they wait, and two torchrun
    processes that each ran two on two cores trained 10-20x slower (measured here)."""
    import numba

    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


def _choose(op: str, device: torch.device, dtype: torch.dtype) -> Implementation:
    if os.environ.get("ROBX_KERNELS", "").lower() == "reference":
        return "torch-reference"
    if device.type == "cuda":
        implementation: Implementation = "triton"
    elif device.type == "cpu" and (op != "pgd_step" or dtype == torch.float32):
        implementation = "numba"
    else:
        return "torch-reference"
    if _load(op, implementation) is None:
        return "torch-reference"
    if implementation == "numba":
        _numba_threads_like_torch()
    return implementation


def implementation_name(op: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """Which implementation of ``op`` runs for ``dtype`` tensors on ``device``."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; ops: {', '.join(OPS)}")
    return _choose(op, torch.device(device), dtype)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: Norm = "linf",
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """One projected-gradient step; see :func:`pgd_step_reference` for the contract."""
    implementation = _choose("pgd_step", x_adv.device, x_adv.dtype)
    if implementation == "torch-reference":
        return pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, mask, bounds)
    return _load("pgd_step", implementation)(x_adv, grad, x_orig, eps, alpha, norm, mask, bounds)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss; see :mod:`robx.kernels.supcon` for the formula."""
    implementation = _choose("supcon", features.device, features.dtype)
    if implementation == "triton" and features.shape[1] > _load("supcon", "triton").max_dim:
        implementation = "torch-reference"
    if implementation == "torch-reference":
        return supcon_reference(features, labels, temperature, anchor_weights)
    backend = _load("supcon", implementation)()
    return FusedSupCon.apply(features, labels, anchor_weights, temperature, backend)


def topk_victims(saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean top-k mask per sample; see :mod:`robx.kernels.topk_victims`."""
    implementation = _choose("topk_victims", saliency.device, saliency.dtype)
    if implementation == "torch-reference":
        return topk_victims_reference(saliency, k, weights)
    return _load("topk_victims", implementation)(saliency, k, weights)
