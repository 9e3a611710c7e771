"""Top-k victim selection: per-sample (re)weighted saliency -> boolean top-k mask; the torch reference.

STPGD and MinGRE perturb only the K most salient nodes (or coordinates) of each sample
(Liu et al. 2022; MinGRE, arXiv 2504.00721): score = saliency * weights, keep the k largest scores per sample.
Ties go to the lower index, so every implementation selects the same set. Scores must be
finite.
"""

from __future__ import annotations

import torch


def victim_scores(saliency: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """float32 (batch, n) scores; ``weights`` broadcasts against ``saliency`` ((n,) or (batch, n) ...)."""
    scores = saliency.float() if weights is None else saliency.float() * weights.float()
    return scores.reshape(saliency.shape[0], -1)


def check_k(k: int, n: int) -> None:
    if k < 0 or k > n:
        raise ValueError(f"k must lie in [0, {n}] (the elements per sample), got {k}")


def topk_victims_reference(
    saliency: torch.Tensor, k: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of ``saliency``'s shape with exactly ``k`` True per sample (the top scores)."""
    scores = victim_scores(saliency, weights)
    check_k(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.reshape(saliency.shape)
