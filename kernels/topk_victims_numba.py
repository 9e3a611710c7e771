"""``topk_victims`` for CPU tensors: a linear-time selection per sample, samples in parallel.

``np.partition`` finds the k-th largest score (introselect, O(n)); the mask takes every score
above it and, in index order, as many scores equal to it as k still needs, so ties go to the
lower index as in :func:`robx.kernels.topk_victims.topk_victims_reference` (which sorts).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from robx.kernels.topk_victims import check_k, victim_scores


@numba.njit(parallel=True, cache=True)
def _topk_kernel(scores, k, mask):  # pragma: no cover - compiled
    n = scores.shape[1]
    for b in numba.prange(scores.shape[0]):
        row = scores[b]
        threshold = np.partition(row, n - k)[n - k]
        ties_wanted = k
        for d in range(n):
            if row[d] > threshold:
                ties_wanted -= 1
        for d in range(n):
            if row[d] > threshold:
                mask[b, d] = True
            elif row[d] == threshold and ties_wanted > 0:
                mask[b, d] = True
                ties_wanted -= 1


def topk_victims_numba(saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    scores = victim_scores(saliency, weights).contiguous()
    check_k(k, scores.shape[1])
    mask = np.zeros(scores.shape, dtype=np.bool_)
    if k > 0:
        _topk_kernel(scores.numpy(), k, mask)
    return torch.from_numpy(mask).reshape(saliency.shape)
