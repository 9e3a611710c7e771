"""``topk_victims`` for CPU tensors: one stable argsort per sample, samples in parallel.
Same contract and result as :func:`robx.kernels.topk_victims.topk_victims_reference`."""

from __future__ import annotations

import numba
import numpy as np
import torch

from robx.kernels.topk_victims import check_k, victim_scores


@numba.njit(parallel=True, cache=True)
def _topk_kernel(scores, k, mask):  # pragma: no cover - compiled
    for b in numba.prange(scores.shape[0]):
        order = np.argsort(-scores[b], kind="mergesort")  # stable: ties keep the lower index first
        for r in range(k):
            mask[b, order[r]] = True


def topk_victims_numba(saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    scores = victim_scores(saliency, weights).contiguous()
    check_k(k, scores.shape[1])
    mask = np.zeros(scores.shape, dtype=np.bool_)
    _topk_kernel(scores.numpy(), k, mask)
    return torch.from_numpy(mask).reshape(saliency.shape)
