"""Fused inner-loop ops behind one dispatch per op.

Each op has a torch reference (the ground truth), a Triton kernel for CUDA tensors and a
numba kernel for CPU tensors, with one signature:

- :func:`pgd_step`: one projected-gradient step, per-sample eps/alpha, Linf/L2, mask.
- :func:`supcon`: supervised contrastive loss (SRAT eq. 4.12, MinGRE UCL), differentiable.
- :func:`topk_victims`: (re)weighted saliency -> boolean top-k mask per sample.

The dispatch runs, per op, device and problem size, the implementation :data:`DISPATCH`
names: the fastest one measured there by ``benchmarks/kernels.py`` (a test checks the table
against those results), so a user never gets a slower path by default. The reference serves
where the table names it, for dtypes a fused kernel does not take (``pgd_step`` in numba:
float32 only) and where the fused package is missing. ``ROBX_KERNELS=reference`` forces the
references (comparisons, debugging); :func:`implementation_name` says which one runs, and
every run records the table's rule for its device in config.json.
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

__all__ = ["pgd_step", "supcon", "topk_victims", "implementation_name", "dispatch_rule", "implementation",
           "OPS", "DISPATCH", "pgd_step_reference", "supcon_reference", "topk_victims_reference"]

Implementation = Literal["triton", "numba", "torch-reference"]
OPS = ("pgd_step", "supcon", "topk_victims")

#: (op, device type) -> ((from size, implementation), ...): from each size up, until the next
#: entry, the implementation measured fastest there among those that keep the op's contract
#: (the stable-sort reference, not ``torch.topk``, for ``topk_victims``'s tie rule). Size:
#: ``pgd_step`` elements per sample, ``supcon`` the batch, ``topk_victims`` units per sample.
#: Evidence: benchmarks/results/kernels/cpu.json (2-core AMD EPYC) and
#: NVIDIA-H100-80GB-HBM3.json; tests/test_kernels.py checks every measured row against this.
DISPATCH: dict[tuple[str, str], tuple[tuple[int, Implementation], ...]] = {
    # numba 1.2x (L2, 3x32x32) to 18x (Linf, 3x32x32) the reference; Triton 1.5x to 4.3x
    ("pgd_step", "cpu"): ((0, "numba"),),
    ("pgd_step", "cuda"): ((0, "triton"),),
    # numba 0.67x the reference at B = 256, 0.99x at 1024, 1.2x at 2048, 2.0x from 3072 (the
    # reference's B x B matrices leave the cache); Triton (round 1) 0.04x-0.51x the reference
    # at B = 256-8192
    ("supcon", "cpu"): ((0, "torch-reference"), (2048, "numba")),
    ("supcon", "cuda"): ((0, "torch-reference"),),
    # numba 2.8x (256 units) and 6x (224 x 224) the stable-sort reference; Triton 1.5x and 1.0x
    ("topk_victims", "cpu"): ((0, "numba"),),
    ("topk_victims", "cuda"): ((0, "triton"),),
}

# (op, implementation) -> "module:attribute" of the fused entry point, imported on first use
_FUSED = {
    ("pgd_step", "triton"): "robx.kernels.pgd_step_triton:pgd_step_triton",
    ("pgd_step", "numba"): "robx.kernels.pgd_step_numba:pgd_step_numba",
    ("supcon", "triton"): "robx.kernels.supcon_triton:TritonSupCon",
    ("supcon", "numba"): "robx.kernels.supcon_numba:NumbaSupCon",
    ("topk_victims", "triton"): "robx.kernels.topk_victims_triton:topk_victims_triton",
    ("topk_victims", "numba"): "robx.kernels.topk_victims_numba:topk_victims_numba",
}
_REFERENCES: dict[str, Callable] = {
    "pgd_step": pgd_step_reference, "supcon": supcon_reference, "topk_victims": topk_victims_reference,
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


def _from_table(op: str, device_type: str, size: int) -> Implementation:
    chosen: Implementation = "torch-reference"
    for smallest, implementation in DISPATCH.get((op, device_type), ()):
        if size >= smallest:
            chosen = implementation
    return chosen


def _choose(op: str, device: torch.device, dtype: torch.dtype, size: int) -> Implementation:
    if os.environ.get("ROBX_KERNELS", "").lower() == "reference":
        return "torch-reference"
    implementation = _from_table(op, device.type, size)
    if implementation == "numba" and op == "pgd_step" and dtype != torch.float32:
        return "torch-reference"
    if implementation != "torch-reference" and _load(op, implementation) is None:
        return "torch-reference"
    if implementation == "numba":
        _numba_threads_like_torch()
    return implementation


def implementation(op: str, name: Implementation) -> Callable | None:
    """The callable of one implementation of ``op`` with the op's signature (for benchmarks and
    tests that compare them), or None where its package is missing."""
    if name == "torch-reference":
        return _REFERENCES[op]
    fused = _load(op, name)
    if fused is None or op != "supcon":
        return fused

    def fused_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                     anchor_weights: torch.Tensor | None = None) -> torch.Tensor:
        return FusedSupCon.apply(features, labels, anchor_weights, temperature, fused())

    return fused_supcon


def dispatch_rule(op: str, device: torch.device | str) -> str:
    """The table's rule for ``op`` on ``device`` in words, e.g. ``"numba"`` or
    ``"torch-reference, numba from 2048"`` (recorded in every run's config.json)."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; ops: {', '.join(OPS)}")
    device = torch.device(device)
    entries = DISPATCH.get((op, device.type), ((0, "torch-reference"),))
    parts = []
    for smallest, _ in entries:
        name = _choose(op, device, torch.float32, smallest)
        parts.append(name if smallest == 0 else f"{name} from {smallest}")
    return ", ".join(parts)


def implementation_name(op: str, device: torch.device | str, dtype: torch.dtype = torch.float32,
                        size: int = 0) -> str:
    """Which implementation of ``op`` runs for ``dtype`` tensors of ``size`` (see
    :data:`DISPATCH`) on ``device``."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; ops: {', '.join(OPS)}")
    return _choose(op, torch.device(device), dtype, size)


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
    size = x_adv[0].numel() if len(x_adv) else 0
    name = _choose("pgd_step", x_adv.device, x_adv.dtype, size)
    return implementation("pgd_step", name)(x_adv, grad, x_orig, eps, alpha, norm, mask, bounds)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    anchor_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss; see :mod:`robx.kernels.supcon` for the formula."""
    name = _choose("supcon", features.device, features.dtype, features.shape[0])
    if name == "triton" and features.shape[1] > _load("supcon", "triton").max_dim:
        name = "torch-reference"
    return implementation("supcon", name)(features, labels, temperature, anchor_weights)


def topk_victims(saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean top-k mask per sample; see :mod:`robx.kernels.topk_victims`."""
    units = saliency[0].numel() if len(saliency) else 0
    return implementation("topk_victims", _choose("topk_victims", saliency.device, saliency.dtype, units))(
        saliency, k, weights)
