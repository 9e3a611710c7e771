"""``topk_victims`` for CUDA tensors: a radix select per sample, no sort (round 2: 8-bit digits).

One program owns one sample. Scores become order-preserving unsigned keys (flip all bits of
negative floats, the sign bit of the rest). Four sweeps fix the k-th largest key T one byte at
a time from the top, as torch's own radix select (aten ``TensorTopK.cu``) and FlashInfer's
do: each sweep builds a 256-bin histogram (``tl.histogram``) of the next byte of the keys that
share T's bytes found so far, and picks the largest byte whose keys, with those above it,
reach the rank still wanted. A last sweep marks keys above T and, in index order (a running
cumsum), as many keys equal to T as k still needs, so ties go to the lower index as in
:func:`robx.kernels.topk_victims.topk_victims_reference`. Five sweeps per sample; round 1
decided one bit per sweep (33 sweeps) and ran at 0.46x ``torch.topk`` on an H100 at
256 x 50,176.
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
    bins = tl.arange(0, 256)
    threshold = tl.zeros([], tl.uint32)  # T's bytes found so far
    known = tl.zeros([], tl.uint32)  # the bits of T found so far
    wanted = k  # T's rank among the keys that share T's known bits
    for digit in tl.static_range(4):
        shift: tl.constexpr = 24 - 8 * digit
        counts = tl.zeros([256], tl.int32)
        for start in range(0, n, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n
            key = _sortable_key(tl.load(scores_ptr + base + cols, mask=inside, other=0.0))
            sharing = inside & ((key & known) == threshold)
            byte = tl.where(sharing, ((key >> shift) & 255).to(tl.int32), 0)
            # the keys that do not share T's bits went to bin 0: take them out again
            # (tl.histogram's mask argument came with Triton 3.4; torch >= 2.1 may bring an older one)
            counts += tl.histogram(byte, 256)
            counts -= tl.where(bins == 0, tl.sum((~sharing).to(tl.int32), axis=0), 0)
        at_or_above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts  # keys with byte >= b
        chosen = tl.max(tl.where(at_or_above >= wanted, bins, -1), axis=0)
        wanted -= tl.sum(tl.where(bins > chosen, counts, 0), axis=0)
        threshold = threshold | (chosen.to(tl.uint32) << shift)
        known = known | (tl.full([], 255, tl.uint32) << shift)

    ties_seen = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n
        key = _sortable_key(tl.load(scores_ptr + base + cols, mask=inside, other=0.0))
        tie = inside & (key == threshold)
        tie_rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0)
        chosen = (inside & (key > threshold)) | (tie & (tie_rank <= wanted))
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
