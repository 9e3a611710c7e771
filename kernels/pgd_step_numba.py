"""``pgd_step`` for CPU tensors as one numba kernel: one pass over memory for Linf, three
cheap passes per sample for L2 (gradient norm, step + distance norm, projection), the
samples in parallel. Same contract and result as :func:`pgd_step_reference`."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from robx.kernels.pgd_step import Norm, per_sample


@numba.njit(parallel=True, cache=True)
def _linf(x_adv, grad, x_orig, eps, alpha, mask, has_mask, low, high, out):  # pragma: no cover - compiled
    batch, dim = x_adv.shape
    for b in numba.prange(batch):
        e = eps[b]
        a = alpha[b]
        for d in range(dim):
            g = grad[b, d]
            if has_mask and not mask[b, d]:
                g = 0.0
            step = a if g > 0 else (-a if g < 0 else 0.0)
            delta = x_adv[b, d] + step - x_orig[b, d]
            delta = min(max(delta, -e), e)
            out[b, d] = min(max(x_orig[b, d] + delta, low), high)


@numba.njit(parallel=True, cache=True)
def _l2(x_adv, grad, x_orig, eps, alpha, mask, has_mask, low, high, out):  # pragma: no cover - compiled
    batch, dim = x_adv.shape
    for b in numba.prange(batch):
        g_sq = 0.0
        for d in range(dim):
            if has_mask and not mask[b, d]:
                continue
            g_sq += grad[b, d] * grad[b, d]
        scale = alpha[b] / max(math.sqrt(g_sq), 1e-12)
        d_sq = 0.0
        for d in range(dim):
            g = 0.0 if (has_mask and not mask[b, d]) else grad[b, d]
            delta = x_adv[b, d] + scale * g - x_orig[b, d]
            out[b, d] = delta
            d_sq += delta * delta
        factor = min(eps[b] / max(math.sqrt(d_sq), 1e-12), 1.0)
        for d in range(dim):
            out[b, d] = min(max(x_orig[b, d] + out[b, d] * factor, low), high)


def pgd_step_numba(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    norm: Norm = "linf",
    mask: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    batch = x_adv.shape[0]
    shape = x_adv.shape
    # a channels_last batch is read and written in its memory order (N, H, W, C): the result
    # keeps its layout and no tensor is copied into NCHW order on the way
    channels_last = x_adv.dim() == 4 and not x_adv.is_contiguous() and \
        x_adv.is_contiguous(memory_format=torch.channels_last)

    def in_memory_order(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1) if channels_last else t

    def flat(t: torch.Tensor) -> np.ndarray:
        return in_memory_order(t.detach()).reshape(batch, -1).contiguous().numpy()

    eps_np = per_sample(eps, batch, x_adv).reshape(batch).contiguous().numpy()
    alpha_np = per_sample(alpha, batch, x_adv).reshape(batch).contiguous().numpy()
    has_mask = mask is not None
    mask_np = flat(mask.expand(shape).to(torch.bool)) if has_mask else np.ones((1, 1), dtype=np.bool_)
    result = torch.empty_like(x_adv, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    out = in_memory_order(result).reshape(batch, -1)  # a view: the kernel writes into result
    kernel = _linf if norm == "linf" else _l2
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    kernel(flat(x_adv), flat(grad), flat(x_orig), eps_np, alpha_np, mask_np, has_mask, float(bounds[0]), float(bounds[1]),
           out.numpy())
    return result
