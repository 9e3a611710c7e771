"""``topk_victims`` for CUDA tensors: a radix select per sample, no sort.

One program owns one sample. Scores become order-preserving unsigned keys (flip all bits of
negative floats, the sign bit of the rest); 32 counting sweeps fix the k-th largest key bit
by bit from the top; a last sweep marks keys above it and, in index order (a running
cumsum), as many keys equal to it as k still needs, so ties go to the lower index as in
:func:`robx.kernels.topk_victims.topk_victims_reference`. Work is O(32 n) per sample,
reading the sample from cache after the first sweep.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from robx.kernels.topk_victims import check_k, victim_scores

_BLOCK = 1024


@triton.jit
def _sortable_key(scores):
    bits = tl.where(scores == 0.0, 0.0, scores).to(tl.int32, bitcast=True)  # -0.0 ties with 0.0
    flipped = tl.where(bits < 0, ~bits, bits | -2147483648)
    return flipped.to(tl.uint32, bitcast=True)


@triton.jit
def _topk_kernel(scores_ptr, mask_ptr, n, k, BLOCK: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * n
    threshold = tl.zeros([], tl.uint32)
    for i in range(32):
        candidate = threshold | (tl.full([], 1, tl.uint32) << (31 - i))
        count = tl.full([], 0, tl.int32)
        for start in range(0, n, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n
            key = _sortable_key(tl.load(scores_ptr + base + cols, mask=inside, other=0.0))
            count += tl.sum((inside & (key >= candidate)).to(tl.int32), axis=0)
        threshold = tl.where(count >= k, candidate, threshold)

    above = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n
        key = _sortable_key(tl.load(scores_ptr + base + cols, mask=inside, other=0.0))
        above += tl.sum((inside & (key > threshold)).to(tl.int32), axis=0)
    ties_wanted = k - above
    ties_seen = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n
        key = _sortable_key(tl.load(scores_ptr + base + cols, mask=inside, other=0.0))
        tie = inside & (key == threshold)
        tie_rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0)
        chosen = (inside & (key > threshold)) | (tie & (tie_rank <= ties_wanted))
        tl.store(mask_ptr + base + cols, chosen.to(tl.int8), mask=inside)
        ties_seen += tl.sum(tie.to(tl.int32), axis=0)


def topk_victims_triton(saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    scores = victim_scores(saliency, weights).contiguous()
    batch, n = scores.shape
    check_k(k, n)
    if k == 0 or batch == 0:
        return torch.zeros(saliency.shape, dtype=torch.bool, device=saliency.device)
    mask = torch.empty((batch, n), dtype=torch.int8, device=saliency.device)
    _topk_kernel[(batch,)](scores, mask, n, k, BLOCK=min(_BLOCK, triton.next_power_of_2(n)))
    return mask.view(torch.bool).reshape(saliency.shape)
